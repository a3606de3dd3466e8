"""Cost of one VAFT training step against (steps + 2) clean forward+backward passes.

A VAFT step (the paper's Algorithm 2) attacks the batch with VAFA (``--steps`` forward and
backward passes to the input, model frozen), then trains on the clean and the
adversarial batch (two forward passes, one backward through both) with the frequency-
consistency loss. Its cost should be about ``steps + 2`` clean training steps; the
ratio printed is ``t(VAFT step) / ((steps + 2) * t(clean step))``, where a clean step is
one normal training step (forward, backward, optimiser) on the same batch. The trainers
are the training script's own (built from its flags); the batch is random, ``4 * --batch``
ROI crops as the release's loader gives.

Examples::

    python benchmarks/bench_vaft.py --small --steps 5                 # CPU-sized
    python benchmarks/bench_vaft.py --device cuda --steps 20 --precision fp16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_attacks import device_name  # noqa: E402
from benchmarks.common import benchmark_device  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--roi", type=int, default=96, help="cubic ROI side (default 96)")
    parser.add_argument("--batch", type=int, default=1, help="volumes per step; each gives 4 crops (default 1)")
    parser.add_argument("--steps", type=int, default=20, help="VAFA steps (paper: 20)")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--reps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--small", action="store_true", help="small UNETR (feature 8, hidden 96)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    return parser.parse_args(argv)


def build(flags: list[str], device: torch.device):
    from engine import cli, jobs
    from training import run as training

    args = cli.parse_training_args("", flags)
    job = jobs.training_job(args)
    torch.manual_seed(0)
    return training.build_trainer(job, job.model.build(), device)


def timed(step, batch, reps: int, warmup: int, sync) -> list[float]:
    times = []
    for rep in range(warmup + reps):
        sync()
        start = time.perf_counter()
        step(batch)
        sync()
        if rep >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device, sync = benchmark_device(args.device, args.threads)
    model = (["--feature_size", "8", "--hidden_size", "96", "--mlp_dim", "192", "--num_heads", "4"] if args.small
             else ["--feature_size", "16"])
    roi = [str(args.roi)] * 3
    common = model + ["--data_dir", "unused", "--debugging", "--device", str(device), "--roi_x", roi[0],
                      "--roi_y", roi[1], "--roi_z", roi[2], "--lrschedule", "constant"]
    crops = 4 * args.batch
    g = torch.Generator().manual_seed(0)
    images = torch.rand(crops, 1, args.roi, args.roi, args.roi, generator=g).to(device)
    labels = torch.randint(0, 14, (crops, 1, args.roi, args.roi, args.roi), generator=g).float().to(device)
    batch = {"image": images, "label": labels}
    rows = []
    for precision in args.precisions:
        flags = common + ["--precision", precision]
        clean = build(flags, device)
        vaft = build(flags + ["--adv_training_mode", "--freq_reg_mode", "--attack_name", "vafa-3d", "--q_max", "20",
                              "--block_size", "32", "32", "32", "--use_ssim_loss", "--steps", str(args.steps)], device)
        print(f"== {precision}", file=sys.stderr, flush=True)
        t_clean = statistics.median(timed(clean.train_step, batch, args.reps, args.warmup, sync))
        t_vaft = statistics.median(timed(vaft.train_step, batch, args.reps, args.warmup, sync))
        rows.append((precision, t_clean, t_vaft))

    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {'small UNETR (feature 8, hidden 96)' if args.small else 'UNETR (paper: feature 16, hidden 768)'}; "
          f"{crops} crops of {args.roi}^3 per step; VAFA-3D 32^3 with SSIM, {args.steps} steps; median of {args.reps}")
    print()
    print("| precision | clean step s | VAFT step s | (steps + 2) x clean s | ratio |")
    print("|---|---|---|---|---|")
    for precision, t_clean, t_vaft in rows:
        budget = (args.steps + 2) * t_clean
        print(f"| {precision} | {t_clean:.3f} | {t_vaft:.3f} | {budget:.3f} | {t_vaft / budget:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
