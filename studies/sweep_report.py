"""A sweep's outputs: ``tables.md`` in the paper's layout, ``sweep.csv``/``sweep.json``, plots, per-organ drops."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from studies import paper_tables
from studies.per_organ import organ_drop_rows, per_organ_markdown
from studies.sweep import Preset
from utils.io import read_json, write_bytes, write_csv, write_json
from utils.run_folder import RunLayout


def fmt(value, digits: int = 2) -> str:
    """A number as the tables print it (``–`` for missing)."""
    return "–" if value is None else f"{value:.{digits}f}"


def _clean_row(rows: Sequence[dict]) -> Optional[dict]:
    """The clean numbers (every cell of one model measures them; the first finished cell's)."""
    return next((r for r in rows if r.get("dice_clean") is not None), None)


def _similarity_name(rows: Sequence[dict]) -> str:
    return "LPIPS-sim" if any(r.get("lpips_similarity") is not None for r in rows) else "SSIM"


def attacks_table(preset: Preset, rows: Sequence[dict]) -> list[str]:
    """Tables 1 and 5: a row per attack, ours beside the paper's."""
    paper = preset.paper or {}
    lines = ["| attack | Dice ↓ ours | Dice ↓ paper | HD95 ↑ ours | HD95 ↑ paper | LPIPS-sim ↑ ours | LPIPS-sim ↑ paper "
             "| SSIM ↑ ours | voxel success % |",
             "|---|---|---|---|---|---|---|---|---|"]
    clean, clean_paper = _clean_row(rows), paper.get("clean", {})
    if clean is not None or clean_paper:
        lines.append(f"| clean | {fmt((clean or {}).get('dice_clean'))} | {fmt(clean_paper.get('dice'))} "
                     f"| {fmt((clean or {}).get('hd95_clean'))} | {fmt(clean_paper.get('hd95'))} | – | – | – | – |")
    for r in rows:
        lines.append(f"| {r['label']} | {fmt(r['dice_adv'])} | {fmt(r.get('paper_dice'))} | {fmt(r['hd95_adv'])} "
                     f"| {fmt(r.get('paper_hd95'))} | {fmt(r['lpips_similarity'])} | {fmt(r.get('paper_lpips'))} "
                     f"| {fmt(r['ssim'], 4)} | {fmt(r['success_rate'])} |")
    return lines


def curve_table(preset: Preset, rows: Sequence[dict]) -> list[str]:
    """Tables 2-4: a column per value of the swept setting, our rows and the paper's."""
    values = [r[f"param_{preset.param}"] for r in rows]
    paper = preset.paper or {}
    head = f"| {preset.param} | " + " | ".join(str(v) for v in values) + " |"
    lines = [head, "|---" * (len(values) + 1) + "|"]

    def line(name, key, digits=2, source=rows):
        return f"| {name} | " + " | ".join(fmt(r.get(key), digits) for r in source) + " |"

    papers = [{"paper_dice": paper.get(v, {}).get("dice"), "paper_lpips": paper.get(v, {}).get("lpips")} for v in values]
    lines += [line("Dice ↓ ours", "dice_adv"), line("Dice ↓ paper", "paper_dice", source=papers),
              line("LPIPS-sim ↑ ours", "lpips_similarity"), line("LPIPS-sim ↑ paper", "paper_lpips", source=papers),
              line("SSIM ↑ ours", "ssim", 4), line("HD95 ↑ ours", "hd95_adv"), line("voxel success % ours", "success_rate")]
    clean = _clean_row(rows)
    lines.append("")
    lines.append(f"Clean Dice: ours {fmt((clean or {}).get('dice_clean'))}, paper {fmt(paper_tables.CLEAN['dice'])}.")
    return lines


def models_table(preset: Preset, rows: Sequence[dict]) -> list[str]:
    """Table 6: a row per model, Dice clean and under each attack; the paper's models below."""
    columns = list(dict.fromkeys(r["label"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| model | clean | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for model in models:
        mine = {r["label"]: r for r in rows if r["model"] == model}
        clean = _clean_row(list(mine.values()))
        lines.append(f"| {model} | {fmt((clean or {}).get('dice_clean'))} | "
                     + " | ".join(fmt(mine.get(c, {}).get("dice_adv")) for c in columns) + " |")
    lines += ["", f"The paper's ({paper_tables.PAPER}, UNETR on Synapse):", "",
              "| model | clean | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for model, values in (preset.paper or {}).items():
        lines.append(f"| {model} | {fmt(values.get('clean'))} | " + " | ".join(fmt(values.get(c)) for c in columns) + " |")
    return lines


def grid_table(preset: Preset, rows: Sequence[dict]) -> list[str]:
    """A user's grid: a row per cell with its values, and a Dice pivot when two settings are swept."""
    params = [k for k in rows[0] if k.startswith("param_")] if rows else []
    if len({r["attack"] for r in rows}) > 1:  # attacks swept too: a column of their own
        params = ["attack"] + params
    names = {p: p[len("param_"):] if p.startswith("param_") else p for p in params}
    lines = ["| " + " | ".join(names[p] for p in params)
             + " | Dice clean | Dice ↓ adv | HD95 ↑ adv | LPIPS-sim ↑ | SSIM ↑ | voxel success % |",
             "|---" * (len(params) + 6) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[p]) for p in params)
                     + f" | {fmt(r['dice_clean'])} | {fmt(r['dice_adv'])} | {fmt(r['hd95_adv'])} "
                       f"| {fmt(r['lpips_similarity'])} | {fmt(r['ssim'], 4)} | {fmt(r['success_rate'])} |")
    if len(params) == 2:
        first, second = params
        cols = list(dict.fromkeys(r[second] for r in rows))
        lines += ["", f"Dice ↓ under attack, {names[first]} (rows) × {names[second]} (columns):", "",
                  f"| {names[first]} \\ {names[second]} | " + " | ".join(str(c) for c in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for value in dict.fromkeys(r[first] for r in rows):
            cells = {r[second]: r for r in rows if r[first] == value}
            lines.append(f"| {value} | " + " | ".join(fmt(cells.get(c, {}).get("dice_adv")) for c in cols) + " |")
    return lines


LAYOUTS = {"attacks": attacks_table, "curve": curve_table, "models": models_table, "grid": grid_table}


def tables_markdown(preset: Preset, rows: Sequence[dict], command: str = "") -> str:
    """``tables.md``: the preset's table, the paper's numbers beside ours, and notes."""
    lines = [f"## {preset.title}", ""]
    if preset.paper is not None:
        lines += [f"Paper: {paper_tables.PAPER} (Synapse, UNETR; 20 steps unless varied). "
                  "Dice and LPIPS similarity in %, HD95 in voxels; our numbers are means over the evaluated cases.", ""]
    lines += LAYOUTS[preset.layout](preset, rows)
    notes = [f"- {r['label']}: {r['note']}" for r in rows if r["status"] == "skipped"]
    notes += [f"- {r['label']}: not run yet (another shard, or --report_only)" for r in rows if r["status"] == "pending"]
    if rows and all(r.get("lpips_similarity") is None for r in rows if r["status"] in ("done", "reused")):
        notes.append("- LPIPS similarity not computed (AlexNet weights not cached); the plots use SSIM instead.")
    if notes:
        lines += ["", "Notes:", *notes]
    cases = {r["n_cases"] for r in rows if r.get("n_cases")}
    if cases:
        lines += ["", f"Cases per cell: {', '.join(str(c) for c in sorted(cases))}."]
    if command:
        lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def write_sweep_outputs(preset: Preset, rows: Sequence[dict], out: str, command: str = "") -> dict:
    """Write ``tables.md``, ``sweep.csv``, ``sweep.json``, ``per_organ.{md,csv}`` and the plots into ``out``.

    Returns:
        ``{name: path}`` of what was written.
    """
    from studies import charts

    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in ("tables.md", "sweep.csv", "sweep.json")}
    write_bytes(paths["tables.md"], tables_markdown(preset, rows, command).encode())
    write_csv(paths["sweep.csv"], rows)
    write_json(paths["sweep.json"], {"preset": preset.name, "title": preset.title, "layout": preset.layout,
                                     "param": preset.param, "command": command, "cells": list(rows)})
    finished = [r for r in rows if r["status"] in ("done", "reused")]
    if not finished:
        return paths
    similarity = _similarity_name(finished)
    if preset.param and preset.layout in ("curve", "grid"):
        paths["curve"] = charts.curve_plot(finished, preset.param, os.path.join(out, f"dice_vs_{preset.param}.png"),
                                           paper=preset.paper if preset.layout == "curve" else None,
                                           similarity=similarity)
    paths["tradeoff"] = charts.tradeoff_plot(finished, os.path.join(out, "dice_vs_similarity.png"), similarity)
    reports = {r["label"] if not r["model"] else f"{r['model']} {r['label']}": read_json(
        RunLayout(r["run_dir"]).results) for r in finished}
    drops = organ_drop_rows(reports)
    if drops:
        paths["per_organ.md"] = os.path.join(out, "per_organ.md")
        write_bytes(paths["per_organ.md"], per_organ_markdown(drops, list(reports)).encode())
        paths["per_organ.csv"] = os.path.join(out, "per_organ.csv")
        write_csv(paths["per_organ.csv"], drops)
        paths["per_organ.png"] = charts.organ_drop_plot(drops, list(reports), os.path.join(out, "per_organ.png"))
    return paths
