"""APGD (Croce & Hein, ICML 2020) for segmentation: per-sample step sizes, checkpoints and best iterates."""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn

from utils.options import Option

from .base import Attack, LossFn
from .options import EPS, NORM, STEPS, TARGETED, non_negative, positive_int
from .projection import check_norm, direction, project, radius, random_start
from .seg_losses import APGD_LOSSES, per_sample_loss, tile_score

MOMENTUM = 0.75
"""Weight ``a`` of the new step against the previous one (``a = 1`` at the first step)."""
RHO = 0.75
"""Condition 1: halve when the loss rose in at most ``RHO`` of the steps since the last checkpoint."""

LOSS = Option("loss", str, "dice-ce", "apgd: loss maximised per tile (" + "; ".join(
    f"{name}: {formula}" for name, formula in APGD_LOSSES.items()) + ")", choices=tuple(APGD_LOSSES))


def apgd_checkpoints(steps: int) -> List[int]:
    """APGD's checkpoints ``w_j = ceil(p_j · N)`` for ``N = steps`` (the paper's Sec. 3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, kept while
    ``w_j <= N``; computed in hundredths, so no float rounding moves a checkpoint.
    ``N = 100`` gives 22, 41, 57, 70, 80, 87, 93, 99; ``N = 20`` gives 5, 9, 12, 14, 16, 18, 19, 20.
    (The auto-attack code rounds each gap down to whole steps instead, which for small
    ``N`` halves the step far more often: ``N = 20`` gives 4, 7, 9, 10, 11, ...)
    """
    out: List[int] = []
    previous, p = 0, 22  # hundredths
    while True:
        w = -(-p * steps // 100)  # ceil(p N / 100) in integers
        if w > steps:
            return out
        if not out or w > out[-1]:
            out.append(w)
        previous, p = p, p + max(p - previous - 3, 6)


class StepSizeSchedule:
    """APGD's step size per sample: halved, with a restart from the best point, at the checkpoints.

    Fed the loss of every iterate in order (``f(x_0)`` at construction, then ``f(x_k)`` for
    ``k = 1..N``). At checkpoint ``w_j`` a sample's step size is halved and it restarts from its
    best point when

    1. the loss rose (``f(x_{i+1}) > f(x_i)``) in at most ``RHO·(w_j - w_{j-1})`` of the steps
       ``i = w_{j-1} .. w_j - 1``, or
    2. its step size was not halved at ``w_{j-1}`` and its best loss has not risen since.

    Args:
        steps: ``N``.
        eta: ``[B]`` initial step sizes (``2 eps``).
        loss: ``[B]`` loss of the start point.

    Attributes:
        eta: ``[B]`` current step sizes.
        best: ``[B]`` best loss so far.
        checkpoints: :func:`apgd_checkpoints` of ``steps``.
    """

    def __init__(self, steps: int, eta: torch.Tensor, loss: torch.Tensor):
        self.checkpoints = apgd_checkpoints(steps)
        self.eta = eta.clone()
        self.best = loss.clone()
        self.losses = [loss.clone()]
        self.last_checkpoint = 0
        self.best_at_last = loss.clone()
        self.halved_last = torch.zeros_like(loss, dtype=torch.bool)

    def observe(self, loss: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Record ``f(x_k)`` of the next iterate.

        Returns:
            ``(improved, restart)``, ``[B]`` bool: the loss beat the best so far (the caller
            keeps this iterate as the best point); the sample halves its step size and
            restarts from its best point now (all False between checkpoints).
        """
        improved = loss > self.best
        self.best = torch.where(improved, loss, self.best)
        self.losses.append(loss.clone())
        k = len(self.losses) - 1
        restart = torch.zeros_like(improved)
        if k in self.checkpoints:
            gap = k - self.last_checkpoint
            window = torch.stack(self.losses[self.last_checkpoint : k + 1])  # [gap + 1, B]
            rises = (window[1:] > window[:-1]).sum(dim=0)
            restart = (rises <= RHO * gap) | (~self.halved_last & (self.best <= self.best_at_last))
            self.eta = torch.where(restart, self.eta / 2, self.eta)
            self.halved_last, self.best_at_last, self.last_checkpoint = restart, self.best.clone(), k
        return improved, restart


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view((-1,) + (1,) * (like.ndim - 1))


class APGD(Attack):
    """APGD with a segmentation loss, L-inf or L2, on whole 3D tiles.

    From a random point of the ball ``x_0``, with ``eta = 2 eps`` per sample
    (the ball's radius under L2) and ``a = 1`` at the first step, ``0.75`` after:

    ``z = Proj(x_k + eta dir(grad f(x_k)))``,
    ``x_{k+1} = Proj(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))``,

    and the step sizes follow :class:`StepSizeSchedule` (halve and restart from the
    highest-loss point). After a restart the momentum term is ``x_best - x_k``, the move from the
    point the abandoned step started at to the restart point, as in the paper's Algorithm 1 and the
    authors' ``autopgd_base.py`` (the abandoned step ``x_{k+1} - x_k`` is dropped). ``f`` is the per-sample loss ``loss`` (:data:`attacks.seg_losses.APGD_LOSSES`),
    minus the loss towards the target when targeted. ``N`` steps evaluate ``N + 1`` points.

    Each sample of the batch returns its own best iterate: the one where the prediction
    is worst, by :func:`attacks.seg_losses.tile_score` (mean Dice over the classes present
    in its labels; targeted, the fraction of voxels not yet at the target). SEA keeps the
    worst prediction rather than the highest loss, which masked losses make misleading.

    Args:
        model: segmentation network.
        loss_fn: the Dice-CE (used by ``loss="dice-ce"`` only).
        eps: radius >= 0 ([0, 1] scale; per-voxel RMS under L2).
        steps: ``N >= 1``.
        loss: a key of :data:`attacks.seg_losses.APGD_LOSSES`.
        norm: ``"linf"`` or ``"l2"``.
        targeted: labels passed to the call are target labels.

    Attributes:
        success_rate: fraction of voxels fooled at every evaluated point.
        best_score: ``[B]`` :func:`~attacks.seg_losses.tile_score` of the returned samples.
        eta_trace: ``[N + 1, B]`` step size in force at each point (for inspection).

    Raises:
        ValueError: negative or non-finite ``eps``, ``steps < 1``, unknown loss or norm,
            ``loss="dice-ce"`` without a ``loss_fn`` at call time.
    """

    name = "apgd"
    options = (STEPS, EPS, LOSS, NORM, TARGETED)
    presets = {"eps": 4}  # the voxel attacks' budget of the paper's Table 1
    folder_format = "apgd_{loss}_{norm}_eps_{eps}_i_{steps}"
    summary_format = "APGD: loss={loss}, norm={norm}, eps={eps}/255, steps={steps}, targeted={targeted}"

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, eps: float, steps: int, loss: str = "dice-ce",
                 norm: str = "linf", targeted: bool = False):
        super().__init__(model, loss_fn, targeted)
        self.eps = non_negative("eps", eps)
        self.steps = positive_int("steps", steps)
        if loss not in APGD_LOSSES:
            raise ValueError(f"unknown APGD loss {loss!r}; valid: {', '.join(APGD_LOSSES)}")
        self.loss = loss
        self.norm = check_norm(norm)
        self.best_score = None
        self.eta_trace = None

    def evaluate(self, adv: torch.Tensor, labels: torch.Tensor):
        """``(f [B], grad [B, C, *S], logits)`` at ``adv``: the objective per sample and its gradient."""
        x = adv.detach().requires_grad_(True)
        logits = self.model(x)
        loss = per_sample_loss(self.loss, logits, labels, self.targeted, self.loss_fn)
        objective = -loss if self.targeted else loss
        (grad,) = torch.autograd.grad(objective.sum(), x)  # samples are independent: sum = per-sample grads
        return objective.detach(), grad, logits.detach()

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the attack; ``images [B, C, H, W, D]`` in [0, 1], ``labels [B, 1, H, W, D]``."""
        rad = radius(images, self.eps, self.norm)
        adv = random_start(images, rad, self.norm)
        f, grad, logits = self.evaluate(adv, labels)
        schedule = StepSizeSchedule(self.steps, torch.full_like(f, 2 * rad), f)
        x_best, grad_best = adv.clone(), grad.clone()  # highest loss: where restarts go
        out, out_score = adv.clone(), tile_score(logits, labels, self.targeted)  # worst prediction: returned
        rates, etas = [self.fooled_fraction(logits, labels)], [schedule.eta.clone()]
        momentum = torch.zeros_like(images)
        for k in range(self.steps):
            a = 1.0 if k == 0 else MOMENTUM
            eta = _per_sample(schedule.eta, images).to(images.dtype)
            z = project(adv + eta * direction(grad, self.norm), images, rad, self.norm)
            previous = adv
            adv = project(adv + a * (z - adv) + (1 - a) * momentum, images, rad, self.norm)
            f, grad, logits = self.evaluate(adv, labels)
            rates.append(self.fooled_fraction(logits, labels))
            score = tile_score(logits, labels, self.targeted)
            worse = score < out_score
            out = torch.where(_per_sample(worse, out), adv, out)
            out_score = torch.where(worse, score, out_score)
            improved, restart = schedule.observe(f)
            x_best = torch.where(_per_sample(improved, adv), adv, x_best)
            grad_best = torch.where(_per_sample(improved, grad), grad, grad_best)
            adv = torch.where(_per_sample(restart, adv), x_best, adv)
            grad = torch.where(_per_sample(restart, grad), grad_best, grad)
            momentum = adv - previous  # after a restart x_best - x_k, not the abandoned step
            etas.append(schedule.eta.clone())
        self.success_rate = torch.stack(rates).tolist()
        self.best_score, self.eta_trace = out_score, torch.stack(etas)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, loss={self.loss!r}, norm={self.norm!r}, "
                f"targeted={self.targeted})")
