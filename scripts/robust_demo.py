#!/usr/bin/env python
"""The paper's Table 6 on the demo's phantom data: robust fine-tuning, then every model under every attack.

1. fine-tunes the demo model (``--use_pretrained``, as the release's adversarial training
   does) for the same number of epochs into M_clean (no attack: the control), M_PGD (vanilla
   adversarial training, PGD eps 4), M_VAFA and M_VAFA-FR (adversarial training on VAFA-3D,
   without and with VAFT's frequency-consistency loss), each VAFA model once with the
   release's per-slice renormalisation and once with the paper's clip
   (``--vafa_normalise clip``: "M_VAFA clip", "M_VAFA-FR clip");
2. attacks every model on the validation cases with ``scripts/sweep.py --preset table6``'s cells:
   PGD, FGSM, BIM, VAFA in both forms and APGD (clean Dice from the same runs; fp32 passes
   unless --eval_precision bf16);
3. writes OUT/table6/: tables.md (ours beside the paper's Table 6), the per-organ Dice drops
   (per_organ.md/.csv/.png), robustness.png, sweep.csv/.json.

Examples::

    make demo && make robust-demo
    python scripts/robust_demo.py --out robust_demo_output --pretrained_path demo_output/model/model_best.pt \\
        --data_dir demo_output/data --json_list dataset.json --feature_size 8 --hidden_size 96 --mlp_dim 192 \\
        --num_heads 4 --roi_x 48 --roi_y 48 --roi_z 32 --infer_overlap 0.25 --device cpu --workers 2

Attacks use the paper's settings (eps 4; VAFA q_max 20, SSIM term, block 32^3, or the largest
cube up to 32 that divides the ROI), at --train_steps in training and --eval_steps in
evaluation. Every flag not listed below (model, data, runtime; --pretrained_path is the
model fine-tuned) goes to both the training and the evaluation runs.

A rerun reuses each finished model whose base checkpoint content and flags are unchanged
(OUT/models/<model>/robust_demo.json records them), continues an unfinished one from its
last epoch, and reuses finished evaluation cells. SIGTERM/SIGUSR1/SIGINT: the training epoch
or evaluation case in progress is dropped, nothing new starts, exit status 128 + signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import demo  # noqa: E402
import run_normal_or_adv_training  # noqa: E402
from attacks import PGD, VAFA3D, preset_flags  # noqa: E402
from engine import cli, jobs  # noqa: E402
from engine.flags import RUNTIME_FLAGS  # noqa: E402
from studies import paper_tables  # noqa: E402
from studies.sweep import TABLE6_ATTACKS  # noqa: E402
from utils.distributed import StopRequested, check_stop  # noqa: E402
from utils.logs import setup_logging  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import file_fingerprint, read_json, to_jsonable, write_bytes, write_json  # noqa: E402

logger = logging.getLogger("robust_demo")

PROG = "robust_demo.py"
VAFA = preset_flags(VAFA3D.name)  # q_max 20, SSIM term (the block is set per ROI)
MODELS = {
    "M_clean": (),
    "M_PGD": ("--adv_training_mode", *preset_flags(PGD.name)),
    "M_VAFA": ("--adv_training_mode", *VAFA),
    "M_VAFA-FR": ("--adv_training_mode", "--freq_reg_mode", *VAFA),
    "M_VAFA clip": ("--adv_training_mode", *VAFA, "--vafa_normalise", "clip"),
    "M_VAFA-FR clip": ("--adv_training_mode", "--freq_reg_mode", *VAFA, "--vafa_normalise", "clip"),
}
"""The models of the table and the training-mode flags of each (the release's ``--adv_training_mode``,
``--freq_reg_mode``); every one starts from the same checkpoint and trains for the same epochs."""

RECIPE = ("--batch_size", "1", "--crop_sampling", "classes", "--RandFlipd_prob", "0", "--RandRotate90d_prob", "0",
          "--lrschedule", "cosine_anneal", "--seed", "0")
"""The demo's training recipe (crops centred on every class alike, no flips or rotations of the fixed phantom
anatomy), with a cosine decay from --lr and no warm-up: the weights are trained already."""

MANIFEST = "robust_demo.json"
RUN_KEYS = frozenset({"pretrained_path", "use_pretrained", "save_model_dir", "checkpoint_dir", "resume",
                      "resume_latest", "resume_best", "resume_but_restart", "logdir", "no_sub_dir_model"})
"""Training flags that name where a run goes or resumes from, not what it computes (the base checkpoint is
recorded by its content)."""


def parse_args(argv=None):
    """``(driver flags, the flags passed to every training and evaluation run)``."""
    doc = __doc__.split("Examples::")
    parser = cli.ArgumentParser(description=doc[0].strip(), epilog="Examples::" + doc[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--out", default="robust_demo_output", help="output folder (models/, table6/)")
    parser.add_argument("--pretrained_path", required=True, help="the trained model every robust model starts from")
    parser.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs of every model")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (cosine decay to 0)")
    parser.add_argument("--train_steps", type=int, default=4, help="attack steps per training batch")
    parser.add_argument("--eval_steps", type=int, default=10, help="attack steps in evaluation")
    parser.add_argument("--block", type=int, default=None,
                        help="VAFA's cubic block side (default: 32, the paper's, or the largest side up to 32 "
                             "dividing the ROI)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="training passes and their attacks (auto: bf16 where the processor has native "
                             "bfloat16, as make demo)")
    parser.add_argument("--eval_precision", default="fp32", choices=("fp32", "bf16"),
                        help="the model's passes in evaluation (fp32: as the paper; bf16 is about twice as fast on a "
                             "processor with native bfloat16, with other rounding)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=tuple(MODELS), metavar="NAME",
                        help=f"the models to train and evaluate (default: all of {', '.join(MODELS)})")
    parser.add_argument("--attacks", nargs="+", default=[label for label, *_ in TABLE6_ATTACKS],
                        choices=[label for label, *_ in TABLE6_ATTACKS], metavar="LABEL",
                        help="the table's attack columns to run (default: all of "
                             f"{', '.join(label for label, *_ in TABLE6_ATTACKS)})")
    parser.add_argument("--max_cases", type=int, default=None, help="evaluate the first N validation cases only")
    args, passed = parser.parse_known_args(argv)
    for name in ("epochs", "train_steps", "eval_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.block is not None and args.block < 1:
        parser.error(f"--block must be at least 1, got {args.block}")
    if args.max_cases is not None and args.max_cases < 1:
        parser.error(f"--max_cases must be at least 1, got {args.max_cases}")
    for token in passed:
        name = token.split("=")[0]
        if name in ("--max_epochs", "--save_model_dir", "--out", "--save_adv_images_dir", "--steps", "--block_size"):
            parser.error(f"{name} is set by {PROG} (use --epochs, --train_steps, --eval_steps, --block, --out)")
    return args, passed


def largest_block(roi, limit: int = 32) -> int:
    """The largest cube side ``<= limit`` dividing every ROI side (32 for the paper's 96^3, 16 for 48x48x32)."""
    return next(side for side in range(limit, 0, -1) if all(s % side == 0 for s in roi))


def sha256(path: str) -> str:
    return file_fingerprint(path)["sha256"]


def _stopped_by_status(code: int) -> None:
    """A unit's exit status 128 + signal (SIGINT's KeyboardInterrupt ends in 130) as a stop of the driver."""
    if code > 128 and code - 128 in {s.value for s in signal.Signals}:
        raise StopRequested(code - 128)


# --------------------------------------------------------------------------- training


def training_argv(name: str, common, args, block: int, precision: str, folder: str) -> list[str]:
    """The fresh training command line of model ``name`` (later flags win)."""
    mode = list(MODELS[name])
    if "--adv_training_mode" in mode:
        mode += ["--steps", str(args.train_steps)]
        if "vafa-3d" in mode:
            mode += ["--block_size", str(block), str(block), str(block)]
    return [*common, *RECIPE, *mode, "--optim_lr", str(args.lr), "--max_epochs", str(args.epochs),
            "--val_every", str(args.epochs), "--precision", precision, "--use_pretrained",
            "--pretrained_path", args.pretrained_path, "--save_checkpoint", "--save_model_dir", folder,
            "--no_sub_dir_model"]


def fingerprint(argv, base_sha: str) -> dict:
    """What makes a model: the base checkpoint's content and every training flag that changes numbers."""
    parsed = run_normal_or_adv_training.parse_args(argv)
    flags = to_jsonable(vars(parsed))
    flags = {k: v for k, v in flags.items() if k not in RUNTIME_FLAGS | RUN_KEYS}
    flags["data_dir"] = os.path.realpath(flags["data_dir"])
    return {"base_sha256": base_sha, "flags": flags}


def ensure_model(name: str, argv, base_sha: str, folder: str) -> str:
    """Train model ``name`` into ``folder`` (or continue or reuse it); returns its checkpoint.

    Raises:
        UserError: the folder holds another model (other base weights or flags), or its checkpoint changed.
        StopRequested: a stop signal ended the training before its last epoch.
    """
    checkpoint = os.path.join(folder, "model_latest.pt")
    manifest_path = os.path.join(folder, MANIFEST)
    want = fingerprint(argv, base_sha)
    shown = os.path.normpath(folder)
    if os.path.exists(manifest_path):
        manifest = read_json(manifest_path)
        have = manifest.get("fingerprint", {})
        if have != want:
            differ = sorted(k for k in set(want["flags"]) | set(have.get("flags", {}))
                            if want["flags"].get(k) != have.get("flags", {}).get(k))
            if want["base_sha256"] != have.get("base_sha256"):
                differ.insert(0, "base checkpoint content")
            raise UserError(f"{shown} holds a {name} made from other settings ({', '.join(differ)}); remove that "
                            "folder to train it again, or pass another --out")
        if manifest.get("finished") and os.path.isfile(checkpoint):
            if sha256(checkpoint) != manifest.get("checkpoint_sha256"):
                raise UserError(f"{checkpoint} changed since {PROG} trained it; remove {shown} to train it again")
            logger.info("%s: reusing %s (finished, same base and flags)", name, checkpoint)
            return checkpoint
    elif os.path.isdir(folder) and os.listdir(folder):
        raise UserError(f"{shown} holds files but no {MANIFEST} of {PROG}; move it away or pass another --out")

    run_argv = list(argv)
    if os.path.isfile(checkpoint):
        run_argv += ["--resume", "--resume_latest", "--checkpoint_dir", folder]
        logger.info("%s: continuing the unfinished run in %s", name, shown)
    os.makedirs(folder, exist_ok=True)
    write_json(manifest_path, {"model": name, "fingerprint": want, "finished": False,
                               "command": "python run_normal_or_adv_training.py " + shlex.join(argv)})
    logger.info("%s: training -> %s\n$ python run_normal_or_adv_training.py %s", name, shown, shlex.join(run_argv))
    result = train(run_argv)
    if result.preempted:
        raise StopRequested(getattr(signal, result.stop_signal or "", signal.SIGTERM))
    check_stop()
    epochs = want["flags"]["max_epochs"]
    if result.epochs_done < epochs or not os.path.isfile(checkpoint):
        raise UserError(f"{name}'s training ended after {result.epochs_done} of {epochs} epochs; see {shown}/log.out")
    write_json(manifest_path, {**read_json(manifest_path), "finished": True, "checkpoint_sha256": sha256(checkpoint)})
    return checkpoint


def train(argv):
    """One run of the training script, in this process; its :class:`trainer.TrainingResult`.

    Raises:
        StopRequested: SIGINT ended it (exit status 130).
        SystemExit: it failed (its one-line message is printed), with its exit status.
    """
    from training.run import run_training

    results = []
    args = run_normal_or_adv_training.parse_args(argv)
    code = jobs.run_script(jobs.training_job, lambda job: results.append(run_training(job)), args,
                          "run_normal_or_adv_training.py")
    setup_logging()  # back to the console only
    _stopped_by_status(code)
    if code or not results:
        raise SystemExit(code or 1)
    return results[0]


# --------------------------------------------------------------------------- evaluation


def evaluate(checkpoints: dict, common, args, block: int, out: str):
    """Every model under Table 6's attacks (the sweep's cells); returns ``(preset, rows)``.

    Raises:
        UserError: ``out`` holds results of an earlier model of the same name (other weights).
        StopRequested: a stop signal ended a cell.
    """
    from studies.sweep import SweepSettings, build_preset, run_cell, run_sweep

    preset = build_preset("table6", models=list(checkpoints.items()))
    preset = dataclasses.replace(preset, cells=tuple(c for c in preset.cells if c.label in args.attacks))
    record_path = os.path.join(out, "models.json")
    record = read_json(record_path) if os.path.exists(record_path) else {}
    current = {name: sha256(path) for name, path in checkpoints.items()}
    for name, digest in current.items():
        stale = [c.key for c in preset.cells if c.model == name and os.path.isdir(os.path.join(out, "runs", c.key))]
        if stale and record.get(name) != digest:
            raise UserError(f"{out}/runs holds results of an earlier {name} (other weights than {checkpoints[name]}); "
                            f"remove {', '.join(os.path.join(out, 'runs', k) for k in stale)} or pass another --out")
    os.makedirs(out, exist_ok=True)
    write_json(record_path, {**record, **current})
    overrides = ["--steps", str(args.eval_steps), "--block_size", str(block), str(block), str(block)]
    if args.max_cases is not None:
        overrides += ["--max_cases", str(args.max_cases)]
    if args.eval_precision != "fp32":
        overrides += ["--precision", args.eval_precision]

    def runner(cell_args):
        check_stop()
        code = run_cell(cell_args)
        _stopped_by_status(code)
        check_stop()
        return code

    settings = SweepSettings(preset=preset, common=tuple(common), overrides=tuple(overrides), out=out)
    return preset, run_sweep(settings, runner)


def beside_table(rows) -> list[str]:
    """Our Dice beside the paper's per model and attack: ``ours (paper)``; M_clean beside the paper's
    undefended UNETR (Tables 1 and 5, VAFA on 32^3 blocks)."""
    from studies.sweep_report import fmt

    undefended = {"clean": paper_tables.CLEAN["dice"], **{k: v["dice"] for k, v in paper_tables.TABLE1.items()},
                  "VAFA": paper_tables.TABLE5["VAFA q_max=20"]["dice"]}
    paper = {"M_clean": undefended, **paper_tables.TABLE6}
    columns = ["clean"] + [label for label, *_ in TABLE6_ATTACKS]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {r["label"]: r for r in rows if r["model"] == model}
        clean = next((r["dice_clean"] for r in mine.values() if r.get("dice_clean") is not None), None)
        ours = {"clean": clean, **{label: r.get("dice_adv") for label, r in mine.items()}}
        theirs = {} if " clip" in model else paper.get(model, {})
        cells = [fmt(ours.get(c), 1) + (f" ({fmt(theirs[c], 1)})" if theirs.get(c) is not None else "") for c in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def write_outputs(preset, rows, out: str, settings_lines, command: str) -> dict:
    """The sweep's outputs, then tables.md again with our numbers beside the paper's and the settings,
    and robustness.png."""
    from studies import charts
    from studies.sweep_report import tables_markdown, write_sweep_outputs

    paths = write_sweep_outputs(preset, rows, out, command)
    text = tables_markdown(preset, rows, command)
    text += "\n## Ours beside the paper's (Dice %, paper in brackets)\n\n" + "\n".join(beside_table(rows)) + "\n"
    text += ("\nM_clean is the base model fine-tuned without attacks; beside it, the paper's undefended UNETR "
             "(Table 1; VAFA on 32³ blocks from Table 5). The paper has no clip models and no clip column: its "
             "release renormalises per slice.\n")
    text += "\n## Settings\n\n" + "\n".join(f"- {line}" for line in settings_lines) + "\n"
    write_bytes(paths["tables.md"], text.encode())
    finished = [r for r in rows if r["status"] in ("done", "reused")]
    if finished:
        paths["robustness.png"] = charts.robustness_plot(finished, os.path.join(out, "robustness.png"))
    return paths


# --------------------------------------------------------------------------- the driver


def run(args, passed: list[str], argv: list[str]) -> int:
    started = time.perf_counter()
    out = os.path.abspath(args.out)
    probe = run_normal_or_adv_training.parse_args([*passed, "--debugging"])  # the shared flags, checked once
    roi = (probe.roi_x, probe.roi_y, probe.roi_z)
    block = args.block or largest_block(roi)
    if any(s % block for s in roi):
        raise UserError(f"--block {block} does not divide the ROI {roi}; pick a side dividing every ROI side")
    if not os.path.isfile(args.pretrained_path):
        raise UserError(f"--pretrained_path {args.pretrained_path} is not a file; run make demo first, or pass "
                        "the checkpoint to fine-tune")
    precision = demo.demo_precision(args.precision, probe.device)
    base_sha = sha256(args.pretrained_path)
    why = "the paper's" if block == 32 else f"32³ does not divide the ROI {'×'.join(map(str, roi))}: the largest cube that does"
    settings_lines = [
        f"every model: the base model fine-tuned for {args.epochs} epochs (learning rate {args.lr:g}, cosine decay), "
        f"{precision} training passes and training attacks, {args.train_steps} attack steps per training batch",
        f"attacks: eps 4/255 (PGD, FGSM, BIM, APGD); VAFA-3D q_max 20 with the SSIM term on {block}³ blocks ({why}); "
        f"{args.eval_steps} attack steps in evaluation (paper: 20), {args.eval_precision} model passes"
        + (f", first {args.max_cases} validation case(s)" if args.max_cases else ""),
        f"base checkpoint {args.pretrained_path} (sha256 {base_sha[:12]})",
    ]
    logger.info("%s", "; ".join(settings_lines))

    checkpoints = {}
    for index, name in enumerate(args.models):
        check_stop()
        folder = os.path.join(out, "models", name.replace(" ", "_"))
        logger.info("== %d/%d %s", index + 1, len(args.models), name)
        argv_ = training_argv(name, passed, args, block, precision, folder)
        checkpoints[name] = ensure_model(name, argv_, base_sha, folder)
    check_stop()
    table_dir = os.path.join(out, "table6")
    logger.info("== evaluation -> %s", table_dir)
    preset, rows = evaluate(checkpoints, passed, args, block, table_dir)
    command = "python scripts/robust_demo.py " + shlex.join(argv)
    paths = write_outputs(preset, rows, table_dir, settings_lines, command)
    print(open(paths["tables.md"]).read(), flush=True)
    print(f"written: {', '.join(sorted(paths.values()))}")
    print(f"robust demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, passed = parse_args(argv)
    setup_logging()
    return jobs.run_driver(lambda _: run(args, passed, argv), None, PROG, unit="model and evaluation cell")


if __name__ == "__main__":
    sys.exit(main())
