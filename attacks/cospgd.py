"""CosPGD (Agnihotri, Jung, Keuper, ICML 2024): per-voxel CE weighted by the cosine of prediction and label."""

from __future__ import annotations

import torch

from .options import ALPHA, EPS, NORM, RANDOM_START, STEPS, TARGETED
from .seg_losses import cospgd_loss
from .stepped import SteppedPGD


class CosPGD(SteppedPGD):
    """CosPGD on whole 3D tiles, L-inf or L2.

    Each step: ``c_i = cos(softmax(z_i), onehot(y_i))`` per voxel along the class axis,
    detached; untargeted ``L = mean_i c_i CE_i`` ascended, targeted ``L = mean_i (1 - c_i) CE_i``
    towards the target descended; ``x <- Proj(x + alpha dir(grad L))`` with ``dir = sign``
    (L-inf) or the gradient normalised over the whole sample (L2). The mean runs over all
    ``H·W·D`` voxels and the L2 norms over ``C·H·W·D`` (the official code's permutes and
    norms are written for 2D images). The loss is CosPGD's own: the ``loss_fn`` passed in
    is not used.

    Args: as :class:`attacks.stepped.SteppedPGD` (``norm``: ``"linf"`` or ``"l2"``).
    """

    name = "cospgd"
    options = (STEPS, ALPHA, EPS, NORM, RANDOM_START, TARGETED)
    presets = {"eps": 4}  # the voxel attacks' budget of the paper's Table 1
    folder_format = "cospgd_{norm}_alpha_{alpha}_eps_{eps}_i_{steps}"
    summary_format = ("CosPGD: norm={norm}, alpha={alpha}, eps={eps}/255, steps={steps}, "
                      "random_start={random_start}, targeted={targeted}")

    def step_loss(self, logits: torch.Tensor, labels: torch.Tensor, t: int) -> torch.Tensor:
        return cospgd_loss(logits, labels, self.targeted)
