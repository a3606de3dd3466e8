#!/usr/bin/env python
"""Transfer matrix: evaluate every target model on every surrogate's saved adversarial volumes.

Attack each surrogate first with generate_adv_samples.py (its run folder holds the volumes), then:

    python scripts/transfer_matrix.py --out_dir transfer \\
        --model unetr runs/unetr/model_best.pt "--model_name unet-r --feature_size 8 --hidden_size 96 \\
                --mlp_dim 192 --num_heads 4 --roi_x 48 --roi_y 48 --roi_z 32" \\
        --model unet runs/unet/model_best.pt "--model_name unet --roi_x 48 --roi_y 48 --roi_z 32" \\
        --adv unetr adv/unetr/pgd_eps_4.0 --adv unet adv/unet/pgd_eps_4.0 \\
        --data_dir data --json_list dataset.json --device cpu

Rows are the surrogates (models with --adv), columns every --model. Each cell runs the evaluation path
of inference_on_saved_adv_samples.py into <out_dir>/cells/<surrogate>__on__<target>/; a rerun reuses a
finished cell only when its flags and its checkpoint's content are unchanged (else it is refused in one
line; --overwrite recomputes). SIGTERM/SIGUSR1 stop it between cells or at a cell's safe point (exit
128 + signal); the same command continues. Writes transfer.json, transfer.csv and transfer.png (heatmap) to --out_dir.

Any flag not listed below (data: --data_dir, --json_list, --dataset, --space_*, --a_min/--a_max;
inference: --infer_overlap, --sw_batch_size, --max_cases, --gen_train_adv_mode; runtime: --device,
--workers, --seed) is passed to every cell; use the data flags of the generation runs. The attack
flags of each cell are read from the surrogate folder's args.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.cli import ArgumentParser  # noqa: E402
from engine.jobs import run_driver  # noqa: E402
from utils.logs import setup_logging  # noqa: E402
from studies.transfer import TransferJob, TransferModel, format_matrix, run_transfer  # noqa: E402

PROG = "transfer_matrix.py"


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, and the rest (passed to every cell)."""
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            allow_abbrev=False)
    parser.add_argument("--model", nargs=3, action="append", required=True, metavar=("LABEL", "CHECKPOINT", "FLAGS"),
                        help="a model: its label, its checkpoint and its model flags as one quoted string "
                             "(--model_name, its options, --roi_*; \"\" for the defaults); repeat per model")
    parser.add_argument("--adv", nargs=2, action="append", default=[], metavar=("LABEL", "FOLDER"),
                        help="the generate_adv_samples.py run folder of the model LABEL attacked white-box "
                             "(makes it a surrogate, a row); repeat per surrogate")
    parser.add_argument("--out_dir", required=True, help="where cells/, transfer.json, transfer.csv, transfer.png go")
    parser.add_argument("--overwrite", action="store_true", help="evaluate every cell afresh")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args, rest = parser.parse_known_args(argv)
    labels = [label for label, _, _ in args.model]
    for label, _ in args.adv:
        if label not in labels:
            parser.error(f"--adv names {label!r}, which no --model declares (models: {', '.join(labels)})")
    for flag in ("--pretrained_path", "--adv_images_dir", "--results_dir", "--model_name"):
        if any(item == flag or item.startswith(flag + "=") for item in rest):
            parser.error(f"{flag} is set per model/cell by this script; give model flags inside --model's FLAGS")
    return args, rest


def transfer_job(args: argparse.Namespace, rest: list[str]) -> TransferJob:
    adv = dict(args.adv)
    models = tuple(TransferModel(label=label, checkpoint=checkpoint, flags=tuple(shlex.split(flags)),
                                 adv_folder=adv.get(label)) for label, checkpoint, flags in args.model)
    return TransferJob(models=models, out_dir=args.out_dir, common_flags=tuple(rest), overwrite=args.overwrite)


def main(argv=None) -> int:
    args, rest = parse_args(argv)
    setup_logging(None, args.verbose)

    def body(job: TransferJob) -> None:
        report = run_transfer(job)
        print(format_matrix(report, "dice_adv"))
        print(format_matrix(report, "drop"), flush=True)

    return run_driver(body, transfer_job(args, rest), PROG)


if __name__ == "__main__":
    sys.exit(main())
