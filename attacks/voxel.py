"""Voxel-domain L-inf attacks and Gaussian noise (as the paper's code release runs them), on images in [0, 1].

``eps``, ``alpha`` and ``std`` are on the [0, 1] intensity scale; the command line
gives ``--eps`` and ``--std`` on the [0, 255] scale and divides by 255.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


from .base import Attack, LossFn
from .options import ALPHA, EPS, STD, STEPS, TARGETED, non_negative, positive_int


class PGD(Attack):
    """Projected gradient descent in the L-inf ball.

    ``x0 = clamp(x + U(-eps, eps), 0, 1)`` when ``random_start`` (else ``x``), then
    ``steps`` times ``x <- clamp(clamp(x + alpha sign(grad), x_clean - eps, x_clean + eps), 0, 1)``,
    where ``grad`` is the gradient of the loss (targeted: minus the loss on the target).

    Args:
        model: segmentation network.
        loss_fn: ``loss_fn(logits, labels) -> scalar``.
        eps: radius of the L-inf ball, >= 0.
        alpha: step size, >= 0.
        steps: number of steps, >= 1.
        random_start: start from a uniform random point of the ball.
        targeted: labels passed to the call are target labels.

    Attributes:
        success_rate: ``success_rate[i]`` is the fraction of voxels fooled by the
            input of step ``i`` (the start point for ``i = 0``), from the logits the
            step computes anyway; the returned image is one update past the last entry.

    Raises:
        ValueError: negative or non-finite ``eps`` / ``alpha`` or ``steps < 1``.
    """

    name = "pgd"
    options = (STEPS, ALPHA, EPS, TARGETED)
    presets = {"eps": 4}  # the paper's Table 1: eps 4 of 255
    folder_format = "pgd_alpha_{alpha}_eps_{eps}_i_{steps}"
    summary_format = "PGD: alpha={alpha}, eps={eps}/255, steps={steps}, targeted={targeted}"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        eps: float,
        alpha: float,
        steps: int,
        random_start: bool = True,
        targeted: bool = False,
    ):
        super().__init__(model, loss_fn, targeted)
        self.eps = non_negative("eps", eps)
        self.alpha = non_negative("alpha", alpha)
        self.steps = positive_int("steps", steps)
        self.random_start = bool(random_start)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the attack; ``images [B, C, H, W, D]`` in [0, 1], ``labels [B, 1, H, W, D]``."""
        low, high = images - self.eps, images + self.eps
        adv = images
        if self.random_start:
            adv = torch.clamp(images + torch.empty_like(images).uniform_(-self.eps, self.eps), 0, 1)
        rates = []
        for _ in range(self.steps):
            grad, logits = self.input_gradient(adv, labels)
            rates.append(self.fooled_fraction(logits, labels))
            adv = adv + self.alpha * grad.sign()
            adv = torch.clamp(torch.clamp(adv, low, high), 0, 1)
        self.success_rate = torch.stack(rates).tolist()  # one device sync per call, not per step
        return adv

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
            f"random_start={self.random_start}, targeted={self.targeted})"
        )


class BIM(PGD):
    """Basic iterative method: :class:`PGD` without the random start.

    Args:
        model: segmentation network.
        loss_fn: ``loss_fn(logits, labels) -> scalar``.
        eps: radius of the L-inf ball, >= 0.
        alpha: step size, >= 0.
        steps: number of steps, >= 1.
        targeted: labels passed to the call are target labels.
    """

    name = "bim"
    folder_format = "bim_alpha_{alpha}_eps_{eps}_i_{steps}"
    summary_format = "BIM: alpha={alpha}, eps={eps}/255, steps={steps}, targeted={targeted}"

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, eps: float, alpha: float, steps: int, targeted: bool = False):
        super().__init__(model, loss_fn, eps=eps, alpha=alpha, steps=steps, random_start=False, targeted=targeted)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, targeted={self.targeted})"


class FGSM(Attack):
    """Fast gradient sign method: ``clamp(x + eps sign(grad), 0, 1)``.

    Args:
        model: segmentation network.
        loss_fn: ``loss_fn(logits, labels) -> scalar``.
        eps: step size, >= 0.
        targeted: labels passed to the call are target labels.

    Attributes:
        success_rate: ``[fraction fooled on the clean images]``, from the one forward pass.

    Raises:
        ValueError: negative or non-finite ``eps``.
    """

    name = "fgsm"
    options = (EPS, TARGETED)
    presets = {"eps": 4}
    folder_format = "fgsm_eps_{eps}"
    summary_format = "FGSM: eps={eps}/255, targeted={targeted}"

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, eps: float, targeted: bool = False):
        super().__init__(model, loss_fn, targeted)
        self.eps = non_negative("eps", eps)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the attack; ``images [B, C, H, W, D]`` in [0, 1], ``labels [B, 1, H, W, D]``."""
        grad, logits = self.input_gradient(images, labels)
        self.success_rate = [self.fooled_fraction(logits, labels).item()]
        return torch.clamp(images + self.eps * grad.sign(), 0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, targeted={self.targeted})"


class GaussianNoise(Attack):
    """Additive Gaussian noise: ``clamp(x + std N(0, 1), 0, 1)``; the model is not queried.

    Args:
        model: segmentation network (unused; kept for the common constructor).
        loss_fn: unused.
        std: noise standard deviation, >= 0.

    Raises:
        ValueError: negative or non-finite ``std``.
    """

    name = "gn"
    options = (STD,)
    presets = {"std": 4}
    folder_format = "gn_std_{std}"
    summary_format = "GN: std={std}/255"

    def __init__(self, model: Optional[nn.Module] = None, loss_fn: Optional[LossFn] = None, *, std: float):
        super().__init__(model, loss_fn, targeted=False)
        self.std = non_negative("std", std)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Add noise; ``labels`` are ignored."""
        return torch.clamp(images + self.std * torch.randn_like(images), 0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(std={self.std})"
