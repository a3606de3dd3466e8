#!/usr/bin/env python
"""Rewrite the README's figures from runs at HEAD: one command, every table and PNG it owns.

Runs ``scripts/demo.py`` (a finished demo under ``--out`` is reused: delete it to rerun from
scratch), then the commands of each section below on the demo's model and data, and replaces
each README block that this script owns, between ``<!-- readme-figures:NAME -->`` and
``<!-- /readme-figures:NAME -->``, with the commands it ran, their tables and the commit:

- ``demo-table``, ``demo-organs``, ``demo-figure``: the demo's three attacks (clean vs
  adversarial metrics, Dice per class, one case's figure copied to ``docs/demo_case.png``);
- ``last-step``: VAFA's last step (the release's per-slice renormalisation or the paper's
  clip) on the demo's window and on a compressed, MRI-like window (``--b_min 0.3 --b_max 0.6``);
- ``stronger-attacks``: ``benchmarks/bench_seg_attacks.py`` on the centre ROI tile and on the
  whole first validation case;
- ``transfer``: a small UNet trained on the demo data, attacked with the demo's PGD, and the
  transfer matrix between it and the demo's UNETR (``docs/transfer_demo.png``);
- ``precision``: adversarial Dice of PGD, VAFA-3D and APGD with the model's passes in fp32, bf16
  and, with a CUDA card, fp16 (``scripts/sweep.py --grid``);
- ``paper-demo``: ``make paper-demo`` (the paper's Tables 2 and 4 at 3 attack steps;
  ``docs/paper_demo_table2.png``);
- ``table6``: rewritten from ``make robust-demo``'s output when it is finished there (about
  half an hour more; this script does not start it), ``docs/robust_demo_table6.png``.

Each command runs as its own process, exactly as printed in the README. A command that finished
before with the same arguments on the same demo checkpoint (its SHA-256) is not run again
(``<work>/done.json`` records them, with their wall times); the scripts it calls reuse and resume
their own finished parts too. SIGTERM, SIGUSR1 or SIGINT end it with 128 + signal; the same
command continues.

    python scripts/readme_figures.py            # make readme-figures
    python scripts/readme_figures.py --sections demo last-step
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import scripts.demo as demo  # noqa: E402
from attacks import APGD, PGD, VAFA3D  # noqa: E402
from engine.jobs import run_driver  # noqa: E402
from utils.distributed import StopRequested, check_stop, pending_stop  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import file_fingerprint, read_json, write_json  # noqa: E402

COMMAND = "make readme-figures"
MRI_LIKE = ["--b_min", "0.3", "--b_max", "0.6"]
UNET = ["--model_name", "unet", "--unet_channels", "8", "16", "32", "64", "--unet_strides", "2", "2", "2",
        "--roi_x", "48", "--roi_y", "48", "--roi_z", "32"]
UNET_EPOCHS = 100
BENCH = ["--eps", "4", "8", "--steps", "20", "--max_cases", "1"]
PAPER_DEMO_STEPS = 3
PRECISIONS = ("fp32", "bf16", "fp16")
CPU_FP16_NOTE = ("fp16 is left out on a CPU, which emulates it: PGD's fp16 model passes took 366 s per case here "
                 "against 11 s in fp32 (2 cores, measured once at commit 89afd32); with a CUDA card the table has an "
                 "fp16 column.")


# --------------------------------------------------------------------------- README blocks


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` holding ``content``.

    Raises:
        ValueError: the README lacks the block's markers.
    """
    pattern = re.compile(rf"(<!-- readme-figures:{re.escape(name)} -->\n).*?(<!-- /readme-figures:{re.escape(name)} -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README has no block {name!r} (<!-- readme-figures:{name} --> ... "
                         f"<!-- /readme-figures:{name} -->)")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text, count=1)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp(minutes: Optional[float] = None, note: str = "") -> str:
    took = "" if minutes is None else f"; these commands took {minutes:.1f} min on 2 CPU cores"
    return f"<sub>`{COMMAND}` at commit {commit()}{took}{note}</sub>\n"


