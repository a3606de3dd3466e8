"""Adversarial attacks on volumetric segmentation: VAFA (frequency) and voxel attacks.

Every attack is called as ``adv = attack(images [B,C,H,W,D], labels [B,1,H,W,D])``
with images in [0, 1]; extras such as ``q_tables`` and ``success_rate`` are
attributes. Build one by its command-line name with :func:`build_attack`.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional

import torch.nn as nn

from .base import Attack, LossFn
from .vafa import VAFA, VAFA2D, VAFA3D
from .voxel import BIM, FGSM, PGD, GaussianNoise

ATTACKS: Dict[str, Callable[..., Attack]] = {
    "vafa-3d": VAFA3D,
    "vafa-2d": VAFA2D,
    "pgd": PGD,
    "fgsm": FGSM,
    "bim": BIM,
    "gn": GaussianNoise,
}


def attack_options(name: str) -> tuple:
    """Keyword arguments (after ``model`` and ``loss_fn``) that attack ``name`` accepts.

    Raises:
        ValueError: unknown attack name.
    """
    cls = _lookup(name)
    options = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        options += [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in options]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return tuple(options)


def build_attack(name: str, model: nn.Module, loss_fn: Optional[LossFn], **cfg) -> Attack:
    """Build the attack registered as ``name`` (the ``--attack_name`` values).

    Args:
        name: a key of ``ATTACKS``.
        model: segmentation network.
        loss_fn: ``loss_fn(logits, labels) -> scalar`` (ignored by ``gn``).
        **cfg: exactly that attack's keyword arguments (see :func:`attack_options`),
            e.g. ``eps``/``alpha``/``steps`` for ``pgd``, ``q_max``/``block_size``/... for VAFA.

    Returns:
        The attack object.

    Raises:
        ValueError: unknown name, or invalid argument values (e.g. a 2-sided
            ``block_size`` for ``vafa-3d``).
        TypeError: a keyword the attack does not take.
    """
    cls = _lookup(name)
    options = attack_options(name)
    unknown = sorted(set(cfg) - set(options))
    if unknown:
        raise TypeError(f"attack {name!r} takes keyword arguments {list(options)}, got unexpected {unknown}")
    return cls(model, loss_fn, **cfg)


def _lookup(name: str) -> Callable[..., Attack]:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid names: {', '.join(ATTACKS)}")
    return ATTACKS[name]


__all__ = [
    "ATTACKS",
    "Attack",
    "BIM",
    "FGSM",
    "GaussianNoise",
    "PGD",
    "VAFA",
    "VAFA2D",
    "VAFA3D",
    "attack_options",
    "build_attack",
]
