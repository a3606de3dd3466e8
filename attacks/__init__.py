"""Adversarial attacks on volumetric segmentation: VAFA (frequency), voxel attacks, SegPGD, CosPGD, APGD, worst case.

Every attack is called as ``adv = attack(images [B,C,H,W,D], labels [B,1,H,W,D])``
with images in [0, 1]; extras such as ``q_tables`` and ``success_rate`` are
attributes. Attacks are registered by name in :data:`ATTACKS`; build one with
:func:`build_attack`, or from command-line values with :class:`AttackSettings`.
"""

from __future__ import annotations

from .apgd import APGD
from .base import Attack, LossFn, attack_labels
from .cospgd import CosPGD
from .ensemble import WorstCase
from .registry import (ATTACKS, AttackSettings, all_attack_options, attack_options, build_attack, get_attack_class,
                       preset_flags, preset_values)
from .segpgd import SegPGD
from .tiling import attack_volume, tile_slices
from .vafa import VAFA, VAFA2D, VAFA3D
from .voxel import BIM, FGSM, PGD, GaussianNoise

__all__ = [
    "APGD",
    "ATTACKS",
    "Attack",
    "AttackSettings",
    "BIM",
    "CosPGD",
    "FGSM",
    "GaussianNoise",
    "LossFn",
    "PGD",
    "SegPGD",
    "VAFA",
    "VAFA2D",
    "VAFA3D",
    "WorstCase",
    "all_attack_options",
    "attack_labels",
    "attack_options",
    "attack_volume",
    "preset_flags",
    "preset_values",
    "build_attack",
    "get_attack_class",
    "tile_slices",
]
