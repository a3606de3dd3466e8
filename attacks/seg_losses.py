"""Per-voxel segmentation losses of the field's attacks, for any number of spatial axes.

Every function takes logits ``[B, N, *S]`` (``S`` = ``(H, W, D)`` for volumes, any
spatial shape works) and labels ``[B, 1, *S]`` (integer-valued float or long) and
returns per-voxel values ``[B, *S]`` or per-sample values ``[B]``. The class axis is
moved with ``movedim``; reductions run over every spatial axis, so a "mean over the
image" is a mean over the volume's ``H·W·D`` voxels, not over one slice.

Sources: SegPGD (Gu et al., ECCV 2022), CosPGD (Agnihotri, Jung, Keuper, ICML 2024),
APGD (Croce & Hein, ICML 2020), the masked, balanced and Jensen-Shannon losses of SEA
(Croce, Singh, Hein, ECCV 2024).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .base import LossFn, predict

__all__ = [
    "APGD_LOSSES",
    "cosine_weights",
    "cospgd_loss",
    "js_divergence",
    "not_fooled",
    "one_hot",
    "per_sample_loss",
    "per_voxel_ce",
    "segpgd_lambda",
    "segpgd_loss",
    "tile_score",
]


def _index(labels: torch.Tensor) -> torch.Tensor:
    """``[B, 1, *S]`` labels -> ``[B, *S]`` long class indices."""
    return labels[:, 0].long()


def _spatial_mean(values: torch.Tensor) -> torch.Tensor:
    """``[B, *S] -> [B]``: mean over every axis but the first."""
    return values.flatten(1).mean(dim=1)


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, 1, *S]`` labels -> ``[B, N, *S]`` one-hot (class axis moved to 1 with ``movedim``)."""
    return F.one_hot(_index(labels), num_classes).movedim(-1, 1).to(dtype)  # [B, *S, N] -> [B, N, *S]


def per_voxel_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each voxel, ``[B, N, *S], [B, 1, *S] -> [B, *S]``."""
    return F.cross_entropy(logits, _index(labels), reduction="none")


def not_fooled(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Voxels the attack has not won yet, ``[B, *S]`` bool (detached).

    Untargeted: the prediction still equals the label; targeted: it is not yet the target.
    """
    pred = predict(logits.detach())[:, 0]
    return pred != _index(labels) if targeted else pred == _index(labels)


# --------------------------------------------------------------------------- SegPGD


def segpgd_lambda(t: int, steps: int) -> float:
    """SegPGD's weight ``lambda_t = (t - 1) / (2 T)`` for the 1-based step ``t`` of ``T``."""
    return (t - 1) / (2 * steps)


def segpgd_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float, targeted: bool = False) -> torch.Tensor:
    """SegPGD's loss (Gu et al., ECCV 2022, Eq. 4), one scalar for the batch.

    ``L = (1 - lam)/N sum_{not fooled} CE_i + lam/N sum_{fooled} CE_i`` with ``N`` every
    voxel of the batch (``B·H·W·D``; per sample this is the mean over the volume). Untargeted,
    "not fooled" voxels are those still predicted correctly; targeted, the CE is towards the
    target and "not fooled" voxels are those not yet predicted as the target (the attack
    descends this loss). The split is recomputed from ``logits`` and detached.
    """
    ce = per_voxel_ce(logits, labels)  # [B, *S]
    keep = not_fooled(logits, labels, targeted).to(ce.dtype)
    weights = (1 - lam) * keep + lam * (1 - keep)
    return (weights * ce).mean()


# --------------------------------------------------------------------------- CosPGD


