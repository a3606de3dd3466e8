#!/usr/bin/env python
"""Run the paper's tables (or a grid of attack settings) as generation runs, then tables and plots.

Examples::

    python scripts/sweep.py --preset table2 --out sweep_t2 --steps 5 --max_cases 2 \\
        --data_dir DATA --json_list dataset.json --pretrained_path MODEL.pt [model flags]
    python scripts/sweep.py --grid q_max=10,20,40 --grid steps=10,20 --out my_sweep [data/model flags]
    python scripts/sweep.py --preset table6 --models M_PGD=pgd.pt M_VAFT=vaft.pt --out t6 [data/model flags]

Every flag not listed below goes to each cell's ``generate_adv_samples.py`` run (see its
--help): data, model and runtime flags, and overrides of the preset's attack settings such
as --steps or --max_cases; the swept values win over overrides. Each cell runs into
OUT/runs/<cell>/<attack folder>; a rerun reuses finished cells (and finished cases) made from
the same checkpoint content, so a killed sweep resumes; SIGTERM/SIGUSR1 stop it at a safe point
with exit status 128 + signal and no table. OUT gets tables.md (ours beside the paper's published numbers for the
table presets), sweep.csv, sweep.json, dice_vs_<setting>.png, dice_vs_similarity.png and
the per-organ Dice drop (per_organ.md/.csv/.png).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import ATTACKS  # noqa: E402
from studies.sweep import PRESETS, RESERVED_FLAGS, SweepSettings, build_preset  # noqa: E402


def parse_args(argv=None):
    """``(sweep flags, the flags passed on to every cell)``."""
    doc = __doc__.split("Examples::")
    parser = argparse.ArgumentParser(description=doc[0].strip(), epilog="Examples::" + doc[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--preset", choices=tuple(PRESETS), help="one of the paper's tables")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a swept attack flag (repeat for a product); key 'attack' sweeps attacks, "
                             "block_size takes 8 or 8x8x4")
    parser.add_argument("--attack", default="vafa-3d", choices=tuple(ATTACKS), help="the grid's attack")
    parser.add_argument("--models", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                        help="table6: the (robust) checkpoints to attack")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="run only cells K, K+N, K+2N, ... (several processes or nodes share a sweep)")
    parser.add_argument("--report_only", action="store_true", help="run nothing: collect finished cells into the outputs")
    args, passed = parser.parse_known_args(argv)
    for token in passed:
        name = token.split("=")[0]
        if name.startswith("--") and any(flag.startswith(name) for flag in RESERVED_FLAGS + ("--attack_name",)):
            parser.error(f"{name} is set by the sweep (each cell's run folder / attack); "
                         "use --out, and --preset/--grid/--attack to choose attacks")
    try:
        index, count = (int(x) for x in args.shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        parser.error(f"--shard takes K/N with 0 <= K < N, got {args.shard!r}")
    args.shard = (index, count)
    models = []
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--models takes NAME=CHECKPOINT, got {spec!r}")
        models.append((name, path))
    args.models = models
    return args, passed


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, passed = parse_args(argv)
    from engine.jobs import run_driver
    from utils.logs import setup_logging
    from studies.sweep import run_sweep
    from studies.sweep_report import tables_markdown, write_sweep_outputs
    from utils.distributed import check_stop

    setup_logging()

    def body(args) -> None:
        preset = build_preset(args.preset, args.grid, args.attack, args.models)
        settings = SweepSettings(preset=preset, overrides=tuple(passed), out=args.out, shard=args.shard,
                                 report_only=args.report_only)
        rows = run_sweep(settings)
        check_stop()  # stopped after the last cell: no table (a rerun reuses every cell and prints it)
        command = "python scripts/sweep.py " + shlex.join(argv)
        paths = write_sweep_outputs(preset, rows, args.out, command)
        print(tables_markdown(preset, rows), flush=True)
        print("written: " + ", ".join(sorted(paths.values())), flush=True)

    return run_driver(body, args, "sweep.py")


if __name__ == "__main__":
    sys.exit(main())
