#!/usr/bin/env python
"""The whole tool on built-in phantom data, on CPU, in a few minutes.

1. writes a synthetic abdominal CT dataset in the Synapse layout (``data.phantom``);
2. trains a small UNETR on it (``run_normal_or_adv_training.py``) with a recipe for a short
   CPU budget: crops centred on every organ alike (``--crop_sampling classes``), no flips or
   rotations (they swap the left and right organs of the phantom's fixed anatomy), a
   warm-up/cosine schedule, and bfloat16 passes where the processor computes them natively;
3. attacks the validation cases with PGD (eps 4) and VAFA-3D (q_max 20, SSIM term on),
   VAFA in both of its last steps: the release's per-slice renormalisation and the
   paper's clip (``--vafa_normalise clip``) (``generate_adv_samples.py``, with ``--save_figures``);
4. prints one table comparing clean and adversarial metrics.

Each step prints the command line it runs, so the same commands can be typed by hand.
Everything lands under ``--out``; a second run reuses what is finished. SIGTERM/SIGUSR1
(e.g. from ``timeout``) stop it with exit status 128 + signal and no table: a stopped
training keeps its last finished epoch and is continued, never attacked, by a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import generate_adv_samples  # noqa: E402
import run_normal_or_adv_training  # noqa: E402
from attacks import PGD, VAFA3D, preset_flags  # noqa: E402
from data.phantom import write_phantom_dataset  # noqa: E402

MODEL = ["--feature_size", "8", "--hidden_size", "96", "--mlp_dim", "192", "--num_heads", "4",
         "--roi_x", "48", "--roi_y", "48", "--roi_z", "32"]
ATTACKS = {
    "PGD eps=4": [*preset_flags(PGD.name), "--alpha", "0.01", "--steps", "10"],
    "VAFA-3D q_max=20": [*preset_flags(VAFA3D.name), "--steps", "10"],
    "VAFA-3D q_max=20, clip": [*preset_flags(VAFA3D.name), "--steps", "10", "--vafa_normalise", "clip"],
}
"""The demo's attacks: the paper's settings (:func:`attacks.preset_flags`: eps 4; q_max 20, 8^3 blocks, SSIM
term), the release's PGD step, 10 steps each (``--steps``)."""


def say(script, argv: list[str]) -> None:
    print(f"\n$ python {os.path.basename(script.__file__)} {shlex.join(argv)}", flush=True)


def train(argv: list[str]):
    """The training step, run here as ``run_normal_or_adv_training.py`` runs it.

    Raises:
        StopRequested: the training was stopped by a signal (it saved its last finished
            epoch and, as the script does, returned normally): nothing may be attacked.
    """
    from engine import jobs
    from training.run import run_training
    from utils.distributed import StopRequested

    say(run_normal_or_adv_training, argv)
    result = run_training(jobs.training_job(run_normal_or_adv_training.parse_args(argv)))
    if result.preempted:
        raise StopRequested(getattr(signal, str(result.stop_signal), signal.SIGTERM))
    return result


def attack(argv: list[str]) -> str:
    """One attack step as ``generate_adv_samples.py`` runs it; returns its run folder (a stop
    signal ends it at a safe point with :class:`StopRequested`)."""
    from engine import jobs
    from engine.evaluation import run_generation

    say(generate_adv_samples, argv)
    job = jobs.generation_job(generate_adv_samples.parse_args(argv))
    run_generation(job)
    return job.run_dir


def attack_folder(argv: list[str]) -> str:
    """The name ``generate_adv_samples.py`` gives the run folder of an attack step (``make readme-figures``
    finds the demo's runs by it)."""
    from engine.jobs import adv_subdir_name

    return adv_subdir_name(generate_adv_samples.parse_args(argv))


def epochs_done(model_dir: str) -> int:
    """Epochs the demo's training has finished (its ``model_latest.pt``), 0 when none."""
    from networks.checkpoint import read_checkpoint

    latest = os.path.join(model_dir, "model_latest.pt")
    if not os.path.exists(latest):
        return 0
    return int(read_checkpoint(latest).get("epoch", -1)) + 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="folder for data, model and results")
    parser.add_argument("--epochs", type=int, default=200, help="training epochs")
    parser.add_argument("--steps", type=int, default=10, help="attack steps (each attack)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="training passes (auto: bf16 where the processor has native bfloat16, else fp32); "
                             "the attacks always run in fp32")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.steps < 1:
        parser.error("--epochs and --steps must be at least 1")
    from engine.jobs import run_driver

    return run_driver(run_demo, args, "demo.py", unit="step")


