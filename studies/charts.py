"""Charts of sweeps and analyses (matplotlib, Agg backend; each written atomically as PNG)."""

from __future__ import annotations

import io
from typing import Mapping, Optional, Sequence

from utils.io import write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _similarity(row: Mapping, name: str) -> Optional[float]:
    if name == "LPIPS-sim":
        return row.get("lpips_similarity")
    return None if row.get("ssim") is None else 100.0 * row["ssim"]


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def curve_plot(rows: Sequence[Mapping], param: str, path: str, paper: Optional[Mapping] = None,
               similarity: str = "SSIM") -> str:
    """Dice (left) and perceptual similarity (right) against the swept setting ``param``.

    Rows that share every other swept value form one line; the paper's published curve is dashed.
    """
    plt = _pyplot()
    fig, (ax_dice, ax_sim) = plt.subplots(1, 2, figsize=(9, 3.4))
    key = f"param_{param}"
    others = [k for k in rows[0] if k.startswith("param_") and k != key]
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple((k[6:], row[k]) for k in others), []).append(row)
    for group, members in groups.items():
        members = [m for m in members if _number(m[key]) is not None]
        members.sort(key=lambda m: _number(m[key]))
        xs = [_number(m[key]) for m in members]
        name = ", ".join(f"{k}={v}" for k, v in group) or "ours"
        ax_dice.plot(xs, [m["dice_adv"] for m in members], "o-", label=name)
        ax_sim.plot(xs, [_similarity(m, similarity) for m in members], "o-", label=name)
    if paper:
        xs = sorted(paper)
        ax_dice.plot(xs, [paper[x]["dice"] for x in xs], "s--", color="grey", label="paper")
        # the paper reports LPIPS similarity: beside our SSIM it gets its own axis, never SSIM's scale
        ax_paper = ax_sim if similarity == "LPIPS-sim" else ax_sim.twinx()
        ax_paper.plot(xs, [paper[x].get("lpips") for x in xs], "s--", color="grey", label="paper (LPIPS-sim)")
        if ax_paper is not ax_sim:
            ax_paper.set_ylabel("paper: LPIPS-sim (%)", color="grey")
            ax_paper.legend(fontsize=7, loc="lower right")
    clean = next((r["dice_clean"] for r in rows if r.get("dice_clean") is not None), None)
    if clean is not None:
        ax_dice.axhline(clean, color="green", lw=0.8, ls=":", label="clean (ours)")
    ax_dice.set(xlabel=param, ylabel="Dice under attack (%)", title=f"Dice vs {param}")
    ax_sim.set(xlabel=param, ylabel=f"{similarity} (%)", title=f"{similarity} vs {param}")
    for ax in (ax_dice, ax_sim):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def tradeoff_plot(rows: Sequence[Mapping], path: str, similarity: str = "SSIM") -> str:
    """Dice under attack against perceptual similarity, every cell on one chart (one colour per attack)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    colours = plt.get_cmap("tab10")
    for i, attack in enumerate(attacks):
        members = [r for r in rows if r["attack"] == attack and _similarity(r, similarity) is not None]
        ax.scatter([_similarity(r, similarity) for r in members], [r["dice_adv"] for r in members],
                   color=colours(i % 10), label=attack)
        for r in members:
            ax.annotate(r["label"] if not r.get("model") else f"{r['model']} {r['label']}",
                        (_similarity(r, similarity), r["dice_adv"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    clean = next((r["dice_clean"] for r in rows if r.get("dice_clean") is not None), None)
    if clean is not None:
        ax.axhline(clean, color="green", lw=0.8, ls=":", label="clean Dice")
    ax.set(xlabel=f"{similarity} (%) — higher is less visible", ylabel="Dice under attack (%) — lower is stronger",
           title="Attack strength vs imperceptibility")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def organ_drop_plot(rows: Sequence[Mapping], labels: Sequence[str], path: str) -> str:
    """Per-organ Dice drop (horizontal bars, hardest-hit organ on top), one bar per run."""
    import numpy as np

    plt = _pyplot()
    organs = [r["organ"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(organs) * max(1, len(labels)) ** 0.5 + 1.2))
    height = 0.8 / max(1, len(labels))
    ys = np.arange(len(organs))[::-1]
    for i, label in enumerate(labels):
        values = [r.get(f"drop[{label}]") or 0.0 for r in rows]
        ax.barh(ys - (i - (len(labels) - 1) / 2) * height, values, height=height, label=label)
    ax.set_yticks(ys)
    ax.set_yticklabels(organs, fontsize=7)
    ax.axvline(0, color="black", lw=0.6)
    ax.set(xlabel="Dice drop, clean − adversarial (% points)", title="Per-organ Dice drop")
    ax.legend(fontsize=6)
    return _save(fig, path)


def band_plot(bands: Sequence[str], energy_share: Sequence[float], dice: Optional[Mapping[str, float]], path: str,
              reference: Optional[Mapping[str, float]] = None) -> str:
    """Share of perturbation energy per DCT band and, when re-evaluated, Dice with only that band kept."""
    plt = _pyplot()
    panels = 2 if dice else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2))
    axes = [axes] if panels == 1 else list(axes)
    axes[0].bar(bands, [100.0 * s for s in energy_share], color="tab:blue")
    axes[0].set(ylabel="share of perturbation energy (%)", title="Energy per 3D-DCT band")
    if dice:
        names = list(dice)
        axes[1].bar(names, [dice[n] for n in names], color="tab:red")
        for name, value in (reference or {}).items():
            if value is not None:
                axes[1].axhline(value, ls=":", lw=0.8, color="green" if name == "clean" else "black", label=name)
        axes[1].set(ylabel="Dice (%)", title="Dice with one band of the perturbation kept")
        if reference:
            axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def robustness_plot(rows: Sequence[Mapping], path: str) -> str:
    """Table 6 as a figure: Dice of each model clean and under each attack (left, a dot per model), and each model's clean Dice
    against its Dice under each VAFA column and its worst over every attack (right).

    Args:
        rows: a row per (model, attack) cell with ``model``, ``label``, ``attack``, ``dice_clean``, ``dice_adv``.
        path: the PNG to write.
    """
    import numpy as np

    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    columns = ["clean"] + list(dict.fromkeys(r["label"] for r in rows))
    dice = {m: {"clean": next((r["dice_clean"] for r in rows if r["model"] == m and r.get("dice_clean") is not None),
                              None)} for m in models}
    for r in rows:
        dice[r["model"]][r["label"]] = r.get("dice_adv")
    fig, (ax_bars, ax_trade) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    colours = plt.get_cmap("tab10")
    xs = np.arange(len(columns))
    offset = 0.6 / max(1, len(models))
    for i, model in enumerate(models):  # a dot per model and column: differences of a point stay visible
        values = [dice[model].get(c) for c in columns]
        ax_bars.plot(xs + (i - (len(models) - 1) / 2) * offset, [np.nan if v is None else v for v in values],
                     "o-", lw=0.8, ms=5, color=colours(i % 10), label=model)
    ax_bars.set_xticks(xs)
    ax_bars.set_xticklabels(columns, fontsize=8)
    ax_bars.set(ylabel="Dice (%)", title="Dice of each model, clean and under each attack")
    ax_bars.grid(alpha=0.3, axis="y")
    ax_bars.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    vafa = [c for c in columns if c.startswith("VAFA")]
    markers = dict(zip(vafa, ("o", "^", "s", "D")))
    for i, model in enumerate(models):
        clean = dice[model]["clean"]
        if clean is None:
            continue
        for column in vafa:
            if dice[model].get(column) is not None:
                ax_trade.scatter(clean, dice[model][column], color=colours(i % 10), marker=markers[column])
        attacked = [v for c, v in dice[model].items() if c != "clean" and v is not None]
        if attacked:
            ax_trade.scatter(clean, min(attacked), color=colours(i % 10), marker="x")
            ax_trade.annotate(model, (clean, min(attacked)), fontsize=6, xytext=(3, -8), textcoords="offset points")
    for column, marker in [*markers.items(), ("worst attack", "x")]:  # the shapes' legend, in grey
        ax_trade.scatter([], [], color="grey", marker=marker, label=column)
    ax_trade.set(xlabel="clean Dice (%)", ylabel="Dice under attack (%)", title="Clean vs robust Dice")
    ax_trade.grid(alpha=0.3)
    ax_trade.legend(fontsize=7)
    return _save(fig, path)
