"""Whole-volume attack throughput: seconds per volume, volumes per hour, and where the time goes.

Runs ``generate_adv_samples.py`` itself (in this process) on phantom CT volumes of a
Synapse-sized resampled grid (default 256 x 256 x 112 at 1.5 x 1.5 x 2 mm, so no
resampling changes the size) with a UNETR of random weights, for each attack and
``--precision``: loading, tiling into 96^3 ROI tiles, every attack step, stitching,
sliding-window prediction of the clean and adversarial volumes, the metrics (Dice,
HD95, SSIM, PSNR, LPIPS when its weights are cached) and the NIfTI writing — the whole
per-case path of a real run.

Timing: the network is wrapped so that its forward and backward passes are timed
(device synchronised at their ends); everything else is "outside the model". The
table reports the steady-state loop per volume (from the first case's arrival to the
last case's hand-over to the finisher), the share of it spent outside the model's
passes, and its parts: the attack's loss, the attack's own work (transforms, tiling,
stitching), the sliding-window bookkeeping, the time the loop waits for the previous
case's finishing (metrics, NIfTI writing and the case record; ``--finish_cases
background`` runs them in a thread while the next case is attacked, ``inline`` in the
loop; ``auto``, the default, picks background on an accelerator and inline on a CPU),
and waiting for the next case's data. The finishing's own seconds per volume are
printed apart: in the background they overlap the attack (and on a CPU share its
cores). Once per run and not per volume: the start-up (model, caching the cases) and,
in the background, the last case's finishing, which no attack overlaps.

Examples::

    python benchmarks/bench_volume.py                          # paper's UNETR, 20 steps (slow on CPU)
    python benchmarks/bench_volume.py --small --steps 5        # a CPU-sized run
    python benchmarks/bench_volume.py --device cuda --precisions fp32 bf16 fp16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Optional, Sequence

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import PGD, VAFA3D, preset_flags  # noqa: E402
from benchmarks.bench_attacks import device_name  # noqa: E402
from benchmarks.common import benchmark_device  # noqa: E402

ATTACKS = {
    "pgd": [*preset_flags(PGD.name), "--alpha", "0.01"],
    "vafa-3d-32-ssim": [*preset_flags(VAFA3D.name), "--block_size", "32", "32", "32"],  # the paper's 32^3 blocks
}
"""The timed attacks: the paper's settings (:func:`attacks.preset_flags`), PGD at the release's step, VAFA on 32^3."""
SPACING = (1.5, 1.5, 2.0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 112), metavar=("H", "W", "D"))
    parser.add_argument("--cases", type=int, default=2, help="volumes (default 2: the second shows the overlap)")
    parser.add_argument("--steps", type=int, default=20, help="attack steps (paper: 20)")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=tuple(ATTACKS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true", help="pass --compile to the runs")
    parser.add_argument("--fused", action="store_true", help="pass --fused_dice_ce (the attack's loss fused)")
    parser.add_argument("--finish_cases", default="auto", choices=("auto", "background", "inline"),
                        help="passed on: where each case's metrics and files are done (default auto)")
    parser.add_argument("--small", action="store_true", help="small UNETR (feature 8, hidden 96) instead of the paper's")
    parser.add_argument("--attack_batch_size", type=int, default=6, help="tiles per attack call (release: 6)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", default="bench_volume_output", help="folder for the data, weights and runs")
    return parser.parse_args(argv)


class _Clock:
    """Seconds spent in the network's passes (forward, and backward from its output to its input)."""

    def __init__(self, sync):
        self.sync = sync
        self.seconds = 0.0
        self.backward_started = 0.0


class _Mark(torch.autograd.Function):
    """Identity; in the backward pass, starts (on an output) or stops (on an input) ``clock``'s timer."""

    @staticmethod
    def forward(ctx, x, clock, starts):  # noqa: D102
        ctx.clock, ctx.starts = clock, starts
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        ctx.clock.sync()
        if ctx.starts:
            ctx.clock.backward_started = time.perf_counter()
        else:
            ctx.clock.seconds += time.perf_counter() - ctx.clock.backward_started
        return grad, None, None


