"""Parameter count and seconds per attack step of every registered model (the README's model table).

One step is one PGD call with ``steps=1`` on ``[batch, 1, *roi]``: the random start, one forward and
backward pass to the input and the update, with the model in eval mode. Each model is built with its
registered defaults (``--model_name`` flags' defaults) at its reference ROI, unless ``--roi`` is given.
Models are timed interleaved (``for rep: for model: time one call``, order reversed every other rep), so
load changes on a shared machine hit all alike; the table gives the median and the minimum.

Examples::

    python benchmarks/bench_models.py                          # every model, reference sizes, CPU
    python benchmarks/bench_models.py --model_name unetr++ unet --reps 5
    python benchmarks/bench_models.py --device cuda --reps 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import benchmark_device, time_interleaved  # noqa: E402

from attacks import PGD  # noqa: E402
from benchmarks.bench_attacks import device_name  # noqa: E402
from training.losses import build_dice_ce  # noqa: E402
from networks import MODELS, build_model  # noqa: E402

N_CLASSES = 14

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    built_here = [name for name, entry in MODELS.items() if entry.defaults is None]  # not a user's model folder
    parser.add_argument("--model_name", nargs="+", default=built_here, choices=built_here, help="models to time "
                        "(nnU-Net: benchmarks/bench_nnunet.py)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--roi", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="one ROI for every model (default: each model's reference ROI)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per model (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions per model first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error(f"need --reps >= 1, --warmup >= 0, --batch >= 1; got {args.reps}, {args.warmup}, {args.batch}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device, sync = benchmark_device(args.device, args.threads)
    loss_fn = build_dice_ce()

    cases = {}
    for name in args.model_name:
        roi = tuple(args.roi) if args.roi else MODELS[name].reference_roi
        torch.manual_seed(0)
        model = build_model(name, 1, N_CLASSES, roi).to(device).eval()
        images = torch.rand(args.batch, 1, *roi, device=device)
        labels = torch.randint(0, N_CLASSES, (args.batch, 1, *roi), device=device).float()
        attack = PGD(model, loss_fn, eps=4 / 255, alpha=0.01, steps=1, random_start=True)
        cases[name] = (attack, images, labels, roi, sum(p.numel() for p in model.parameters()))

    names = list(cases)
    times = time_interleaved({name: (lambda c=cases[name]: c[0](c[1], c[2])) for name in names}, args.warmup,
                             args.reps, sync)

    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"one PGD step (steps=1, random start, forward + backward to the input), batch {args.batch}, "
          f"{N_CLASSES} classes, default options; {args.reps} timed reps after {args.warmup} warm-up, interleaved")
    print()
    print("| model | ROI (x, y, z) | parameters | median s / step | min s / step |")
    print("|---|---|---|---|---|")
    for name in names:
        _, _, _, roi, params = cases[name]
        print(f"| {name} | {'x'.join(map(str, roi))} | {params / 1e6:.2f} M | {statistics.median(times[name]):.2f} | "
              f"{min(times[name]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
