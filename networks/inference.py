"""Whole-volume prediction: the one sliding-window path of validation and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference


@dataclass(frozen=True)
class WindowSettings:
    """Sliding-window inference (the release's ``--roi_*``, ``--sw_batch_size``, ``--infer_overlap``)."""

    roi: tuple = (96, 96, 96)
    sw_batch_size: int = 1
    overlap: float = 0.5


@torch.no_grad()
def predict_volume(model: nn.Module, image: torch.Tensor, window: WindowSettings) -> torch.Tensor:
    """Class per voxel of a whole volume by sliding-window inference, in the model's precision.

    The model is switched to eval mode (and left there). Training validation and the
    evaluation scripts both call this, so a checkpoint's validation Dice is the Dice the
    evaluation scripts report.

    Args:
        model: ``[N, C, *roi] -> [N, K, *roi]`` logits.
        image: ``[1, C, H, W, D]``.
        window: ROI, windows per batch, overlap.

    Returns:
        ``[1, 1, H, W, D]`` argmax of the stitched logits.
    """
    model.eval()
    logits = sliding_window_inference(image, tuple(window.roi), window.sw_batch_size, model, overlap=window.overlap)
    return logits.argmax(dim=1, keepdim=True)