def shown(command: "Command") -> str:
    """A command as the README prints it: paths relative to the repository."""
    def rel(token: str) -> str:
        return os.path.relpath(token, ROOT) if os.path.isabs(token) and token.startswith(ROOT) else token

    return "python " + " ".join(shlex.quote(rel(t)) for t in (command.script, *command.argv))


def code_block(commands: List["Command"]) -> str:
    return "```bash\n" + "\n".join(shown(c) for c in commands) + "\n```\n"


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- running commands


@dataclasses.dataclass(frozen=True)
class Command:
    """One process: ``python <script> <argv>`` (``script`` relative to the repository)."""

    script: str
    argv: tuple

    @property
    def key(self) -> str:
        return json.dumps([self.script, list(self.argv)])


class Runner:
    """Runs commands once per demo checkpoint, recording them (and their wall times) in ``done.json``."""

    def __init__(self, work: str, base_sha: str):
        self.path = os.path.join(work, "done.json")
        self.base_sha = base_sha
        self.done = read_json(self.path) if os.path.exists(self.path) else {}

    def seconds(self, commands: List[Command]) -> float:
        return sum(self.done.get(c.key, {}).get("seconds", 0.0) for c in commands)

    def run(self, command: Command) -> None:
        """Run ``command`` unless it finished before on the same demo checkpoint. A stop signal recorded by
        the driver (:func:`utils.distributed.stop_on_signals`) is passed on to the running command.

        Raises:
            StopRequested: a stop signal arrived (the command's own exit status 128 + signal, or ours).
            UserError: the command failed (its message is above).
        """
        check_stop()
        record = self.done.get(command.key)
        if record and record.get("base_sha256") == self.base_sha:
            print(f"(done before: {shown(command)})", flush=True)
            return
        print(f"\n$ {shown(command)}", flush=True)
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, os.path.join(ROOT, command.script), *command.argv], cwd=ROOT)
        forwarded = False
        while True:
            try:
                code = child.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if not forwarded and pending_stop():
                    child.send_signal(pending_stop())  # a signal sent to this process alone
                    forwarded = True
        code = 128 - code if code < 0 else code
        if code > 128:
            raise StopRequested(code - 128)
        check_stop()
        if code:
            raise UserError(f"{shown(command)} failed with exit status {code} (its message is above)")
        self.done[command.key] = {"base_sha256": self.base_sha, "seconds": round(time.perf_counter() - started, 1)}
        write_json(self.path, self.done)


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass
class Context:
    out: str  # the demo's folder
    work: str  # this script's runs
    robust_out: str
    docs: str
    readme: str
    epochs: int

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.out, "model", "model_best.pt")

    @property
    def data(self) -> List[str]:
        return ["--dataset", "btcv", "--data_dir", os.path.join(self.out, "data"), "--json_list", "dataset.json",
                "--space_x", "1.5", "--space_y", "1.5", "--space_z", "2.0"]

    def image(self, source: str, name: str) -> str:
        """Copy ``source`` to the README's images as ``name``; its path relative to the README."""
        os.makedirs(self.docs, exist_ok=True)
        target = os.path.join(self.docs, name)
        shutil.copyfile(source, target)
        return os.path.relpath(target, os.path.dirname(os.path.abspath(self.readme)))


@dataclasses.dataclass
class Section:
    """Commands to run, then ``render()`` -> ``{block name: content}`` (``None``: leave the README's block)."""

    name: str
    commands: List[Command]
    render: Callable[[], Optional[Dict[str, str]]]


def attack_run(argv: List[str], adv_dir: str) -> tuple[Command, str]:
    """A generation command and its run folder (the name ``generate_adv_samples.py`` gives it)."""
    argv = [*argv, "--gen_val_adv_mode", "--save_adv_images_dir", adv_dir, "--infer_overlap", "0.25", "--seed", "0"]
    return Command("generate_adv_samples.py", tuple(argv)), os.path.join(adv_dir, demo.attack_folder(argv))


