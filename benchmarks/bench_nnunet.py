"""Seconds per attack step on an nnU-Net v2 network (with and without mirroring) next to UNETR.

One step is one PGD call with ``steps=1`` (random start, one forward and backward pass to the input, the
update), model in eval mode, batch 1. The nnU-Net network is the default 3d_fullres ``PlainConvUNet`` nnU-Net
plans for an abdominal CT patch (six stages, 32..320 features, two convolutions per stage, instance norm),
built by ``dynamic_network_architectures`` through nnU-Net's ``get_network_from_plans``, inside our
[0, 1] input map (:class:`networks.nnunet.NnUNetModel`); with ``--tta mirror`` each step runs 8 mirrored
passes. UNETR is the paper's model at its 96^3 ROI. Timed interleaved (``for rep: for case``), median and
minimum of ``--reps``.

    python benchmarks/bench_nnunet.py --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import PGD  # noqa: E402
from benchmarks.bench_attacks import device_name  # noqa: E402
from benchmarks.common import benchmark_device, time_interleaved  # noqa: E402
from training.losses import build_dice_ce  # noqa: E402
from networks import build_model  # noqa: E402

N_CLASSES = 14


def nnunet_plain_unet(patch: Sequence[int], classes: int, mirror: bool) -> torch.nn.Module:
    """nnU-Net's default 3d_fullres PlainConvUNet for ``patch`` (five 2x downsamplings), in our wrapper."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from networks.nnunet import MirrorEnsemble, NnUNetInputMap, NnUNetModel

    stages = 6
    arch_kwargs = {
        "n_stages": stages, "features_per_stage": [min(32 * 2 ** i, 320) for i in range(stages)],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * stages,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1), "n_conv_per_stage": [2] * stages,
        "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    network = get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", arch_kwargs,
                                     ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, classes, allow_init=True,
                                     deep_supervision=False)
    input_map = NnUNetInputMap([420 / 75], [-200 / 75], [False])  # a CT window (-160, 260) HU, mean 40, std 75
    return NnUNetModel(input_map, MirrorEnsemble([network], (0, 1, 2) if mirror else None))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 128, 128), help="nnU-Net patch (default 64 128 128)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no_mirror", action="store_true", help="skip the 8-pass mirrored nnU-Net")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device, sync = benchmark_device(args.device, args.threads)
    loss_fn = build_dice_ce()
    patch = tuple(args.patch)
    models = {"nnU-Net PlainConvUNet": (nnunet_plain_unet(patch, N_CLASSES, False), patch)}
    if not args.no_mirror:
        models["nnU-Net PlainConvUNet, --tta mirror"] = (nnunet_plain_unet(patch, N_CLASSES, True), patch)
    models["UNETR (paper)"] = (build_model("unet-r", 1, N_CLASSES, (96, 96, 96)), (96, 96, 96))
    cases = {}
    for name, (model, roi) in models.items():
        torch.manual_seed(0)
        model = model.to(device).eval()
        images = torch.rand(1, 1, *roi, device=device)
        labels = torch.randint(0, N_CLASSES, (1, 1, *roi), device=device).float()
        params = sum(p.numel() for p in model.parameters())
        cases[name] = (PGD(model, loss_fn, eps=4 / 255, alpha=0.01, steps=1, random_start=True), images, labels, roi,
                       params)
    times = time_interleaved({name: (lambda c=case: c[0](c[1], c[2])) for name, case in cases.items()}, args.warmup,
                             args.reps, sync)
    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"one PGD step (steps=1, forward + backward to the input), batch 1, {N_CLASSES} classes; "
          f"{args.reps} timed reps after {args.warmup} warm-up, interleaved")
    print()
    print("| model | input (x, y, z) | parameters | median s / step | min s / step |")
    print("|---|---|---|---|---|")
    for name, (_, _, _, roi, params) in cases.items():
        print(f"| {name} | {'x'.join(map(str, roi))} | {params / 1e6:.2f} M | {statistics.median(times[name]):.2f} | "
              f"{min(times[name]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
