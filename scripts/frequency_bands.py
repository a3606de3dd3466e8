#!/usr/bin/env python
"""Perturbation energy per 3D-DCT band (low/middle/high) of a saved generation run, and Dice with one band kept.

Example::

    python scripts/frequency_bands.py RUN_DIR --out RUN_DIR/bands --evaluate --device cpu

RUN_DIR is a folder written by generate_adv_samples.py (any attack; uint8 or float32
volumes). With --evaluate, the run's model (its recorded model and window flags, the
checkpoint of --pretrained_path or the run's) is re-run on the clean volume plus only the
low, middle or high band of the perturbation (and all bands, which gives back the saved
adversarial volume). Writes bands.json, bands.csv and bands.png into --out.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from studies.bands import MEASURES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__.split("Example::")
    parser = argparse.ArgumentParser(description=doc[0].strip(), epilog="Example::" + doc[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="generation run folder (results.json, images*Clean/, images*Adv/)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/frequency_bands)")
    parser.add_argument("--edges", nargs=2, type=float, default=(1 / 3, 2 / 3), metavar=("LOW_MID", "MID_HIGH"),
                        help="band edges on the normalised frequency measure, in (0, 1)")
    parser.add_argument("--measure", default="radius", choices=MEASURES,
                        help="radius: sqrt(mean_i (k_i/n_i)^2); index_sum: mean_i k_i/n_i")
    parser.add_argument("--evaluate", action="store_true", help="re-run the model with one band of the perturbation kept")
    parser.add_argument("--pretrained_path", default=None, help="checkpoint for --evaluate (default: the run's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--max_cases", default=None, type=int, help="only the first N cases")
    args = parser.parse_args(argv)
    if not 0 < args.edges[0] < args.edges[1] < 1:
        parser.error(f"--edges must satisfy 0 < LOW_MID < MID_HIGH < 1, got {tuple(args.edges)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from engine.jobs import run_driver
    from utils.logs import setup_logging

    setup_logging()
    return run_driver(analyse_and_write, args, "frequency_bands.py", unit="output")


def analyse_and_write(args: argparse.Namespace) -> None:
    """The analysis of ``args.run_dir`` into ``--out`` (a stop signal before the files are written
    leaves none; a rerun analyses again)."""
    from studies.bands import BANDS, analyse_run, band_rows
    from studies.charts import band_plot
    from utils.distributed import check_stop
    from utils.io import write_csv, write_json

    out = args.out or os.path.join(args.run_dir, "frequency_bands")
    os.makedirs(out, exist_ok=True)  # a read-only place fails now, before the analysis
    if not os.access(out, os.W_OK):
        raise PermissionError(13, "Permission denied", out)
    analysis = analyse_run(args.run_dir, args.edges, args.measure, args.evaluate, args.pretrained_path,
                           args.device, args.max_cases)
    check_stop()
    write_json(os.path.join(out, "bands.json"), analysis)
    write_csv(os.path.join(out, "bands.csv"), band_rows(analysis))
    overall = analysis["overall"]
    if overall["n_cases"]:
        dice = overall.get("dice")
        band_plot(list(BANDS), [overall["share"][b] or 0.0 for b in BANDS],
                  {k: dice[k] for k in (*BANDS, "all")} if dice else None, os.path.join(out, "bands.png"),
                  reference={"clean": dice["clean"], "adv (saved)": dice["adv"]} if dice else None)
        print(f"{overall['n_cases']} case(s); energy share " +
              ", ".join(f"{b} {100 * (overall['share'][b] or 0):.1f}%" for b in BANDS))
        if dice:
            print("Dice % " + ", ".join(f"{k} {v:.2f}" for k, v in dice.items()))
    print(f"written: {out}/bands.json, bands.csv, bands.png")


if __name__ == "__main__":
    sys.exit(main())
