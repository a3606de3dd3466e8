"""Whole-volume prediction: the one sliding-window path of validation and evaluation.

Two ways to blend overlapping windows (``--sw_blend``):

- ``constant``: MONAI's ``sliding_window_inference`` with a constant importance map (the paper's release);
- ``nnunet``: nnU-Net v2's predictor (``nnunetv2/inference/sliding_window_prediction.py``): the volume padded
  to at least the patch (centred, value 0 in the network's input space), windows placed by nnU-Net's
  ``compute_steps_for_sliding_window`` (step = ``1 - overlap`` of the patch, the last window flush with the
  border, steps spread evenly), each window's logits weighted by a Gaussian (sigma = patch / 8, scipy's
  ``gaussian_filter`` of a centred delta, scaled to a peak of 1, zeros raised to the smallest nonzero value)
  and divided by the summed weights. nnU-Net accumulates in float16; we accumulate in float32.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference


@dataclass(frozen=True)
class WindowSettings:
    """Sliding-window inference (the release's ``--roi_*``, ``--sw_batch_size``, ``--infer_overlap``;
    ``blend``: ``--sw_blend``, a key of :data:`BLENDS`)."""

    roi: tuple = (96, 96, 96)
    sw_batch_size: int = 1
    overlap: float = 0.5
    blend: str = "constant"


def monai_sliding_window(model: nn.Module, image: torch.Tensor, window: WindowSettings) -> torch.Tensor:
    """MONAI's sliding window with constant blending: ``[1, C, *S] -> [1, K, *S]`` logits."""
    return sliding_window_inference(image, tuple(window.roi), window.sw_batch_size, model, overlap=window.overlap)


def window_starts(size: int, patch: int, step_fraction: float) -> list[int]:
    """nnU-Net's window starts along one axis of ``size >= patch`` voxels (``compute_steps_for_sliding_window``)."""
    steps = int(math.ceil((size - patch) / (patch * step_fraction))) + 1
    stride = (size - patch) / (steps - 1) if steps > 1 else 0.0
    return [int(np.round(stride * i)) for i in range(steps)]


@functools.lru_cache(maxsize=4)
def gaussian_importance(patch: tuple, sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """nnU-Net's Gaussian importance map of a patch: ``[*patch]`` float64, peak 1, no zeros."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    weights = gaussian_filter(delta, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def _centred_padding(spatial: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) per axis to reach at least ``patch`` (``acvl_utils``' ``pad_nd_image``: before = diff // 2)."""
    return [((max(p - s, 0)) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch)]


def nnunet_sliding_window(model: nn.Module, image: torch.Tensor, window: WindowSettings) -> torch.Tensor:
    """nnU-Net's Gaussian-weighted sliding window: ``[1, C, *S] -> [1, K, *S]`` logits.

    A model with ``input_map`` and ``network`` attributes (``forward = network(input_map(x))``, as
    :class:`networks.nnunet.NnUNetModel`) has the whole volume normalised first and only ``network`` slid
    over it, as nnU-Net normalises a case before predicting it; any other model is slid whole.
    """
    input_map, network = getattr(model, "input_map", None), getattr(model, "network", None)
    if input_map is not None and network is not None:
        image, model = input_map(image), network
    patch = tuple(window.roi)
    spatial = tuple(image.shape[2:])
    padding = _centred_padding(spatial, patch)
    if any(sum(p) for p in padding):
        flat = [v for before_after in reversed(padding) for v in before_after]
        image = torch.nn.functional.pad(image, flat)
    padded = tuple(image.shape[2:])
    weights = torch.as_tensor(gaussian_importance(patch), dtype=torch.float32, device=image.device)
    grid = [window_starts(s, p, 1.0 - window.overlap) for s, p in zip(padded, patch)]
    slices = [tuple(slice(a, a + p) for a, p in zip(starts, patch)) for starts in itertools.product(*grid)]
    logits = None
    counts = torch.zeros(padded, dtype=torch.float32, device=image.device)
    for first in range(0, len(slices), window.sw_batch_size):
        chunk = slices[first:first + window.sw_batch_size]
        out = model(torch.cat([image[(..., *s)] for s in chunk])).float()  # [N, K, *patch]
        if logits is None:
            logits = torch.zeros((1, out.shape[1], *padded), dtype=torch.float32, device=image.device)
        for s, tile in zip(chunk, out):
            logits[(0, slice(None), *s)] += tile * weights
            counts[s] += weights
    logits = logits / counts
    crop = tuple(slice(before, before + s) for (before, _), s in zip(padding, spatial))
    return logits[(..., *crop)]


BLENDS: dict[str, Callable[[nn.Module, torch.Tensor, WindowSettings], torch.Tensor]] = {
    "constant": monai_sliding_window,
    "nnunet": nnunet_sliding_window,
}
"""``--sw_blend`` values: how overlapping windows are placed and blended."""


def predict_logits(model: nn.Module, image: torch.Tensor, window: WindowSettings) -> torch.Tensor:
    """Stitched logits ``[1, K, H, W, D]`` of a whole volume ``[1, C, H, W, D]`` (gradients as the caller allows)."""
    return BLENDS[window.blend](model, image, window)


@torch.no_grad()
def predict_volume(model: nn.Module, image: torch.Tensor, window: WindowSettings, with_logits: bool = False):
    """Class per voxel of a whole volume by sliding-window inference, in the model's precision.

    The model is switched to eval mode (and left there). Training validation and the
    evaluation scripts both call this, so a checkpoint's validation Dice is the Dice the
    evaluation scripts report.

    Args:
        model: ``[N, C, *roi] -> [N, K, *roi]`` logits.
        image: ``[1, C, H, W, D]``.
        window: ROI, windows per batch, overlap, blending.

        with_logits: also return the stitched logits.

    Returns:
        ``[1, 1, H, W, D]`` argmax of the stitched logits (and, ``with_logits``, the ``[1, K, H, W, D]`` logits).
    """
    model.eval()
    logits = predict_logits(model, image, window)
    classes = logits.argmax(dim=1, keepdim=True)
    return (classes, logits) if with_logits else classes