def demo_reports(out: str) -> dict:
    """``{attack title: (overall, run folder)}`` of the demo's finished attack runs under ``out``."""
    data_dir = os.path.join(out, "data")
    checkpoint = os.path.join(out, "model", "model_best.pt")
    reports = {}
    for title, attack in demo.ATTACKS.items():
        argv = demo.MODEL + ["--data_dir", data_dir, "--pretrained_path", checkpoint, "--debugging", *attack]
        run_dir = os.path.join(out, "adversarial", demo.attack_folder(argv))
        with open(os.path.join(run_dir, "results.json")) as f:
            reports[title] = (json.load(f)["overall"], run_dir)
    return reports


def demo_blocks(reports: dict, ctx: Context) -> Dict[str, str]:
    epochs = f"<sub>`{COMMAND}` at commit {commit()} ({ctx.epochs} training epoch{'' if ctx.epochs == 1 else 's'})</sub>\n"
    blocks = {"demo-table": demo.comparison_table(reports) + "\n\n" + epochs,
              "demo-organs": demo.organ_table(reports) + "\n\n" + epochs}
    title, (_, run_dir) = next((t, r) for t, r in reports.items() if t.startswith("VAFA"))
    figures = sorted(glob.glob(os.path.join(run_dir, "figures", "*.png")))
    if figures:
        rel = ctx.image(figures[0], "demo_case.png")
        case = os.path.splitext(os.path.basename(figures[0]))[0]
        blocks["demo-figure"] = f"![{title} on demo case {case}]({rel})\n\n" + epochs
    return blocks


def demo_section(ctx: Context) -> Section:
    return Section("demo", [], lambda: demo_blocks(demo_reports(ctx.out), ctx))


def last_step_section(ctx: Context, runner: Runner) -> Section:
    """The demo's three attacks again on the window compressed into [0.3, 0.6]."""
    runs, commands = [], []
    for title, attack in demo.ATTACKS.items():
        command, run_dir = attack_run(demo.MODEL + ctx.data + MRI_LIKE + attack + [
            "--use_pretrained", "--pretrained_path", ctx.checkpoint], os.path.join(ctx.work, "mri_like"))
        commands.append(command)
        runs.append((title, run_dir))

    def render():
        rows = ["| data | attack | Dice % (clean → adv) | PSNR dB | SSIM | renormalisation share |",
                "|---|---|---|---|---|---|"]
        for window, reports in (("window −175…250 HU → [0, 1] (the demo's)", demo_reports(ctx.out)),
                                ("window → [0.3, 0.6] (MRI-like)",
                                 {t: (read_json(os.path.join(d, "results.json"))["overall"], d) for t, d in runs})):
            for i, (title, (overall, _)) in enumerate(reports.items()):
                share = overall.get("renormalisation_share")
                share = fmt(share, 2) if share is not None else (
                    f"({fmt(overall['renormalisation_share_if_slice'], 2)})"
                    if overall.get("renormalisation_share_if_slice") is not None else "–")
                rows.append(f"| {window if i == 0 else ''} | {title} | {fmt(overall['dice_clean'])} → "
                            f"{fmt(overall['dice_adv'])} | {fmt(overall['psnr'])} | {fmt(overall['ssim'], 3)} | {share} |")
        return {"last-step": "The demo's window is `make demo`'s own runs; the MRI-like window:\n\n"
                + code_block(commands) + "\n" + "\n".join(rows) + "\n\n" + stamp(runner.seconds(commands) / 60)}

    return Section("last-step", commands, render)


