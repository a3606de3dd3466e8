"""Adversarial Dice of PGD, SegPGD, CosPGD, APGD (each loss) and the worst case at equal budget.

Every attack runs on the whole validation volumes (ROI tiles, as ``generate_adv_samples.py``
attacks them) with the same ``eps`` and number of steps; the volume is then predicted by
sliding-window inference and scored with the reports' Dice (background included, mean
over the classes of the ground truth). Prints one row per attack and budget: mean
adversarial Dice over the cases and seconds per volume (the attack only). PGD, SegPGD and
CosPGD use ``alpha = --alpha_fraction · eps``; APGD sets its own step sizes; the worst case
runs its members (default: APGD with masked CE, balanced masked CE and JS) at the same
budget each, so it costs their sum. Figures, not a test: times depend on the machine's load.

Example (the demo's model and phantom cases, see ``make demo``)::

    python benchmarks/bench_seg_attacks.py --pretrained_path demo_output/model/model_best.pt \\
        --data_dir demo_output/data --json_list dataset.json --feature_size 8 --hidden_size 96 \\
        --mlp_dim 192 --num_heads 4 --roi_x 48 --roi_y 48 --roi_z 32 --infer_overlap 0.25 \\
        --eps 4 8 --steps 20 --max_cases 2

``--crop 48 48 32`` attacks only the centre ROI tile of each case (for a quick CPU run).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import AttackSettings  # noqa: E402
from attacks.seg_losses import APGD_LOSSES  # noqa: E402
from data.loading import build_dataset, plain_tensor  # noqa: E402
from engine import cli, flags  # noqa: E402
from engine.evaluation import load_trained_model  # noqa: E402
from training.losses import build_dice_ce  # noqa: E402
from engine.evaluation import worst_volume  # noqa: E402
from networks import predict_volume  # noqa: E402
from utils.metrics import class_mean, dice_per_class  # noqa: E402
from utils.io import write_json  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402

ATTACK_ROWS: Dict[str, Tuple[str, dict]] = {
    "pgd": ("pgd", {}),
    "segpgd": ("segpgd", {}),
    "cospgd": ("cospgd", {"norm": "linf"}),
    **{f"apgd-{loss}": ("apgd", {"loss": loss, "norm": "linf"}) for loss in APGD_LOSSES},
    "worst-case": ("worst-case", {"norm": "linf"}),
}
"""Row name -> (registry name, fixed option values)."""


def add_bench_args(parser) -> None:
    g = parser.add_argument_group("benchmark")
    g.add_argument("--pretrained_path", required=True, help="trained checkpoint (.pt)")
    g.add_argument("--eps", type=float, nargs="+", default=[4.0, 8.0], help="budgets on the [0,255] scale")
    g.add_argument("--steps", type=int, default=20, help="steps of every attack")
    g.add_argument("--alpha_fraction", type=float, default=0.25, help="PGD/SegPGD/CosPGD step size as a fraction of eps")
    g.add_argument("--attacks", nargs="+", default=list(ATTACK_ROWS), choices=list(ATTACK_ROWS), help="rows to run")
    g.add_argument("--max_cases", type=int, default=None, help="first N validation cases only")
    g.add_argument("--attack_batch_size", type=int, default=6, help="ROI tiles attacked together")
    g.add_argument("--device", default="cpu", help="torch device")
    g.add_argument("--seed", type=int, default=0, help="seed (each case: seed + its index)")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    g.add_argument("--crop", type=int, nargs=3, default=None, metavar=("H", "W", "D"),
                   help="attack and score only the centre crop of this size of each case (e.g. one ROI tile: "
                        "several times faster on a CPU)")
    g.add_argument("--json", default=None, metavar="PATH",
                   help="also write the figures to PATH (clean Dice, one row per attack and budget)")


def parse_args(argv: Optional[Sequence[str]] = None):
    return cli.parse(__doc__, argv, (flags.add_model_args, flags.add_data_args, add_bench_args), (cli.check_model_args,))


def centre_crop(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` of ``[1, C, H, W, D]`` (sides already smaller are kept whole)."""
    starts = [max(0, (s - c) // 2) for s, c in zip(volume.shape[2:], size)]
    return volume[(..., *(slice(a, a + c) for a, c in zip(starts, size)))]


def mean_dice(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> float:
    return 100 * class_mean(dice_per_class(pred, label, num_classes))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_settings, data, window = cli.model_settings(args), cli.data_settings(args), cli.window_settings(args)
    model = load_trained_model(model_settings, args.pretrained_path, device)
    loss_fn = build_dice_ce()
    items = data.items("validation")[: args.max_cases]
    cases = [build_dataset(data, "validation", "eval", items=[item])[0] for item in items]
    volumes = [(plain_tensor(c["image"]).unsqueeze(0).to(device), plain_tensor(c["label"]).unsqueeze(0).to(device))
               for c in cases]
    if args.crop:
        volumes = [(centre_crop(image, args.crop), centre_crop(label, args.crop)) for image, label in volumes]
    n = model_settings.out_channels
    with torch.no_grad():
        clean = [mean_dice(predict_volume(model, image, window), label, n) for image, label in volumes]
    print(f"{len(volumes)} validation case(s), shapes {[tuple(v[0].shape[2:]) for v in volumes]}; "
          f"clean Dice {sum(clean) / len(clean):.2f}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{device}", flush=True)

    rows: List[str] = []
    records: List[dict] = []
    for eps in args.eps:
        for row in args.attacks:
            name, fixed = ATTACK_ROWS[row]
            values = dict(eps=eps, steps=args.steps, alpha=args.alpha_fraction * eps / 255, targeted=False, **fixed)
            settings = AttackSettings(name=name, values={o.name: values.get(o.name, o.default)
                                                          for o in AttackSettings(name).attack_class.options},
                                      batch_size=args.attack_batch_size)
            attack = settings.build(model, loss_fn)
            dices, seconds = [], []
            for index, (image, label) in enumerate(volumes):
                seed_everything(args.seed + index)
                start = time.perf_counter()
                candidates: dict = {}  # an ensemble's members, compared again on the whole volume
                adv = settings.attack_volume(attack, image, label, model_settings.roi, candidates=candidates)
                if candidates:
                    adv, _ = worst_volume(model, window, {"per-tile": adv, **candidates}, settings.labels(label),
                                          settings.targeted, n)
                seconds.append(time.perf_counter() - start)
                with torch.no_grad():
                    dices.append(mean_dice(predict_volume(model, adv, window), label, n))
            line = (f"| {row} | {eps:g}/255 | {args.steps} | {sum(dices) / len(dices):.2f} | "
                    f"{sum(seconds) / len(seconds):.1f} |")
            rows.append(line)
            records.append({"attack": row, "eps": eps, "steps": args.steps, "dice": sum(dices) / len(dices),
                            "seconds": sum(seconds) / len(seconds)})
            print(line, flush=True)
    print()
    print(f"clean Dice {sum(clean) / len(clean):.2f} (mean over {len(volumes)} case(s))")
    print("| attack | eps | steps | adversarial Dice (%) | s / volume |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(args.json, {"clean_dice": sum(clean) / len(clean), "cases": len(volumes),
                               "shapes": [list(v[0].shape[2:]) for v in volumes], "steps": args.steps,
                               "crop": args.crop, "device": str(device), "threads": torch.get_num_threads(),
                               "units": "Dice in %, background included, mean over cases; seconds per volume "
                                        "(or crop), the attack only", "rows": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
