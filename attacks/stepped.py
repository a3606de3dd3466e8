"""Projected gradient steps on a loss that changes with the step: the loop SegPGD and CosPGD share."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Attack, LossFn
from .options import non_negative, positive_int
from .projection import check_norm, direction, project, radius, random_start


class SteppedPGD(Attack):
    """``x <- Proj(x + alpha_r · dir(grad L_t(x)))`` for ``t = 1..T`` (minus the loss when targeted).

    ``dir`` is ``sign`` (L-inf) or the per-sample normalised gradient (L2); ``Proj`` is the
    projection onto the ``eps``-ball around the clean images and into [0, 1]. Under L2
    ``alpha`` and ``eps`` are per-voxel RMS sizes (see :mod:`attacks.projection`).
    Subclasses define :meth:`step_loss`.

    Args:
        model: segmentation network.
        loss_fn: kept for the common constructor; the subclass's loss is used.
        eps: radius, >= 0 ([0, 1] scale).
        alpha: step size, >= 0.
        steps: ``T >= 1``.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform random point of the ball.
        targeted: labels passed to the call are target labels.

    Attributes:
        success_rate: fraction of voxels fooled at the input of each step.

    Raises:
        ValueError: negative or non-finite ``eps``/``alpha``, ``steps < 1``, unknown norm.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, eps: float, alpha: float, steps: int,
                 norm: str = "linf", random_start: bool = False, targeted: bool = False):
        super().__init__(model, loss_fn, targeted)
        self.eps = non_negative("eps", eps)
        self.alpha = non_negative("alpha", alpha)
        self.steps = positive_int("steps", steps)
        self.norm = check_norm(norm)
        self.random_start = bool(random_start)

    def step_loss(self, logits: torch.Tensor, labels: torch.Tensor, t: int) -> torch.Tensor:
        """The scalar loss of 1-based step ``t`` (ascended; descended when targeted)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the attack; ``images [B, C, H, W, D]`` in [0, 1], ``labels [B, 1, H, W, D]``."""
        rad, step = radius(images, self.eps, self.norm), radius(images, self.alpha, self.norm)
        adv = random_start(images, rad, self.norm) if self.random_start else images
        rates = []
        for t in range(1, self.steps + 1):
            x = adv.detach().requires_grad_(True)
            logits = self.model(x)
            loss = self.step_loss(logits, labels, t)
            (grad,) = torch.autograd.grad(-loss if self.targeted else loss, x)
            rates.append(self.fooled_fraction(logits.detach(), labels))
            adv = project(adv + step * direction(grad, self.norm), images, rad, self.norm)
        self.success_rate = torch.stack(rates).tolist()
        return adv

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, norm={self.norm!r}, "
                f"random_start={self.random_start}, targeted={self.targeted})")

    @classmethod
    def format_folder_name(cls, values) -> str:
        """The release-style name; ``_rs`` is added with ``--random_start``."""
        return super().format_folder_name(values) + ("_rs" if values.get("random_start") else "")