def cosine_weights(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CosPGD's per-voxel weight ``cos(softmax(z_i), onehot(y_i))``, ``[B, *S]``, detached.

    The cosine is taken along the class axis (axis 1) at every voxel.
    """
    with torch.no_grad():
        probs = torch.softmax(logits, dim=1)
        return F.cosine_similarity(probs, one_hot(labels, logits.shape[1], probs.dtype), dim=1)


def cospgd_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """CosPGD's loss (Agnihotri et al., ICML 2024), one scalar for the batch.

    Untargeted: ``mean_i cos_i · CE_i`` (ascended); targeted: ``mean_i (1 - cos_i) · CE_i``
    towards the target (descended). ``cos_i`` is :func:`cosine_weights`, detached.
    """
    weights = cosine_weights(logits, labels)
    if targeted:
        weights = 1 - weights
    return (weights * per_voxel_ce(logits, labels)).mean()


# --------------------------------------------------------------------------- SEA's losses (per sample)


def js_divergence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between ``softmax(z_i)`` and ``onehot(y_i)`` per voxel, ``[B, *S]``.

    ``JS = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``; terms with a zero
    probability contribute 0 (natural logarithm).
    """
    p = torch.softmax(logits, dim=1)
    q = one_hot(labels, logits.shape[1], p.dtype)
    m = (p + q) / 2
    log_m = torch.log(m.clamp_min(1e-12))
    kl_p = (p * (torch.log(p.clamp_min(1e-12)) - log_m)).sum(dim=1)
    kl_q = (q * (torch.log(q.clamp_min(1e-12)) - log_m)).sum(dim=1)  # q in {0, 1}: q log q = 0
    return (kl_p + kl_q) / 2


def _class_balance(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, *S]`` weights ``1 / (K_b · n_{b,y_i})``: every class present in sample ``b`` weighs
    the same in total (``n`` its voxel count, ``K_b`` the number of present classes); each
    sample's weights sum to 1."""
    hot = one_hot(labels, num_classes, dtype)  # [B, N, *S]
    counts = hot.flatten(2).sum(dim=2)  # [B, N]
    present = (counts > 0).sum(dim=1, keepdim=True).to(dtype)  # [B, 1]
    per_class = torch.where(counts > 0, 1 / (counts.clamp_min(1) * present), torch.zeros_like(counts))  # [B, N]
    return torch.gather(per_class, 1, _index(labels).flatten(1)).view_as(labels[:, 0]).to(dtype)  # [B, *S]


def per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, targeted: bool,
                    loss_fn: Optional[LossFn] = None) -> torch.Tensor:
    """The APGD loss ``name`` of every sample, ``[B]`` (see :data:`APGD_LOSSES`).

    Args:
        name: a key of :data:`APGD_LOSSES`.
        logits: ``[B, N, *S]``.
        labels: ``[B, 1, *S]`` true labels, or target labels when ``targeted``.
        targeted: masks keep the voxels not yet at the target instead of those still correct.
        loss_fn: the Dice-CE for ``"dice-ce"`` (called on each sample alone).

    Raises:
        ValueError: unknown name, or ``"dice-ce"`` without ``loss_fn``.
    """
    if name == "dice-ce":
        if loss_fn is None:
            raise ValueError("loss 'dice-ce' needs the attack's loss_fn (the release's Dice-CE)")
        # one call per sample: a batch Dice-CE would mix the samples' Dice terms
        return torch.stack([loss_fn(logits[i : i + 1], labels[i : i + 1]) for i in range(logits.shape[0])])
    if name == "ce":
        return _spatial_mean(per_voxel_ce(logits, labels))
    if name == "masked-ce":
        ce = per_voxel_ce(logits, labels)
        return _spatial_mean(ce * not_fooled(logits, labels, targeted).to(ce.dtype))
    if name == "masked-ce-bal":
        ce = per_voxel_ce(logits, labels)
        weights = _class_balance(labels, logits.shape[1], ce.dtype) * not_fooled(logits, labels, targeted).to(ce.dtype)
        return (weights * ce).flatten(1).sum(dim=1)
    if name == "js":
        return _spatial_mean(js_divergence(logits, labels))
    raise ValueError(f"unknown loss {name!r}; valid: {', '.join(APGD_LOSSES)}")


APGD_LOSSES: Dict[str, str] = {
    "dice-ce": "the release's Dice-CE (the loss_fn passed in), per sample",
    "ce": "mean_i CE_i",
    "masked-ce": "mean_i 1[not fooled_i] CE_i (SEA's masked CE; mask recomputed each step, detached)",
    "masked-ce-bal": "sum_i w_i 1[not fooled_i] CE_i, w_i = 1/(K n_{y_i}): every present class weighs the same",
    "js": "mean_i JS(softmax(z_i), onehot(y_i)) (SEA's Jensen-Shannon loss)",
}
"""APGD's losses: name -> formula (``i`` runs over the voxels of one sample)."""


# --------------------------------------------------------------------------- what "stronger" means per tile


def tile_score(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """How well each sample withstands the attack, ``[B]``; lower means a stronger attack.

    Untargeted: the sample's mean Dice over the classes present in its labels
    (background included, as the reports' Dice); targeted: the fraction of voxels not
    yet predicted as the target.
    """
    with torch.no_grad():
        if targeted:
            return _spatial_mean(not_fooled(logits, labels, True).to(logits.dtype))
        num_classes = logits.shape[1]
        pred = one_hot(predict(logits), num_classes, logits.dtype).flatten(2)  # [B, N, V]
        true = one_hot(labels, num_classes, logits.dtype).flatten(2)  # [B, N, V]
        inter = (pred * true).sum(dim=2)  # [B, N]
        total = pred.sum(dim=2) + true.sum(dim=2)  # [B, N]
        present = true.sum(dim=2) > 0  # [B, N]
        dice = torch.where(present, 2 * inter / total.clamp_min(1), torch.zeros_like(inter))
        return dice.sum(dim=1) / present.sum(dim=1).clamp_min(1)