def _timed_call(fn, clock: _Clock, x, *rest):
    """``fn(x, *rest)`` with its forward time, and its backward from the output to ``x``, added to ``clock``."""
    clock.sync()
    start = time.perf_counter()
    if x.requires_grad:
        x = _Mark.apply(x, clock, False)
    out = fn(x, *rest)
    clock.sync()
    clock.seconds += time.perf_counter() - start
    return _Mark.apply(out, clock, True) if out.requires_grad else out


class Timed(nn.Module):
    """The network, with the time of its forward and backward passes added to ``clock``."""

    def __init__(self, model: nn.Module, clock: _Clock):
        super().__init__()
        self.model = model
        self.clock = clock

    def forward(self, x):
        return _timed_call(self.model, self.clock, x)


@contextlib.contextmanager
def instrumented(clock: _Clock, loss_clock: _Clock, marks: dict):
    """Time the model (``clock``), the attack's loss (``loss_clock``: forward, and backward to the
    logits) and the per-case phases (``marks``) of the evaluation loop.

    The loop's own thread attacks and predicts; handing a case to the finisher (``submit``, which
    first waits for the previous case, and the final wait at the loop's end) is the part of the
    case finishing that the loop waits for. The finishing itself (metrics, NIfTI writing) runs in
    the finisher's thread by default, so it is timed apart, as work overlapped with the attack."""
    import engine.evaluation as evaluation
    import utils.metrics as metrics

    patched = {
        (evaluation, "load_trained_model"): lambda fn: lambda *a, **k: Timed(fn(*a, **k), clock),
        (evaluation, "build_dice_ce"): lambda fn: lambda *a, **k: _TimedLoss(fn(*a, **k), loss_clock),
        (evaluation, "check_case"): lambda fn: _noting("arrivals", fn, marks),
        (evaluation, "predict_volume"): lambda fn: _timed("predict", fn, marks, clock),
        (evaluation.CaseFinisher, "submit"): lambda fn: _noting("handed", _timed("finish_wait", fn, marks, clock),
                                                              marks, after=True),
        (evaluation.CaseFinisher, "__exit__"): lambda fn: _timed("drain", fn, marks, clock),
        (evaluation.CaseEvaluator, "save"): lambda fn: _timed("save", fn, marks),
        (metrics, "compute_case_metrics"): lambda fn: _timed("metrics", fn, marks),
    }
    originals = {key: getattr(*key) for key in patched}
    for (owner, name), wrap in patched.items():
        setattr(owner, name, wrap(originals[(owner, name)]))
    try:
        yield
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)


class _TimedLoss:
    """The attack's loss, its forward and its backward to the logits added to ``clock``."""

    def __init__(self, loss_fn, clock: _Clock):
        self.loss_fn, self.clock = loss_fn, clock

    def __call__(self, logits, labels):
        return _timed_call(self.loss_fn, self.clock, logits, labels)


def _noting(key: str, fn, marks: dict, after: bool = False):
    """``fn``, appending the time of each call's start (or end, with ``after``) to ``marks[key]``."""
    def wrapper(*args, **kwargs):
        if not after:
            marks.setdefault(key, []).append(time.perf_counter())
        try:
            return fn(*args, **kwargs)
        finally:
            if after:
                marks.setdefault(key, []).append(time.perf_counter())
    return wrapper


def _timed(key: str, fn, marks: dict, clock: Optional[_Clock] = None):
    """``fn``, adding its seconds to ``marks[key]`` (and, given the model's ``clock``, the model's
    seconds within it to ``marks[key + "_model"]``; only for calls on the loop's own thread)."""
    def wrapper(*args, **kwargs):
        if clock is not None:
            clock.sync()
            model_before = clock.seconds
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if clock is not None:
                clock.sync()
                marks[f"{key}_model"] = marks.get(f"{key}_model", 0.0) + clock.seconds - model_before
            marks[key] = marks.get(key, 0.0) + time.perf_counter() - start
    return wrapper


def model_flags(small: bool) -> list[str]:
    if small:
        return ["--feature_size", "8", "--hidden_size", "96", "--mlp_dim", "192", "--num_heads", "4"]
    return ["--feature_size", "16"]


