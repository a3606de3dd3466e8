"""Per-organ robustness: how much each organ's Dice falls under attack, from runs' ``results.json``."""

from __future__ import annotations

from typing import Mapping, Sequence


def organ_drop_rows(reports: Mapping[str, dict], skip: Sequence[str] = ("background",)) -> list[dict]:
    """One row per organ: its clean and adversarial Dice and the drop in every run, hardest hit first.

    Args:
        reports: ``{run label: results.json content}``; ``overall.per_organ`` holds the
            organs' mean Dice over cases (clean and adversarial, in %).
        skip: organs left out (the background class by default).

    Returns:
        Rows ``{"organ", "drop[<label>]", "dice_clean[<label>]", "dice_adv[<label>]", ..., "mean_drop"}``
        sorted by ``mean_drop`` (the mean over runs of clean minus adversarial Dice), largest first;
        organs absent from every run's ground truth are left out.
    """
    organs: dict[str, dict] = {}
    for label, report in reports.items():
        for organ, values in (report.get("overall", {}).get("per_organ") or {}).items():
            if organ in skip:
                continue
            clean, adv = values.get("dice_clean"), values.get("dice_adv")
            row = organs.setdefault(organ, {"organ": organ})
            row[f"dice_clean[{label}]"] = clean
            row[f"dice_adv[{label}]"] = adv
            row[f"drop[{label}]"] = None if clean is None or adv is None else clean - adv
    rows = []
    for row in organs.values():
        drops = [row.get(f"drop[{label}]") for label in reports]
        drops = [d for d in drops if d is not None]
        if drops:
            row["mean_drop"] = sum(drops) / len(drops)
            rows.append(row)
    return sorted(rows, key=lambda r: -r["mean_drop"])


def per_organ_markdown(rows: Sequence[dict], labels: Sequence[str]) -> str:
    """The per-organ Dice-drop table (percentage points, hardest-hit organ first)."""
    def fmt(value):
        return "–" if value is None else f"{value:.2f}"

    lines = ["## Per-organ Dice drop (clean − adversarial, % points; hardest hit first)", "",
             "| organ | " + " | ".join(labels) + " | mean |", "|---" * (len(labels) + 2) + "|"]
    for row in rows:
        lines.append(f"| {row['organ']} | " + " | ".join(fmt(row.get(f"drop[{label}]")) for label in labels)
                     + f" | {fmt(row['mean_drop'])} |")
    return "\n".join(lines) + "\n"
