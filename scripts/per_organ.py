#!/usr/bin/env python
"""Per-organ Dice drop (clean minus adversarial) of one or more evaluation runs: table and chart.

Example::

    python scripts/per_organ.py RUN_A RUN_B --out organs

Each RUN is a folder with results.json (generate_adv_samples.py or
inference_on_saved_adv_samples.py). Organs are sorted by their mean drop over the runs,
hardest hit first. Writes per_organ.md, per_organ.csv and per_organ.png into --out.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__.split("Example::")
    parser = argparse.ArgumentParser(description=doc[0].strip(), epilog="Example::" + doc[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run folders holding results.json")
    parser.add_argument("--out", default=".", help="output folder")
    parser.add_argument("--keep_background", action="store_true", help="also list the background class")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from studies.charts import organ_drop_plot
    from studies.per_organ import organ_drop_rows, per_organ_markdown
    from utils.io import read_json, write_bytes, write_csv
    from utils.run_folder import RunLayout

    reports = {}
    for run_dir in args.run_dirs:
        path = RunLayout(run_dir).results
        if not os.path.exists(path):
            sys.stderr.write(f"per_organ.py: error: no results.json in {run_dir}\n")
            return 2
        label = os.path.basename(os.path.normpath(run_dir))
        reports[label if label not in reports else run_dir] = read_json(path)
    rows = organ_drop_rows(reports, skip=() if args.keep_background else ("background",))
    os.makedirs(args.out, exist_ok=True)
    table = per_organ_markdown(rows, list(reports))
    write_bytes(os.path.join(args.out, "per_organ.md"), table.encode())
    write_csv(os.path.join(args.out, "per_organ.csv"), rows)
    if rows:
        organ_drop_plot(rows, list(reports), os.path.join(args.out, "per_organ.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
