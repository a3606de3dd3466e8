"""L-inf and L2 threat models: steps, projections and random starts, per sample, any spatial rank.

Norms are taken per sample over every axis but the batch axis (``C·H·W·D`` values of a
volume). Radii follow the command line's convention: ``eps`` is on the [0, 1] intensity
scale and means the largest change of one voxel under L-inf and the root-mean-square
change per voxel under L2, i.e. an L2 radius of ``eps · sqrt(C·H·W·D)``. The same
``--eps`` thus means a comparable budget whatever the tile size, and the L2 ball just
contains the L-inf ball of the same ``eps``.
"""

from __future__ import annotations

import math

import torch

NORMS = ("linf", "l2")
"""Threat models: ``--norm`` values."""


def check_norm(norm: str) -> str:
    """``norm`` if it is one of :data:`NORMS`, else ``ValueError``."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


def _per_sample(x: torch.Tensor) -> tuple:
    """Shape ``(B, 1, ..., 1)`` that broadcasts a ``[B]`` tensor against ``x``."""
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """``[B, ...] -> [B]``: L2 norm of each sample over all its other axes."""
    return x.flatten(1).norm(p=2, dim=1)


def radius(x: torch.Tensor, eps: float, norm: str) -> float:
    """The ball's radius for samples shaped like ``x[0]``: ``eps`` (L-inf) or ``eps·sqrt(x[0].numel())`` (L2)."""
    return float(eps) if norm == "linf" else float(eps) * math.sqrt(x[0].numel())


def direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: ``sign(grad)`` (L-inf) or ``grad / ||grad||_2`` per sample (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / l2_norm(grad).clamp_min(1e-12).view(_per_sample(grad))


def project(adv: torch.Tensor, images: torch.Tensor, rad, norm: str) -> torch.Tensor:
    """Project ``adv`` onto the ball of radius ``rad`` around ``images``, then into [0, 1].

    Args:
        adv, images: ``[B, C, *S]``.
        rad: radius (:func:`radius`), a float or a ``[B]`` tensor.
        norm: ``"linf"`` or ``"l2"``.

    L2 scales the perturbation back onto the sphere when it is outside; clamping into
    [0, 1] afterwards only shrinks every coordinate of it, so the result stays in the ball.
    """
    delta = adv - images
    if norm == "linf":
        if torch.is_tensor(rad):
            rad = rad.view(_per_sample(delta))
            delta = torch.maximum(torch.minimum(delta, rad), -rad)
        else:
            delta = delta.clamp(-rad, rad)
    else:
        rad_t = torch.as_tensor(rad, dtype=delta.dtype, device=delta.device).expand(delta.shape[0])
        scale = torch.clamp(rad_t / l2_norm(delta).clamp_min(1e-12), max=1.0)
        delta = delta * scale.view(_per_sample(delta))
    return torch.clamp(images + delta, 0, 1)


def random_start(images: torch.Tensor, rad: float, norm: str) -> torch.Tensor:
    """A random point of the ball around ``images``, inside [0, 1].

    L-inf: ``U(-rad, rad)`` per voxel; L2: a Gaussian direction scaled to a radius drawn
    uniformly in ``[0, rad]``.
    """
    if norm == "linf":
        noise = torch.empty_like(images).uniform_(-rad, rad)
    else:
        noise = torch.randn_like(images)
        noise = direction(noise, "l2") * torch.rand(images.shape[0], dtype=images.dtype,
                                                    device=images.device).view(_per_sample(images)) * rad
    return project(images + noise, images, rad, norm)
