"""Losses for training and attacks."""

from __future__ import annotations

from monai.losses import DiceCELoss


def build_dice_ce(smooth_nr: float = 0.0, smooth_dr: float = 1e-6) -> DiceCELoss:
    """The reference's segmentation loss (DESIGN §3), used by training and attacks.

    Takes logits ``[B, N, H, W, D]`` and integer labels ``[B, 1, H, W, D]``.
    """
    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
