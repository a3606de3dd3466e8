"""What a run reports: per-case entries, means over cases, the CSV rows and the printed summary."""

from __future__ import annotations

from typing import Sequence

import numpy as np


DEFINITIONS = {
    "dice_clean, dice_adv": "Dice in %, per case the mean over classes with the background included (the paper's "
                            "release), classes absent from the label skipped; then the mean over cases",
    "dice_clean_fg, dice_adv_fg": "Dice in %, as above over the foreground classes only (as nnU-Net reports it)",
    "hd95_clean, hd95_adv": "95th-percentile Hausdorff distance in voxels of the resampled grid, per case the mean "
                            "over classes present in both label and prediction (the release's): a class missing "
                            "from the prediction is skipped, so erasing an organ does not raise it",
    "hd95_clean_worst, hd95_adv_worst": "as hd95_* but a class in the label and missing from the prediction counts "
                                        "as the volume's diagonal (the worst distance)",
    "success_rate": "% of voxels whose predicted class the attack changed",
    "lpips_similarity": "1 - LPIPS (AlexNet), in %",
}
"""What each reported number is: written into ``results.json`` next to the numbers."""


def summarise(per_case: dict[str, dict], class_names: Sequence[str]) -> dict:
    """Means over cases (each case already averaged over classes, as the paper reports)."""
    scalar_keys = [k for k, v in next(iter(per_case.values())).items() if isinstance(v, (int, float)) or v is None]
    overall: dict = {"n_cases": len(per_case)}
    for key in scalar_keys:
        values = [c[key] for c in per_case.values() if c.get(key) is not None]
        overall[key] = float(np.mean(values)) if values else None
    per_organ = {}
    for organ in class_names:
        entry = {}
        for key in ("dice_clean", "dice_adv", "hd95_clean", "hd95_adv"):
            values = [c["per_organ"][organ][key] for c in per_case.values()
                      if organ in c.get("per_organ", {}) and c["per_organ"][organ].get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
        per_organ[organ] = entry
    overall["per_organ"] = per_organ
    return overall


def case_rows(per_case: dict[str, dict]) -> list[dict]:
    rows = []
    for name, case in per_case.items():
        row = {"case": name}
        row.update({k: v for k, v in case.items() if not isinstance(v, (dict, list))})
        for organ, values in case.get("per_organ", {}).items():
            for key in ("dice_clean", "dice_adv"):
                row[f"{key}[{organ}]"] = values.get(key)
        rows.append(row)
    return rows


def format_summary(overall: dict, title: str, attack_lines: Sequence[str] = ()) -> str:
    """The printed summary of a run's means; ``attack_lines``: the attack's own
    (:meth:`attacks.base.Attack.summary_lines`)."""
    def fmt(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lpips_note = "" if overall.get("lpips_similarity") is not None else "  (AlexNet weights not cached)"
    lines = [
        f"== {title} ({overall['n_cases']} cases)",
        f"Mean Dice   clean {fmt(overall.get('dice_clean'))}  adv {fmt(overall.get('dice_adv'))}  (%, background "
        f"included as the release; foreground only: clean {fmt(overall.get('dice_clean_fg'))}  adv "
        f"{fmt(overall.get('dice_adv_fg'))})",
        f"Mean HD95   clean {fmt(overall.get('hd95_clean'))}  adv {fmt(overall.get('hd95_adv'))}  (voxels, missing "
        f"classes skipped as the release; counted as the worst distance: clean {fmt(overall.get('hd95_clean_worst'))}"
        f"  adv {fmt(overall.get('hd95_adv_worst'))})",
        f"Voxel attack success rate {fmt(overall.get('success_rate'))} %",
        f"SSIM {fmt(overall.get('ssim'), 4)}   PSNR {fmt(overall.get('psnr'))} dB   "
        f"LPIPS similarity {fmt(overall.get('lpips_similarity'))}{lpips_note}",
    ]
    return "\n".join([*lines, *attack_lines])


def report_case(metrics: dict, class_names: Sequence[str]) -> dict:
    """Per-case metrics as reported: Dice and success rate ×100, LPIPS similarity ×100."""
    def pct(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else 100.0 * float(x)

    def num(x):
        return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else float(x)

    case = {
        "dice_clean": pct(metrics["dice_clean_mean"]),
        "dice_adv": pct(metrics["dice_adv_mean"]),
        "dice_clean_fg": pct(metrics.get("dice_clean_fg_mean")),
        "dice_adv_fg": pct(metrics.get("dice_adv_fg_mean")),
        "hd95_clean": num(metrics["hd95_clean_mean"]),
        "hd95_adv": num(metrics["hd95_adv_mean"]),
        "hd95_clean_worst": num(metrics.get("hd95_clean_worst_mean")),
        "hd95_adv_worst": num(metrics.get("hd95_adv_worst_mean")),
        "success_rate": pct(metrics["success_rate"]),
        "ssim": num(metrics["ssim"]),
        "psnr": num(metrics["psnr"]),
        "lpips_similarity": pct(metrics.get("lpips_similarity")),
    }
    case["per_organ"] = {
        organ: {
            "dice_clean": pct(metrics["dice_clean"][i]),
            "dice_adv": pct(metrics["dice_adv"][i]),
            "hd95_clean": num(metrics["hd95_clean"][i]),
            "hd95_adv": num(metrics["hd95_adv"][i]),
        }
        for i, organ in enumerate(class_names)
    }
    return case
