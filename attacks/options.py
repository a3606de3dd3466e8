"""The attack options shared by several attacks, each declared once.

Values are as typed on the command line; ``scale`` converts them for the constructor.
``--eps`` and ``--std`` are on the [0, 255] intensity scale (the release's convention)
and reach the attacks, which work on images in [0, 1], divided by 255 — here, and
nowhere else.
"""

from __future__ import annotations

import math

from utils.options import Option

from .projection import NORMS

INTENSITY_SCALE = 1.0 / 255.0
"""``--eps``/``--std`` are given on the [0, 255] scale; attacks work on [0, 1]."""

STEPS = Option("steps", int, 20, "attack iterations (honoured for VAFA too, unlike the release)", minimum=1)
ALPHA = Option("alpha", float, 0.01, "PGD/BIM/SegPGD/CosPGD step size on the [0,1] scale (per-voxel RMS with "
               "--norm l2)", minimum=0.0)
EPS = Option("eps", float, 4, "budget on the [0,255] scale: L-inf radius, or per-voxel RMS radius with --norm l2",
             scale=INTENSITY_SCALE, minimum=0.0)
STD = Option("std", float, 4, "Gaussian-noise std on the [0,255] scale", scale=INTENSITY_SCALE, minimum=0.0)
TARGETED = Option("targeted", bool, False, "targeted attack towards --target_class")
NORM = Option("norm", str, "linf", "threat model of cospgd/apgd/worst-case: linf, or l2 (radius eps*sqrt(C*H*W*D) "
              "per tile)", choices=NORMS)
RANDOM_START = Option("random_start", bool, False, "segpgd/cospgd: start from a uniform random point of the ball")


def non_negative(name: str, value: float) -> float:
    """``value`` as a float, checked finite and >= 0 (an attack constructor's check; ``ValueError`` names it)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def positive_int(name: str, value: int) -> int:
    """``value`` as an int, checked whole and >= 1 (``ValueError`` names it)."""
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return int(value)
