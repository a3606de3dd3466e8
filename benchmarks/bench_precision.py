"""Time one attack step of the paper's UNETR per ``--precision``, with and without ``--compile``.

One step is a call of PGD / VAFA-3D (32^3 blocks, SSIM term) built with ``steps=1``, as in
``bench_attacks.py``: the model's forward and backward dominate it. Each variant wraps the
same network as the scripts do (``networks.with_precision``, ``networks.compiled``); the
cases are timed interleaved, median and minimum of ``--reps`` calls after ``--warmup``.

Besides time, each precision's input gradient (Dice-CE of the batch, as PGD's first step
takes it) is compared with float32's: the share of voxels where its sign agrees (PGD and
VAFA move along signs), and its relative L2 error.

Examples::

    python benchmarks/bench_precision.py                          # paper's UNETR, one 96^3 tile, CPU
    python benchmarks/bench_precision.py --compile --reps 3
    python benchmarks/bench_precision.py --device cuda --precisions fp32 bf16 fp16 --compile --reps 10
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

from benchmarks.bench_attacks import build_case, device_name, time_cases, unetr_and_batch  # noqa: E402
from benchmarks.common import benchmark_device  # noqa: E402
from training.losses import build_dice_ce  # noqa: E402
from networks import PRECISIONS, compiled, with_precision  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch", type=int, default=1, help="tiles per call (default 1)")
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 96), metavar=("H", "W", "D"))
    parser.add_argument("--reps", type=int, default=3, help="timed calls per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1; compiling happens here)")
    parser.add_argument("--small", action="store_true", help="small UNETR (feature 8, hidden 96) for quick runs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=tuple(PRECISIONS))
    parser.add_argument("--compile", action="store_true", help="also time each precision with torch.compile")
    parser.add_argument("--cases", nargs="+", default=["pgd", "vafa-3d-32-ssim"], help="bench_attacks.py cases")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("need --reps >= 1, --warmup >= 0, --batch >= 1")
    return args


def input_gradient(model, images, labels, loss_fn) -> torch.Tensor:
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(model(x), labels), x)
    return grad


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device, sync = benchmark_device(args.device, args.threads)
    network, images, labels = unetr_and_batch(args, device)
    loss_fn = build_dice_ce()

    variants = [(p, False) for p in args.precisions] + ([(p, True) for p in args.precisions] if args.compile else [])
    reference = input_gradient(network, images, labels, loss_fn)
    rows = []
    for precision, compile_ in variants:
        model = with_precision(compiled(network, compile_), precision)
        sync()
        start = time.perf_counter()
        grad = input_gradient(model, images, labels, loss_fn)  # the first call compiles
        sync()
        first = time.perf_counter() - start
        nonzero = reference != 0
        agree = (grad.sign() == reference.sign())[nonzero].float().mean().item()
        error = ((grad - reference).norm() / reference.norm()).item()
        label = f"{precision}{' compiled' if compile_ else ''}"
        attacks = {case: build_case(case, model, loss_fn) for case in args.cases}
        times = time_cases(attacks, images, labels, args.reps, args.warmup, sync, label)
        for case in args.cases:
            rows.append((precision, compile_, case, statistics.median(times[case]), min(times[case]), agree, error, first))
        if compile_:
            torch._dynamo.reset()

    model_desc = "small UNETR (feature 8, hidden 96)" if args.small else "UNETR (paper: feature 16, hidden 768, 12 heads)"
    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {model_desc}; input [{args.batch}, 1, {', '.join(map(str, args.size))}]; {args.reps} timed calls "
          f"after {args.warmup} warm-up; one step = an attack call with steps=1")
    print()
    print("| precision | compiled | case | median s / step | min s / step | speed-up vs fp32 (median) "
          "| grad-sign agreement with fp32 | grad rel. L2 error | first call s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {case: med for precision, compile_, case, med, *_ in rows if precision == "fp32" and not compile_}
    for precision, compile_, case, med, low, agree, error, first in rows:
        speed = f"{base[case] / med:.2f}x" if case in base else "–"
        print(f"| {precision} | {'yes' if compile_ else 'no'} | {case} | {med:.3f} | {low:.3f} | {speed} "
              f"| {100 * agree:.1f} % | {error:.3f} | {first:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
