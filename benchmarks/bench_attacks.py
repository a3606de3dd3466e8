"""Time one attack step: PGD vs VAFA-3D (8^3, 32^3 blocks, with SSIM) and VAFA-2D (32^2).

"One step" is a whole call of an attack built with ``steps=1``: for PGD that is
the random start plus one forward+backward and update; for VAFA it is the one-off
block DCT of the clean image, one quantise/inverse-DCT/normalise, forward+backward
(to the q-tables, through the model), the SSIM term where enabled and the update.
Cases are timed interleaved (``for rep: for case: time one call``, the case
order reversed on every other rep) in one process so that load changes hit all
cases alike; the table gives the median and the minimum.

With ``--overhead`` the same cases are also timed with a trivial model (one 1x1x1
convolution): the difference to PGD there is the attack's own cost (transforms,
SSIM, normalisation, their backward), independent of the network, which gives a
second, less noisy estimate of the ratio on a shared machine:
``(t_pgd + extra) / t_pgd``.

Examples::

    python benchmarks/bench_attacks.py --reps 3 --overhead      # paper's UNETR, [2,1,96,96,96], CPU
    python benchmarks/bench_attacks.py --small                  # quick run with a small UNETR
    python benchmarks/bench_attacks.py --device cuda --reps 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import benchmark_device, time_interleaved  # noqa: E402

from attacks import PGD, VAFA  # noqa: E402
from networks import build_model  # noqa: E402
from training.losses import build_dice_ce  # noqa: E402

N_CLASSES = 14

# name -> what to build: PGD, or VAFA with these keyword arguments (steps=1 added)
CASES: Dict[str, dict] = {
    "pgd": dict(kind="pgd"),
    "vafa-3d-8-ssim": dict(kind="vafa", block_size=(8, 8, 8), use_ssim_loss=True),
    "vafa-3d-32-ssim": dict(kind="vafa", block_size=(32, 32, 32), use_ssim_loss=True),
    "vafa-2d-32": dict(kind="vafa", block_size=(32, 32)),
    "vafa-3d-8": dict(kind="vafa", block_size=(8, 8, 8), use_ssim_loss=False),
    "vafa-3d-32": dict(kind="vafa", block_size=(32, 32, 32), use_ssim_loss=False),
}
DEFAULT_CASES = ["pgd", "vafa-3d-8-ssim", "vafa-3d-32-ssim", "vafa-2d-32"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch", type=int, default=2, help="batch size B (default 2)")
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 96), metavar=("H", "W", "D"), help="volume size (default 96 96 96)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per case (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions per case first (default 1)")
    parser.add_argument("--small", action="store_true", help="small UNETR (feature 8, hidden 96, mlp 192, 4 heads) for quick runs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--overhead", action="store_true", help="also time each case with a trivial model to isolate the attack's own cost")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=sorted(CASES), help="cases to time; pgd is the baseline")
    args = parser.parse_args(argv)
    if "pgd" not in args.cases:
        args.cases = ["pgd"] + list(args.cases)
    if args.reps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error(f"need --reps >= 1, --warmup >= 0, --batch >= 1; got {args.reps}, {args.warmup}, {args.batch}")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_unetr(size: Sequence[int], small: bool) -> torch.nn.Module:
    if small:
        config = dict(feature_size=8, hidden_size=96, mlp_dim=192, num_heads=4)
    else:
        config = dict(feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12)
    return build_model(
        "unet-r", in_channels=1, out_channels=N_CLASSES, img_size=tuple(size), pos_embed="perceptron",
        norm_name="instance", dropout_rate=0.0, **config,
    )


def unetr_and_batch(args, device: torch.device) -> tuple:
    """The UNETR of ``args.size``/``args.small`` (seed 0, eval mode) and a random batch of ``args.batch`` volumes."""
    torch.manual_seed(0)
    model = build_unetr(args.size, args.small).to(device).eval()
    images = torch.rand(args.batch, 1, *args.size, device=device)
    labels = torch.randint(0, N_CLASSES, (args.batch, 1, *args.size), device=device).float()
    return model, images, labels


def build_case(name: str, model: torch.nn.Module, loss_fn) -> Callable:
    spec = dict(CASES[name])
    if spec.pop("kind") == "pgd":
        return PGD(model, loss_fn, eps=4 / 255, alpha=0.01, steps=1, random_start=True)
    return VAFA(model, loss_fn, q_max=20, steps=1, **spec)


def fits(name: str, size: Sequence[int]) -> bool:
    block = CASES[name].get("block_size")
    return block is None or all(s % b == 0 for s, b in zip(size, block))


class TrivialModel(torch.nn.Module):
    """One 1x1x1 convolution to ``N_CLASSES`` logits: the attack's own cost dominates."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, N_CLASSES, 1)

    def forward(self, x):
        return self.conv(x)


def time_cases(attacks: Dict[str, Callable], images, labels, reps: int, warmup: int, sync, label: str) -> Dict[str, List[float]]:
    """Interleaved wall-clock times of one attack call per case and rep (:func:`benchmarks.common.time_interleaved`)."""
    return time_interleaved({c: (lambda attack=attack: attack(images, labels)) for c, attack in attacks.items()},
                            warmup, reps, sync, label)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device, sync = benchmark_device(args.device, args.threads)

    model, images, labels = unetr_and_batch(args, device)
    loss_fn = build_dice_ce()

    cases = [c for c in args.cases if fits(c, args.size)]
    skipped = [c for c in args.cases if c not in cases]
    times = time_cases({c: build_case(c, model, loss_fn) for c in cases}, images, labels, args.reps, args.warmup, sync, "model")
    extra = None
    if args.overhead:
        trivial = TrivialModel().to(device).eval()
        extra = time_cases({c: build_case(c, trivial, loss_fn) for c in cases}, images, labels, args.reps, args.warmup, sync, "trivial model")

    model_desc = "small UNETR (feature 8, hidden 96)" if args.small else "UNETR (paper: feature 16, hidden 768, 12 heads)"
    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {model_desc}; input [{args.batch}, 1, {', '.join(map(str, args.size))}]; "
          f"{args.reps} timed reps after {args.warmup} warm-up, interleaved; one step = a call with steps=1 "
          f"(PGD with its random start, VAFA with its one-off DCT of the clean image)")
    if skipped:
        print(f"skipped (size not divisible by the block): {', '.join(skipped)}")
    print()
    base, base_min = statistics.median(times["pgd"]), min(times["pgd"])
    header = "| case | median s / step | min s / step | ratio to PGD (median) | ratio to PGD (min) |"
    rule = "|---|---|---|---|---|"
    if extra is not None:
        header += " attack's own cost, s (trivial model, vs PGD) | ratio from own cost |"
        rule += "---|---|"
    print(header)
    print(rule)
    for c in cases:
        med, low = statistics.median(times[c]), min(times[c])
        row = f"| {c} | {med:.3f} | {low:.3f} | {med / base:.3f} | {low / base_min:.3f} |"
        if extra is not None:
            own = statistics.median(extra[c]) - statistics.median(extra["pgd"])
            row += f" {own:+.3f} | {(base + own) / base:.3f} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
