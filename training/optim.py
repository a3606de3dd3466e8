"""Optimisers, learning-rate schedules and mixed precision of the training runs (the release's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn

from utils.errors import UserError

SCHEDULES = ("warmup_cosine", "cosine_anneal")
"""``--lrschedule`` values with a schedule; any other value trains at a constant rate (release)."""


@dataclass(frozen=True)
class OptimSettings:
    """Optimiser and schedule (the release's ``--optim_name`` ... ``--warmup_epochs``, typed)."""

    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    momentum: float = 0.99
    schedule: str = "warmup_cosine"
    warmup_epochs: int = 50
    max_epochs: int = 5000


def build_optimizer(settings: OptimSettings, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The release's optimisers: Adam/AdamW ``(lr, weight_decay)``, SGD with Nesterov momentum."""
    name = settings.name
    if name == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, nesterov=True,
                               weight_decay=settings.weight_decay)
    raise UserError(f"unknown --optim_name {name!r}; valid names: adamw, adam, sgd")


def warmup_cosine_factor(epoch: int, warmup_epochs: int, max_epochs: int) -> float:
    """Learning-rate factor of the UNETR repository's ``LinearWarmupCosineAnnealingLR``.

    Closed form of that scheduler with ``warmup_start_lr=0`` and ``eta_min=0`` (as the
    release builds it), stepped once per epoch::

        e <  warmup:  e / (warmup - 1)
        e >= warmup:  0.5 * (1 + cos(pi * (e - warmup) / (max_epochs - warmup)))

    Epoch 0 therefore trains at learning rate 0 — a quirk of the release kept on
    purpose so that runs compare with the paper's. Guards where the release divides by
    zero: ``warmup_epochs == 1`` gives factor 0 at epoch 0 (as its recursive form does);
    ``max_epochs <= warmup_epochs`` never leaves the warm-up.
    """
    if epoch < warmup_epochs:
        return epoch / max(warmup_epochs - 1, 1)
    span = max_epochs - warmup_epochs
    if span <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def cosine_factor(epoch: int, max_epochs: int) -> float:
    """Factor of ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=max_epochs, eta_min=0)``."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / max_epochs))


def build_scheduler(settings: OptimSettings, optimizer: torch.optim.Optimizer):
    """``--lrschedule`` as a per-epoch ``LambdaLR`` (its ``state_dict`` is plain numbers).

    ``warmup_cosine`` and ``cosine_anneal`` as in the release; any other value: ``None``
    (constant learning rate, as the release). The factors are plain functions of the
    settings, so a resumed run with a larger ``--max_epochs`` follows the new length.
    """
    warmup, max_epochs = settings.warmup_epochs, settings.max_epochs
    if settings.schedule == "warmup_cosine":
        def factor(epoch: int) -> float:
            return warmup_cosine_factor(epoch, warmup, max_epochs)
    elif settings.schedule == "cosine_anneal":
        def factor(epoch: int) -> float:
            return cosine_factor(epoch, max_epochs)
    else:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