def run_demo(args: argparse.Namespace) -> None:
    """The three steps and the tables. A stop signal (SIGTERM, SIGUSR1) ends it between steps or
    at a step's safe point, before any table: a stopped training is never attacked; the same
    command continues it (``--resume --resume_latest``) and reuses finished attacks."""
    from utils.distributed import check_stop
    from utils.run_folder import RunLayout

    started = time.perf_counter()
    out = os.path.abspath(args.out)
    data_dir, model_dir, adv_dir = (os.path.join(out, name) for name in ("data", "model", "adversarial"))
    runtime = ["--workers", str(args.workers)] + (["--device", args.device] if args.device else [])
    data = ["--dataset", "btcv", "--data_dir", data_dir, "--json_list", "dataset.json",
            "--space_x", "1.5", "--space_y", "1.5", "--space_z", "2.0"]

    print(f"== 1/3 phantom CT dataset -> {data_dir}", flush=True)
    write_phantom_dataset(data_dir, n_train=6, n_val=2, shape=(96, 96, 48), spacing=(1.5, 1.5, 2.0), seed=0)
    check_stop()

    checkpoint = os.path.join(model_dir, "model_best.pt")
    precision = demo_precision(args.precision, args.device)
    print(f"\n== 2/3 train a small UNETR for {args.epochs} epochs ({precision}) -> {model_dir}", flush=True)
    done = epochs_done(model_dir)
    if done >= args.epochs and os.path.exists(checkpoint):
        print(f"(reusing {checkpoint}: {done} epochs trained)")
    else:
        flags = MODEL + data + runtime + [
            "--save_checkpoint", "--save_model_dir", model_dir, "--max_epochs", str(args.epochs),
            "--val_every", str(max(1, args.epochs // 5)), "--batch_size", "1", "--optim_lr", "4e-3",
            "--lrschedule", "warmup_cosine", "--warmup_epochs", str(min(5, args.epochs)), "--crop_sampling", "classes",
            "--RandFlipd_prob", "0", "--RandRotate90d_prob", "0", "--precision", precision,
            "--infer_overlap", "0.25", "--seed", "0"]
        if done:
            print(f"(continuing the stopped training after epoch {done - 1})")
            flags += ["--resume", "--resume_latest", "--checkpoint_dir", model_dir]
        train(flags)
    check_stop()

    print(f"\n== 3/3 attack the validation cases -> {adv_dir}", flush=True)
    reports = {}
    for title, flags in ATTACKS.items():
        check_stop()
        flags = [*flags]
        flags[flags.index("--steps") + 1] = str(args.steps)
        run_dir = attack(MODEL + data + runtime + flags + [
            "--use_pretrained", "--pretrained_path", checkpoint, "--gen_val_adv_mode",
            "--save_adv_images_dir", adv_dir, "--save_figures", "--infer_overlap", "0.25", "--seed", "0"])
        with open(RunLayout(run_dir).results) as f:
            reports[title] = (json.load(f)["overall"], run_dir)
    check_stop()

    print("\n" + comparison_table(reports))
    print("\nDice % per organ:\n" + organ_table(reports))
    print(f"\nfigures: {', '.join(os.path.join(d, 'figures') for _, d in reports.values())}")
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")


def demo_precision(choice: str, device: str | None) -> str:
    """``auto``: bf16 on a CUDA card that supports it or a CPU advertising bfloat16 instructions
    (AVX512-BF16, AMX), where it halves the step time; fp32 elsewhere (emulated bf16 is slower)."""
    import torch

    if choice != "auto":
        return choice
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        with open("/proc/cpuinfo") as f:
            return cpu_precision(f.read())
    except OSError:
        return "fp32"


def cpu_precision(cpuinfo: str) -> str:
    """bf16 when ``/proc/cpuinfo``'s flags list native bfloat16 instructions, else fp32."""
    flags = set(cpuinfo.split())
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


def comparison_table(reports: dict) -> str:
    def fmt(value, digits=1):
        return "n/a" if value is None else f"{value:.{digits}f}"

    first = next(iter(reports.values()))[0]
    rows = [
        "| | Dice % | HD95 (vox) | voxel success % | SSIM | PSNR dB | LPIPS-sim % |",
        "|---|---|---|---|---|---|---|",
        f"| clean | {fmt(first['dice_clean'])} | {fmt(first['hd95_clean'])} | – | – | – | – |",
    ]
    for title, (overall, _) in reports.items():
        rows.append(
            f"| {title} | {fmt(overall['dice_adv'])} | {fmt(overall['hd95_adv'])} | {fmt(overall['success_rate'])} "
            f"| {fmt(overall['ssim'], 4)} | {fmt(overall['psnr'])} | {fmt(overall.get('lpips_similarity'))} |"
        )
    return "\n".join(rows)


def organ_table(reports: dict) -> str:
    """Dice per class: clean, then under each attack (``-`` where a class is in no validation case)."""
    def fmt(value):
        return "–" if value is None else f"{value:.1f}"

    first = next(iter(reports.values()))[0]["per_organ"]
    rows = ["| class | clean | " + " | ".join(reports) + " |", "|---|---|" + "---|" * len(reports)]
    for name, organ in first.items():
        adv = [fmt(overall["per_organ"][name]["dice_adv"]) for overall, _ in reports.values()]
        rows.append(f"| {name} | {fmt(organ['dice_clean'])} | " + " | ".join(adv) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
