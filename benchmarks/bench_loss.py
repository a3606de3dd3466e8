"""Time the attack's Dice-CE, forward and backward to the logits: MONAI's (the release's) vs fused.

The release's loss is MONAI ``DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)``;
``--fused_dice_ce`` swaps in ``training.losses.FusedDiceCE`` (one softmax, a written-out
gradient). Both run on the logits an attack call sees (default: the release's 6 tiles of
96^3, 14 classes), interleaved, median and minimum of ``--reps`` after one warm-up call. The
fused gradient is compared with MONAI's: the share of logits where the signs agree and the
largest difference relative to the largest gradient.

Examples::

    python benchmarks/bench_loss.py
    python benchmarks/bench_loss.py --device cuda --reps 20
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
from training.losses import build_dice_ce  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch", type=int, default=6, help="tiles (default 6, the release's attack batch)")
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 96), metavar=("H", "W", "D"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device, sync = benchmark_device(args.device, args.threads)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, *args.size)
    logits = (3 * torch.randn(shape, generator=gen)).to(device)
    labels = torch.randint(0, args.classes, (args.batch, 1, *args.size), generator=gen).float().to(device)
    losses = {"MONAI DiceCELoss (release)": build_dice_ce(), "fused (--fused_dice_ce)": build_dice_ce(fused=True)}

    def step(loss_fn):
        x = logits.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x, labels), x)
        return grad

    grads = {name: step(fn) for name, fn in losses.items()}  # warm-up, and the gradients compared
    times = {name: [] for name in losses}
    for _ in range(args.reps):
        for name, fn in losses.items():
            sync()
            start = time.perf_counter()
            step(fn)
            sync()
            times[name].append(time.perf_counter() - start)
    reference, fused = grads.values()
    agree = float((reference.sign() == fused.sign()).float().mean())
    error = float((reference - fused).abs().max() / reference.abs().max())
    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"logits {' x '.join(map(str, shape))}, float32; {args.reps} timed calls each")
    print()
    print("| Dice-CE | median s | min s | speed-up | gradient sign agreement | max difference / max gradient |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times[next(iter(times))])
    for name, values in times.items():
        median = statistics.median(values)
        same = name == next(iter(times))
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {base / median:.2f}x | "
              f"{'—' if same else f'{100 * agree:.4f} %'} | {'—' if same else f'{error:.1e}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
