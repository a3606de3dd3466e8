"""Whole-volume attack: cut a volume into ROI tiles, attack them in batches, stitch them back."""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch
from monai.data.utils import dense_patch_slices

from utils.progress import progress as progress_bar


def tile_slices(spatial_shape: Sequence[int], roi: Sequence[int]) -> list[tuple[slice, ...]]:
    """Non-overlapping ROI tiles covering a volume, as the release tiles it.

    ``dense_patch_slices`` with ``scan_interval = roi``: tiles in row-major order of the
    tile grid; where a side is not a multiple of the ROI the last tile is moved back to
    end at the border (it overlaps its neighbour and, written last, wins). Sides smaller
    than the ROI must be padded first (see :func:`attack_volume`).
    """
    return list(dense_patch_slices(tuple(spatial_shape), tuple(roi), tuple(roi)))


def attack_volume(
    image: torch.Tensor,
    label: torch.Tensor,
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    roi: Sequence[int],
    batch_size: int = 6,
    progress: bool = True,
    candidates: Optional[dict] = None,
    offered: Optional[Callable[[], Optional[Mapping]]] = None,
) -> torch.Tensor:
    """Attack a whole volume in ROI tiles and stitch the adversarial tiles back.

    Args:
        image: ``[1, C, H, W, D]`` in [0, 1].
        label: ``[1, 1, H, W, D]`` labels the attack uses (true or target labels).
        attack: ``attack(images [N,C,*roi], labels [N,1,*roi]) -> adv [N,C,*roi]``.
        roi: tile size ``(rx, ry, rz)``.
        batch_size: tiles attacked together (the release: 6).
        progress: show a progress bar over the tile batches.
        candidates: when given with ``offered``, a dict filled with the other whole-volume
            results the attack offers (``offered()`` after each batch, e.g. an ensemble's
            ``call_candidates``, stitched the same way): ``{name: [1, C, H, W, D]}``.
        offered: what the attack offers after each call.

    Returns:
        ``[1, C, H, W, D]`` adversarial volume.
    """
    if image.shape[0] != 1:
        raise ValueError(f"attack_volume takes one volume [1, C, H, W, D], got shape {tuple(image.shape)}")
    spatial = tuple(image.shape[2:])
    padded = tuple(max(s, r) for s, r in zip(spatial, roi))
    if padded != spatial:
        # sides smaller than the ROI: pad at the end (image with 0, label with background)
        pad = [p for s, q in zip(reversed(spatial), reversed(padded)) for p in (0, q - s)]
        image = torch.nn.functional.pad(image, pad)
        label = torch.nn.functional.pad(label, pad)
    slices = tile_slices(padded, roi)
    adv = image.clone()
    starts = range(0, len(slices), batch_size)
    for start in progress_bar(starts, enabled=progress, desc="tiles", leave=False, unit="batch"):
        chunk = slices[start : start + batch_size]
        tiles = torch.cat([image[(..., *s)] for s in chunk])  # [N, C, *roi]
        tile_labels = torch.cat([label[(..., *s)] for s in chunk])  # [N, 1, *roi]
        adv_tiles = attack(tiles, tile_labels)  # [N, C, *roi]
        for s, tile in zip(chunk, adv_tiles):
            adv[(..., *s)] = tile
        if candidates is not None and offered is not None:
            for name, member_tiles in (offered() or {}).items():
                volume = candidates.setdefault(name, image.clone())
                for s, tile in zip(chunk, member_tiles):
                    volume[(..., *s)] = tile
    crop = (..., *(slice(0, s) for s in spatial))
    if candidates is not None:
        for name in candidates:
            candidates[name] = candidates[name][crop]
    return adv[crop]
