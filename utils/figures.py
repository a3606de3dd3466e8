"""Per-case figure in the style of the paper's Fig. 2.

One PNG, two rows of three panels on one axial slice:

    clean image        | adversarial image     | perturbation |x' - x| (amplified)
    ground truth       | clean prediction      | adversarial prediction

The label maps are organ-colour overlays on the clean slice, with a legend of the
organs present in any of them. Slices are shown in radiological convention for
RAS arrays (what ``data.loading`` produces): the patient's right on the viewer's left,
anterior at the top.

matplotlib is imported on first use, through the object-oriented API with the Agg
canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

__all__ = ["ORGAN_COLOURS", "select_slice", "to_display", "save_case_figure"]

#: One RGB colour per Synapse class (index = label); background is never drawn.
ORGAN_COLOURS = (
    (0.00, 0.00, 0.00),  # 0 background
    (0.86, 0.08, 0.24),  # 1 spleen: crimson
    (0.13, 0.70, 0.13),  # 2 right kidney: green
    (0.00, 0.75, 1.00),  # 3 left kidney: sky blue
    (1.00, 0.84, 0.00),  # 4 gallbladder: gold
    (0.58, 0.00, 0.83),  # 5 esophagus: violet
    (1.00, 0.50, 0.05),  # 6 liver: orange
    (0.25, 0.41, 0.88),  # 7 stomach: royal blue
    (1.00, 0.08, 0.58),  # 8 aorta: deep pink
    (0.00, 0.50, 0.50),  # 9 inferior vena cava: teal
    (0.60, 0.60, 0.00),  # 10 portal and splenic veins: olive
    (0.60, 0.98, 0.60),  # 11 pancreas: pale green
    (0.55, 0.27, 0.07),  # 12 right adrenal gland: brown
    (1.00, 0.71, 0.76),  # 13 left adrenal gland: pink
)


def _as_volume(x, what: str) -> np.ndarray:
    """``[H, W, D]`` numpy array from an array or tensor, leading singleton axes dropped."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    while x.ndim > 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"{what} must be a volume [H, W, D] (leading size-1 axes allowed), got shape {x.shape}")
    return x


def select_slice(label) -> int:
    """Index along D of the axial slice with the most foreground (label > 0) voxels.

    Args:
        label: ``[H, W, D]`` label map (array or tensor).

    Returns:
        The first slice with the largest foreground count (the middle slice when the
        label is all background).
    """
    label = _as_volume(label, "label")
    counts = (label > 0).sum(axis=(0, 1))
    if counts.max() == 0:
        return label.shape[2] // 2
    return int(np.argmax(counts))


def to_display(slice_hw: np.ndarray) -> np.ndarray:
    """An axial RAS slice ``[H, W]`` as a radiological image ``[W, H]``:
    rows run anterior to posterior, columns patient's right to left."""
    return slice_hw[::-1, ::-1].T


def _colours(n: int) -> np.ndarray:
    """RGBA colours for ``n`` classes: the organ palette, then a cycled fallback."""
    from matplotlib import colormaps

    base = [(*c, 1.0) for c in ORGAN_COLOURS]
    extra = colormaps["tab20"]
    while len(base) < n:
        base.append(tuple(extra(len(base) % 20)))
    rgba = np.asarray(base[:n], dtype=float)
    rgba[0, 3] = 0.0  # background transparent
    return rgba


def save_case_figure(
    path: str,
    image_clean,
    image_adv,
    label,
    pred_clean,
    pred_adv,
    class_names: Sequence[str],
    slice_index: int | None = None,
    title: str | None = None,
    dice_clean: float | None = None,
    dice_adv: float | None = None,
    alpha: float = 0.5,
    dpi: int = 100,
) -> int:
    """Write the Fig.-2-style PNG of one case.

    Args:
        path: output ``.png`` (parent folders are created).
        image_clean: clean image ``[H, W, D]`` (array or tensor; ``[1, 1, H, W, D]`` accepted).
        image_adv: adversarial image, same shape.
        label: ground-truth labels, same shape.
        pred_clean: predicted labels on the clean image, same shape.
        pred_adv: predicted labels on the adversarial image, same shape.
        class_names: organ names by label value (background first).
        slice_index: axial slice to draw; default: :func:`select_slice` of ``label``.
        title: figure title (e.g. case name and attack).
        dice_clean: mean Dice (%) of the clean prediction, shown in its panel title.
        dice_adv: mean Dice (%) of the adversarial prediction.
        alpha: opacity of the organ overlays.
        dpi: resolution of the PNG.

    Returns:
        The slice index drawn.

    Raises:
        ValueError: the volumes differ in shape, or ``slice_index`` is out of range.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    volumes = {
        "image_clean": _as_volume(image_clean, "image_clean"),
        "image_adv": _as_volume(image_adv, "image_adv"),
        "label": _as_volume(label, "label"),
        "pred_clean": _as_volume(pred_clean, "pred_clean"),
        "pred_adv": _as_volume(pred_adv, "pred_adv"),
    }
    shapes = {k: v.shape for k, v in volumes.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all volumes must have the same shape [H, W, D], got {shapes}")
    depth = volumes["label"].shape[2]
    k = select_slice(volumes["label"]) if slice_index is None else int(slice_index)
    if not 0 <= k < depth:
        raise ValueError(f"slice_index must be in 0..{depth - 1}, got {slice_index}")

    s = {name: to_display(v[:, :, k]) for name, v in volumes.items()}
    clean, adv = s["image_clean"].astype(np.float64), s["image_adv"].astype(np.float64)
    vmin, vmax = float(min(clean.min(), adv.min())), float(max(clean.max(), adv.max()))
    if vmax <= vmin:
        vmax = vmin + 1.0
    delta = np.abs(adv - clean)
    peak = float(delta.max())
    maps = {key: np.rint(s[key]).astype(np.int64) for key in ("label", "pred_clean", "pred_adv")}
    n_classes = max(len(class_names), max(int(m.max()) for m in maps.values()) + 1)
    rgba = _colours(n_classes)

    fig = Figure(figsize=(12, 8.6), dpi=dpi)
    axes = fig.subplots(2, 3)
    for ax in axes.flat:
        ax.set_axis_off()

    axes[0, 0].imshow(clean, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    axes[0, 0].set_title("Clean image")
    axes[0, 1].imshow(adv, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    axes[0, 1].set_title("Adversarial image")
    if peak > 0:
        axes[0, 2].imshow(delta / peak, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[0, 2].set_title(f"Perturbation |x' - x| × {1.0 / peak:.3g}")
    else:
        axes[0, 2].imshow(delta, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[0, 2].set_title("Perturbation (none)")

    def score(name, dice):
        return name if dice is None else f"{name} (Dice {dice:.1f})"

    panels = (
        ("label", "Ground truth"),
        ("pred_clean", score("Clean prediction", dice_clean)),
        ("pred_adv", score("Adversarial prediction", dice_adv)),
    )
    for ax, (key, panel_title) in zip(axes[1], panels):
        ax.imshow(clean, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        overlay = rgba[np.clip(maps[key], 0, n_classes - 1)]
        overlay[..., 3] *= alpha
        ax.imshow(overlay, interpolation="nearest")
        ax.set_title(panel_title)

    present = sorted(set().union(*(np.unique(m).tolist() for m in maps.values())) - {0})
    handles = [
        Patch(facecolor=rgba[c, :3], label=class_names[c] if c < len(class_names) else f"class {c}") for c in present
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False)
    fig.suptitle(f"{title}  (axial slice {k})" if title else f"axial slice {k}")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.12, wspace=0.05, hspace=0.15)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format="png")
    return k
