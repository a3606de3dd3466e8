"""SegPGD (Gu, Zhao, Tresp, Torr, ECCV 2022): PGD whose loss moves from the voxels still right to those already wrong."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import LossFn
from .options import ALPHA, EPS, RANDOM_START, STEPS, TARGETED
from .seg_losses import segpgd_lambda, segpgd_loss
from .stepped import SteppedPGD


class SegPGD(SteppedPGD):
    """SegPGD in the L-inf ball, on whole 3D tiles.

    Step ``t = 1..T``: ``L_t = (1 - lambda_t)/N sum_{right} CE_i + lambda_t/N sum_{wrong} CE_i``
    with ``lambda_t = (t - 1) / (2T)`` (the paper's Eq. 4 and Algorithm 1, 1-based ``t``) and
    ``N`` the voxels of the tile (``H·W·D``), then ``x <- Proj(x + alpha sign(grad L_t))``.
    The right/wrong split is recomputed at every step from the current prediction.
    Targeted: CE towards the target, "right" meaning not yet at the target, descended.
    The loss is SegPGD's per-voxel cross-entropy: the ``loss_fn`` passed in is not used.

    Args:
        model: segmentation network.
        loss_fn: unused (kept for the common constructor).
        eps: L-inf radius, >= 0 ([0, 1] scale).
        alpha: step size, >= 0.
        steps: ``T >= 1``.
        random_start: start from ``U(-eps, eps)`` (the paper's Algorithm 1 does; off by default).
        targeted: labels passed to the call are target labels.
    """

    name = "segpgd"
    options = (STEPS, ALPHA, EPS, RANDOM_START, TARGETED)
    presets = {"eps": 4}  # the voxel attacks' budget of the paper's Table 1
    folder_format = "segpgd_alpha_{alpha}_eps_{eps}_i_{steps}"
    summary_format = "SegPGD: alpha={alpha}, eps={eps}/255, steps={steps}, random_start={random_start}, targeted={targeted}"

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, eps: float, alpha: float, steps: int,
                 random_start: bool = False, targeted: bool = False):
        super().__init__(model, loss_fn, eps=eps, alpha=alpha, steps=steps, norm="linf",
                         random_start=random_start, targeted=targeted)

    def step_loss(self, logits: torch.Tensor, labels: torch.Tensor, t: int) -> torch.Tensor:
        return segpgd_loss(logits, labels, segpgd_lambda(t, self.steps), self.targeted)