def bench_section(ctx: Context, runner: Runner) -> Section:
    folder = os.path.join(ctx.work, "stronger_attacks")
    common = ["--pretrained_path", ctx.checkpoint, *ctx.data, *demo.MODEL, "--infer_overlap", "0.25",
              "--workers", "0", *BENCH]
    tile, volume = os.path.join(folder, "tile.json"), os.path.join(folder, "volume.json")
    commands = [Command("benchmarks/bench_seg_attacks.py", (*common, "--crop", "48", "48", "32", "--json", tile)),
                Command("benchmarks/bench_seg_attacks.py", (*common, "--json", volume))]

    def table(path: str, unit: str) -> str:
        report = read_json(path)
        budgets = list(dict.fromkeys(r["eps"] for r in report["rows"]))
        head = "| attack | " + " | ".join(f"ε = {e:g}/255: Dice % | s / {unit}" for e in budgets) + " |"
        lines = [head, "|---|" + "---|---|" * len(budgets)]
        for name in dict.fromkeys(r["attack"] for r in report["rows"]):
            cells = []
            for eps in budgets:
                row = next(r for r in report["rows"] if r["attack"] == name and r["eps"] == eps)
                best = min(r["dice"] for r in report["rows"] if r["eps"] == eps)
                dice = fmt(row["dice"], 2)
                cells += [f"**{dice}**" if row["dice"] == best else dice, fmt(row["seconds"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        shapes = ", ".join("×".join(map(str, s)) for s in report["shapes"])
        return (f"Clean Dice {fmt(report['clean_dice'], 2)} % ({report['cases']} case, {shapes} voxels, "
                f"{report['steps']} steps each):\n\n" + "\n".join(lines) + "\n")

    def render():
        return {"stronger-attacks": code_block(commands) + "\nThe centre ROI tile (`--crop 48 48 32`). "
                + table(tile, "tile") + "\nThe whole case. " + table(volume, "volume") + "\n"
                + stamp(runner.seconds(commands) / 60, "; lowest Dice per budget in bold")}

    return Section("stronger-attacks", commands, render)


def transfer_section(ctx: Context, runner: Runner) -> Section:
    folder = os.path.join(ctx.work, "transfer")
    model_dir = os.path.join(folder, "unet_model")
    precision = demo.demo_precision("auto", None)
    train = ["--save_checkpoint", "--save_model_dir", model_dir, "--max_epochs", str(UNET_EPOCHS),
             "--val_every", str(UNET_EPOCHS // 2), "--batch_size", "1", "--optim_lr", "4e-3",
             "--lrschedule", "warmup_cosine", "--warmup_epochs", "5", "--crop_sampling", "classes",
             "--RandFlipd_prob", "0", "--RandRotate90d_prob", "0", "--precision", precision,
             "--infer_overlap", "0.25", "--seed", "0", "--workers", "2"]
    done = demo.epochs_done(model_dir)
    if 0 < done < UNET_EPOCHS and os.path.exists(os.path.join(model_dir, "model_latest.pt")):
        train += ["--resume", "--resume_latest", "--checkpoint_dir", model_dir]
    unet_checkpoint = os.path.join(model_dir, "model_latest.pt")
    pgd = demo.ATTACKS["PGD eps=4"]
    attack, unet_adv = attack_run(UNET + ctx.data + pgd + ["--use_pretrained", "--pretrained_path", unet_checkpoint],
                                  os.path.join(folder, "adversarial"))
    unetr_adv = demo_reports(ctx.out)["PGD eps=4"][1] if os.path.isdir(os.path.join(ctx.out, "adversarial")) else ""
    matrix = os.path.join(folder, "matrix")
    transfer = Command("scripts/transfer_matrix.py", (
        "--out_dir", matrix, "--model", "unetr", ctx.checkpoint, shlex.join(["--model_name", "unet-r", *demo.MODEL]),
        "--model", "unet", unet_checkpoint, shlex.join(UNET), "--adv", "unetr", unetr_adv, "--adv", "unet", unet_adv,
        *ctx.data, "--infer_overlap", "0.25"))
    commands = [Command("run_normal_or_adv_training.py", tuple(UNET + ctx.data + train)), attack, transfer]

    def render():
        report = read_json(os.path.join(matrix, "transfer.json"))
        targets, rows = report["targets"], report["surrogates"]
        clean = {t: report["dice_clean"][rows[0]][t] for t in targets}
        lines = ["| surrogate \\ target | " + " | ".join(f"{t} (clean {fmt(clean[t])})" for t in targets) + " |",
                 "|---|" + "---|" * len(targets)]
        for s in rows:
            cells = []
            for t in targets:
                cell = f"{fmt(report['dice_adv'][s][t])} (−{fmt(report['drop'][s][t])})"
                cells.append(f"**{cell}**" if s == t else cell)
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        rel = ctx.image(os.path.join(matrix, "transfer.png"), "transfer_demo.png")
        return {"transfer": code_block(commands) + "\nDice % under the surrogate's PGD (ε 4/255, "
                f"{pgd[pgd.index('--steps') + 1]} steps), drop from clean in brackets; the diagonal (bold) is "
                "white-box:\n\n" + "\n".join(lines) + f"\n\n![transfer heatmap]({rel})\n\n"
                + stamp(runner.seconds(commands) / 60)}

    return Section("transfer", commands, render)


def precision_section(ctx: Context, runner: Runner) -> Section:
    """The same attacks with the model's passes in each precision (a sweep over attack x precision)."""
    import torch

    out = os.path.join(ctx.work, "precision")
    attacks = (PGD.name, VAFA3D.name, APGD.name)
    precisions = PRECISIONS if torch.cuda.is_available() else tuple(p for p in PRECISIONS if p != "fp16")
    commands = [Command("scripts/sweep.py", (
        "--grid", "attack=" + ",".join(attacks), "--grid", "precision=" + ",".join(precisions), "--steps", "10",
        "--out", out, *demo.MODEL, *ctx.data, "--infer_overlap", "0.25", "--pretrained_path", ctx.checkpoint,
        "--workers", "2"))]

    def render():
        cells = read_json(os.path.join(out, "sweep.json"))["cells"]
        value = {(c["attack"], str(c["param_precision"])): c for c in cells}
        lines = ["| attack | " + " | ".join(precisions) + " |", "|---|" + "---|" * len(precisions)]
        clean = [fmt(value[(attacks[0], p)]["dice_clean"], 2) for p in precisions]
        lines.append("| (clean) | " + " | ".join(clean) + " |")
        for attack in attacks:
            lines.append(f"| {attack} | " + " | ".join(fmt(value[(attack, p)]["dice_adv"], 2) for p in precisions) + " |")
        spread = max(max(value[(a, p)]["dice_adv"] for p in precisions) - min(value[(a, p)]["dice_adv"] for p in precisions)
                     for a in attacks)
        return {"precision": code_block(commands) + "\nDice % (2 validation cases, 10 steps; attacks at their paper "
                "settings: ε = 4/255, VAFA q_max 20 on 8³ blocks):\n\n" + "\n".join(lines)
                + f"\n\nLargest difference between the precisions for one attack: {spread:.2f} Dice points."
                + ("" if "fp16" in precisions else " " + CPU_FP16_NOTE) + "\n\n"
                + stamp(runner.seconds(commands) / 60)}

    return Section("precision", commands, render)


def paper_demo_section(ctx: Context, runner: Runner, out: str = "paper_demo_output") -> Section:
    """``make paper-demo``'s two sweeps."""
    flags = [*demo.MODEL, *ctx.data, "--infer_overlap", "0.25", "--pretrained_path", ctx.checkpoint, "--workers", "2"]
    commands = [Command("scripts/sweep.py", ("--preset", table, "--out", os.path.join(ROOT, out, table), "--steps",
                                             str(PAPER_DEMO_STEPS), *flags)) for table in ("table2", "table4")]

    def body(table: str) -> str:
        text = open(os.path.join(ROOT, out, table, "tables.md"), encoding="utf-8").read()
        keep = [line for line in text.splitlines() if not line.startswith(("## ", "Command:", "Paper:"))]
        return "\n".join(keep).strip() + "\n"

    def render():
        rel = ctx.image(os.path.join(ROOT, out, "table2", "dice_vs_q_max.png"), "paper_demo_table2.png")
        return {"paper-demo": code_block(commands) + f"\nTable 2 (`{out}/table2/tables.md`):\n\n" + body("table2")
                + f"\nTable 4 (`{out}/table4/tables.md`):\n\n" + body("table4")
                + f"\n![Dice and SSIM vs q_max on the demo data, beside the paper's curve]({rel})\n\n"
                + stamp(runner.seconds(commands) / 60)}

    return Section("paper-demo", commands, render)


def table6_section(ctx: Context) -> Section:
    """Read from a finished ``make robust-demo``; nothing is run."""
    table_dir = os.path.join(ctx.robust_out, "table6")

    def render():
        path = os.path.join(table_dir, "sweep.json")
        if not os.path.exists(path):
            print(f"(table6: no {path}; run make robust-demo to rewrite that block)")
            return None
        report = read_json(path)
        if any(c["status"] not in ("done", "reused") for c in report["cells"]):
            print(f"(table6: {table_dir} is unfinished; run make robust-demo again to rewrite that block)")
            return None
        text = open(os.path.join(table_dir, "tables.md"), encoding="utf-8").read()
        beside = text.split("## Ours beside the paper's", 1)[1].split("## Settings", 1)
        table = "\n".join(line for line in beside[0].splitlines() if line.startswith("|"))
        settings = beside[1].strip()
        rel = ctx.image(os.path.join(table_dir, "robustness.png"), "robust_demo_table6.png")
        command = report.get("command", "")
        return {"table6": f"Dice % (paper in brackets), from `{command}`:\n\n{table}\n\n{settings}\n\n"
                f"![Dice of the models under each attack, and clean against robust Dice]({rel})\n\n"
                f"<sub>read by `{COMMAND}` at commit {commit()} from `{os.path.relpath(table_dir, ROOT)}`</sub>\n"}

    return Section("table6", [], render)


SECTIONS = ("demo", "last-step", "stronger-attacks", "precision", "transfer", "paper-demo", "table6")


def build_sections(ctx: Context, runner: Runner) -> Dict[str, Section]:
    return {"demo": demo_section(ctx), "last-step": last_step_section(ctx, runner),
            "stronger-attacks": bench_section(ctx, runner), "precision": precision_section(ctx, runner),
            "transfer": transfer_section(ctx, runner),
            "paper-demo": paper_demo_section(ctx, runner), "table6": table6_section(ctx)}


def rewrite(readme: str, blocks: Dict[str, str]) -> None:
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    for name, content in blocks.items():
        text = replace_block(text, name, content)
    tmp = readme + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, readme)


def rebuild(readme: str, reports: dict, docs: str, epochs: int) -> None:
    """Rewrite the demo's blocks of ``readme`` from ``reports`` (see :func:`demo_reports`)."""
    ctx = Context(out="", work="", robust_out="", docs=docs, readme=readme, epochs=epochs)
    rewrite(readme, demo_blocks(reports, ctx))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="the demo's folder (a finished demo is reused)")
    parser.add_argument("--work", default="readme_figures_output", help="folder of the other sections' runs")
    parser.add_argument("--robust_out", default="robust_demo_output", help="make robust-demo's folder (read only)")
    parser.add_argument("--epochs", type=int, default=200, help="the demo's training epochs (200: the README's)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, metavar="NAME",
                        help=f"the sections to run and rewrite (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="README to rewrite")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="folder of the README's images")
    args = parser.parse_args(argv)
    code = demo.main(["--out", args.out, "--epochs", str(args.epochs)])
    if code:
        return code
    ctx = Context(out=os.path.abspath(args.out), work=os.path.abspath(args.work),
                  robust_out=os.path.abspath(args.robust_out), docs=args.docs, readme=args.readme, epochs=args.epochs)
    return run_driver(lambda names: rebuild_sections(ctx, names), args.sections, "readme_figures.py", unit="command")


def rebuild_sections(ctx: Context, names: List[str]) -> None:
    """Run each section's commands and rewrite its README blocks.

    Raises:
        UserError: a command failed, or an output or README marker is missing.
        StopRequested: a stop signal (finished commands are not rerun by the same command).
    """
    started = time.perf_counter()
    os.makedirs(ctx.work, exist_ok=True)
    runner = Runner(ctx.work, file_fingerprint(ctx.checkpoint)["sha256"])
    sections = build_sections(ctx, runner)
    for name in names:
        for command in sections[name].commands:
            runner.run(command)
        check_stop()
        try:
            blocks = sections[name].render()
            if blocks:
                rewrite(ctx.readme, blocks)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"section {name}: {err}") from None
        if blocks:
            print(f"rewrote {', '.join(blocks)} in {ctx.readme}", flush=True)
    print(f"readme figures rewritten in {(time.perf_counter() - started) / 60:.1f} min (the demo aside)")


if __name__ == "__main__":
    sys.exit(main())