def prepare(args) -> tuple[str, str]:
    """The phantom volumes and a checkpoint of random weights (both reused when present)."""
    from data.phantom import write_phantom_dataset
    from engine.cli import EVAL_GROUPS, model_settings, parse
    from networks import save_checkpoint

    data_dir = os.path.join(args.out, "data")
    write_phantom_dataset(data_dir, n_train=1, n_val=args.cases, shape=tuple(args.size), spacing=SPACING, seed=0)
    checkpoint = os.path.join(args.out, f"unetr_{'small' if args.small else 'paper'}.pt")
    if not os.path.exists(checkpoint):
        flags = parse("", model_flags(args.small) + ["--data_dir", data_dir, "--pretrained_path", "x"], EVAL_GROUPS, ())
        torch.manual_seed(0)
        save_checkpoint({"state_dict": model_settings(flags).build().state_dict()}, checkpoint)
    return data_dir, checkpoint


def main(argv: Optional[Sequence[str]] = None) -> int:
    import generate_adv_samples
    from engine.evaluation import finishes_in_background

    args = parse_args(argv)
    device, sync = benchmark_device(args.device, args.threads)
    data_dir, checkpoint = prepare(args)
    rows = []
    for attack in args.attacks:
        for precision in args.precisions:
            run_dir = os.path.join(args.out, "runs", f"{attack}_{precision}")
            argv_ = (model_flags(args.small) + ATTACKS[attack]
                     + ["--steps", str(args.steps), "--precision", precision, "--device", str(device),
                        "--data_dir", data_dir, "--json_list", "dataset.json", "--pretrained_path", checkpoint,
                        "--gen_val_adv_mode", "--save_adv_images_dir", run_dir, "--no_sub_dir_adv_images",
                        "--overwrite", "--workers", str(args.workers), "--attack_batch_size",
                        str(args.attack_batch_size)]
                     + (["--compile"] if args.compile else []) + ["--finish_cases", args.finish_cases]
                     + (["--fused_dice_ce"] if args.fused else []))
            clock, loss_clock, marks = _Clock(sync), _Clock(sync), {}
            print(f"== {attack}, {precision}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            with instrumented(clock, loss_clock, marks):
                code = generate_adv_samples.main(argv_)
            total = time.perf_counter() - start
            if code:
                return code
            marks["loss"] = loss_clock.seconds
            rows.append((attack, precision, total, clock.seconds, marks))

    n = args.cases
    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {'small UNETR (feature 8, hidden 96)' if args.small else 'UNETR (paper: feature 16, hidden 768)'}, "
          f"random weights; {n} volumes of {' x '.join(map(str, args.size))}; ROI 96^3 tiles, "
          f"{args.attack_batch_size} per call; {args.steps} steps; overlap 0.5; --workers {args.workers}"
          f"{'; --compile' if args.compile else ''}{'; --fused_dice_ce' if args.fused else ''}")
    print()
    print("| attack | precision | finishing | s / volume | volumes / hour | outside the model's passes | attack "
          "loss (Dice-CE, forward and backward) | attack's own work (transforms, update, tiling, stitching) | "
          "sliding-window bookkeeping | waiting for the previous case's finishing | waiting for data | metrics "
          "(s / volume) | NIfTI writing (s / volume) | start-up and report s | last case's finishing s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for attack, precision, total, model_seconds, marks in rows:
        arrivals, handed = marks["arrivals"], marks["handed"]
        loop = handed[-1] - arrivals[0]  # the model runs only inside the loop
        waiting = sum(max(0.0, a - h) for a, h in zip(arrivals[1:], handed[:-1]))
        attack_phase = loop - marks["predict"] - marks["finish_wait"] - waiting
        parts = {
            "outside": loop - model_seconds,
            "loss": marks["loss"],
            "attack": attack_phase - (model_seconds - marks["predict_model"]) - marks["loss"],
            "window": marks["predict"] - marks["predict_model"],
            "finish_wait": marks["finish_wait"],
            "waiting": waiting,
        }
        per_volume = loop / n
        shares = " | ".join(f"{100 * parts[k] / loop:.1f} %" for k in parts)
        finishing = "background" if finishes_in_background(args.finish_cases, device) else "inline"
        print(f"| {attack} | {precision} | {finishing} | {per_volume:.1f} | "
              f"{3600 / per_volume:.1f} | {shares} | {marks.get('metrics', 0.0) / n:.1f} | "
              f"{marks.get('save', 0.0) / n:.1f} | {total - loop - marks['drain']:.1f} | {marks['drain']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
