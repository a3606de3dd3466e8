"""Losses for training and attacks."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceCELoss

from attacks.frequency import dct

__all__ = ["FREQ_NORMS", "DeepSupervisionLoss", "FrequencyConsistencyLoss", "build_dice_ce", "frequency_consistency_loss",
           "full_resolution"]


def build_dice_ce(smooth_nr: float = 0.0, smooth_dr: float = 1e-6) -> DiceCELoss:
    """The reference's segmentation loss (the paper's code release), used by training and attacks.

    Takes logits ``[B, N, H, W, D]`` and integer labels ``[B, 1, H, W, D]``.
    """
    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr)


def full_resolution(logits: torch.Tensor | list | tuple) -> torch.Tensor:
    """The full-resolution logits of a model output: the tensor itself, or the first of a
    deep-supervision list ``[full, coarser, ...]`` (UNETR++ with ``--unetrpp_deep_supervision``)."""
    return logits[0] if isinstance(logits, (list, tuple)) else logits


class DeepSupervisionLoss(nn.Module):
    """``loss(logits, labels)`` on one output, or a weighted sum over a deep-supervision list.

    For a list ``[full, 1/2, 1/4, ...]`` the weights are ``1, 1/2, 1/4, ...`` normalised to sum 1 and
    the labels are resampled to each output's size by nearest neighbour (nnU-Net's deep supervision,
    as UNETR++ trains). A single tensor goes to ``loss`` unchanged, so models without deep supervision
    train exactly as before.

    Args:
        loss: ``loss(logits [B, N, H, W, D], labels [B, 1, H, W, D]) -> scalar``.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor | list | tuple, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, (list, tuple)):
            return self.loss(logits, labels)
        weights = [0.5 ** i for i in range(len(logits))]
        total = sum(weights)
        loss = 0.0
        for weight, out in zip(weights, logits):
            target = labels
            if tuple(out.shape[2:]) != tuple(labels.shape[2:]):
                target = nn.functional.interpolate(labels.float(), size=out.shape[2:], mode="nearest")
            loss = loss + (weight / total) * self.loss(out, target)
        return loss


FREQ_NORMS = ("relative", "l1")
"""Reductions of :func:`frequency_consistency_loss`."""


def _check_norm(norm: str) -> None:
    if norm not in FREQ_NORMS:
        raise ValueError(f"unknown frequency-consistency norm {norm!r}; valid: {', '.join(FREQ_NORMS)}")


def frequency_consistency_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, norm: str = "relative"
) -> torch.Tensor:
    """Frequency-consistency regulariser of VAFT (the paper's Eq. 4, as its code release computes it).

    Both logit volumes go through an orthonormal 3D DCT-II over the whole ROI (the last
    three dims, as the reference does with one 96³ block per ROI); the loss is the L1
    distance between the two spectra:

    - ``"relative"`` (default, the reference's training code):
      ``sum|DCT(clean) - DCT(adv)| / sum|DCT(clean)|``, both sums over the whole batch
      (all samples, classes and frequencies at once, not per sample). Scale-free, so it
      adds to the two Dice-CE terms with weight 1.
    - ``"l1"`` (the paper's Eq. 4 as printed): ``sum|DCT(clean) - DCT(adv)|``, a plain
      sum over the whole batch (no mean), so it grows with ``B·N·H·W·D``; weight it
      accordingly.

    As in the reference, gradients flow into both inputs (the clean logits are not
    detached). The transform and sums run in float32 outside autocast, so AMP training
    cannot overflow the sums; the result has that dtype (float64 inputs stay float64).

    Args:
        logits_clean: model output on clean images, ``[B, N, H, W, D]``.
        logits_adv: model output on adversarial images, same shape.
        norm: ``"relative"`` or ``"l1"``.

    Returns:
        Scalar loss.

    Raises:
        ValueError: unknown ``norm``, shapes that differ or are not ``[B, N, H, W, D]``.
    """
    _check_norm(norm)
    if logits_clean.shape != logits_adv.shape:
        raise ValueError(
            f"logits_clean and logits_adv must have the same shape, got {tuple(logits_clean.shape)} "
            f"and {tuple(logits_adv.shape)}"
        )
    if logits_clean.ndim != 5:
        raise ValueError(f"expected logits [B, N, H, W, D], got shape {tuple(logits_clean.shape)}")
    dtype = torch.promote_types(logits_clean.dtype, torch.float32)
    with torch.autocast(device_type=logits_clean.device.type, enabled=False):
        spec_clean = dct(logits_clean.to(dtype), ndim=3)  # [B, N, H, W, D]
        spec_adv = dct(logits_adv.to(dtype), ndim=3)  # [B, N, H, W, D]
        distance = (spec_clean - spec_adv).abs().sum()
        if norm == "l1":
            return distance
        # the reference divides unguarded; the floor only turns 0/0 (all-zero logits) into 0
        return distance / spec_clean.abs().sum().clamp_min(torch.finfo(dtype).tiny)


class FrequencyConsistencyLoss(nn.Module):
    """``weight * frequency_consistency_loss(logits_clean, logits_adv, norm)``.

    Args:
        norm: ``"relative"`` (reference, default) or ``"l1"`` (paper's Eq. 4).
        weight: factor on the loss (the reference adds it with weight 1).

    Raises:
        ValueError: unknown ``norm``.
    """

    def __init__(self, norm: str = "relative", weight: float = 1.0) -> None:
        super().__init__()
        _check_norm(norm)
        self.norm = norm
        self.weight = float(weight)

    def forward(self, logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
        """Args: logits ``[B, N, H, W, D]`` on clean and adversarial images. Returns a scalar."""
        return self.weight * frequency_consistency_loss(logits_clean, logits_adv, self.norm)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, weight={self.weight}"
