"""Clean Dice and Dice under attack of an nnU-Net model, with and without mirroring (README table).

Runs ``generate_adv_samples.py --model_name nnunet --dataset nnunet`` once per attack and ``--tta`` value on
the fold's validation cases and prints a markdown table of the mean Dice (foreground classes, %).

    python scripts/nnunet_attack_table.py --model MODEL_DIR --raw RAW_DIR --out runs/nnunet_table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ATTACKS = {
    "PGD (ε 4/255)": ["--attack_name", "pgd", "--eps", "4"],
    "VAFA-3D slice (q_max 20)": ["--attack_name", "vafa-3d", "--q_max", "20", "--block_size", "8", "8", "8",
                                 "--vafa_normalise", "slice"],
    "VAFA-3D clip (q_max 20)": ["--attack_name", "vafa-3d", "--q_max", "20", "--block_size", "8", "8", "8",
                                "--vafa_normalise", "clip"],
    "APGD (ε 4/255)": ["--attack_name", "apgd", "--eps", "4"],
}


def main(argv: Sequence[str] | None = None) -> int:
    import generate_adv_samples as gen

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="nnU-Net trained-model folder")
    parser.add_argument("--raw", required=True, help="nnU-Net raw dataset folder")
    parser.add_argument("--out", required=True, help="parent of the run folders")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--steps", default="10", help="attack steps of every attack")
    parser.add_argument("--max_cases", default=None, help="only the first N validation cases")
    args = parser.parse_args(argv)
    rows = {}
    for tta in ("none", "mirror"):
        for name, flags in ATTACKS.items():
            run_dir = os.path.join(args.out, tta, flags[1] + ("_" + flags[-1] if "vafa" in flags[1] else ""))
            flags = flags + ["--steps", args.steps] + (["--max_cases", args.max_cases] if args.max_cases else [])
            argv_run = ["--model_name", "nnunet", "--nnunet_model_dir", args.model, "--nnunet_fold", args.fold,
                        "--dataset", "nnunet", "--data_dir", args.raw, "--tta", tta, *flags,
                        "--save_adv_images_dir", run_dir, "--no_sub_dir_adv_images", "--workers", "0"]
            if gen.main(argv_run) != 0:
                raise SystemExit(f"failed: {' '.join(argv_run)}")
            with open(os.path.join(run_dir, "results.json")) as f:
                overall = json.load(f)["overall"]
            rows.setdefault(tta, {"clean": overall["dice_clean"]})[name] = overall["dice_adv"]
    names = list(ATTACKS)
    print("| --tta | clean | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for tta, row in rows.items():
        print(f"| {tta} | {row['clean']:.1f} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
