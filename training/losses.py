"""Losses for training and attacks."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceCELoss

from attacks.frequency import dct

__all__ = ["FREQ_NORMS", "DeepSupervisionLoss", "FusedDiceCE", "build_dice_ce",
           "frequency_consistency_loss", "full_resolution"]


def build_dice_ce(smooth_nr: float = 0.0, smooth_dr: float = 1e-6, fused: bool = False) -> nn.Module:
    """The reference's segmentation loss (the paper's code release), used by training and attacks.

    Takes logits ``[B, N, H, W, D]`` and integer labels ``[B, 1, H, W, D]``. ``fused`` gives
    :class:`FusedDiceCE`: the same loss in fewer passes over the logits, with other float rounding.
    """
    if fused:
        return FusedDiceCE(smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr)


class _DiceCE(torch.autograd.Function):
    """Soft Dice (squared denominators, mean over samples and classes) plus mean cross-entropy,
    from one softmax, with the gradient written out.

    With ``p = softmax(x)`` over classes, ``t`` the one-hot labels, per sample and class
    ``I = sum p t``, ``P = sum p^2``, ``G = sum t`` over voxels and ``D = P + G + smooth_dr``:

        loss = mean_(b,c) [1 - (2 I + smooth_nr) / D] + mean_v [-log p_y]

    ``dloss/dp = (-2 t / D + 2 (2 I + smooth_nr) p / D^2) / K`` (``K`` samples x classes), taken
    through the softmax's Jacobian ``dx = p (dp - sum_c p dp)``; the cross-entropy adds
    ``(p - t) / M`` (``M`` samples x voxels).
    """

    @staticmethod
    def forward(ctx, logits, index, smooth_nr, smooth_dr):  # noqa: D102
        x = logits if logits.dtype == torch.float64 else logits.float()
        b, n = x.shape[:2]
        log_p = torch.log_softmax(x, dim=1)
        ce = -log_p.flatten(2).gather(1, index).mean()
        p = log_p.exp_()  # [B, N, *S], in log_p's memory
        flat = p.flatten(2)  # [B, N, V]
        p_label = flat.gather(1, index)  # [B, 1, V]: p of each voxel's own class
        squares = torch.linalg.vector_norm(flat, 2, dim=2).square_()  # P [B, N]
        rows = index.view(b, -1)  # [B, V]
        hits = torch.zeros(b, n, dtype=x.dtype, device=x.device).scatter_add_(1, rows, p_label.view(b, -1))  # I
        counts = torch.zeros_like(hits).scatter_add_(1, rows, torch.ones_like(hits[:, :1]).expand_as(rows))  # G
        numerator = 2 * hits + smooth_nr
        denominator = squares + counts + smooth_dr
        dice = (1 - numerator / denominator).mean()
        ctx.save_for_backward(p, p_label, index, numerator, denominator)
        ctx.in_dtype = logits.dtype
        return dice + ce

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        p, p_label, index, numerator, denominator = ctx.saved_tensors
        b, n = p.shape[:2]
        voxels = p[0, 0].numel()
        a = (2 / (b * n)) / denominator  # [B, N]: -dDice/dp where t = 1, per unit t
        c = (2 / (b * n)) * numerator / denominator.square()  # [B, N]: dDice/dp per unit p
        flat = p.flatten(2)
        grad = c.unsqueeze(2) * flat  # dDice/dp without the label term, [B, N, V]
        a_label = a.gather(1, index.view(b, -1)).view(b, 1, -1)  # [B, 1, V]
        # sum_c p dp = sum_c c p^2 - a_y p_y
        weighted = (grad * flat).sum(dim=1, keepdim=True) - a_label * p_label
        grad.sub_(weighted).add_(1 / (b * voxels)).mul_(flat)  # p (dp - sum_c p dp) + p / M
        grad.scatter_add_(1, index, -(a_label * p_label + 1 / (b * voxels)))  # the label terms: -a p_y, -1 / M
        grad.mul_(grad_out)
        return grad.view_as(p).to(ctx.in_dtype), None, None, None


def full_resolution(logits: torch.Tensor | list | tuple) -> torch.Tensor:
    """The full-resolution logits of a model output: the tensor itself, or the first of a
    deep-supervision list ``[full, coarser, ...]`` (UNETR++ with ``--unetrpp_deep_supervision``)."""
    return logits[0] if isinstance(logits, (list, tuple)) else logits


class DeepSupervisionLoss(nn.Module):
    """``loss(logits, labels)`` on one output, or a weighted sum over a deep-supervision list.

    For a list ``[full, 1/2, 1/4, ...]`` the weights are ``1, 1/2, 1/4, ...`` normalised to sum 1 and
    the labels are resampled to each output's size by nearest neighbour (nnU-Net's deep supervision,
    as UNETR++ trains). A single tensor goes to ``loss`` unchanged, so models without deep supervision
    train exactly as before.

    Args:
        loss: ``loss(logits [B, N, H, W, D], labels [B, 1, H, W, D]) -> scalar``.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor | list | tuple, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, (list, tuple)):
            return self.loss(logits, labels)
        weights = [0.5 ** i for i in range(len(logits))]
        total = sum(weights)
        loss = 0.0
        for weight, out in zip(weights, logits):
            target = labels
            if tuple(out.shape[2:]) != tuple(labels.shape[2:]):
                target = nn.functional.interpolate(labels.float(), size=out.shape[2:], mode="nearest")
            loss = loss + (weight / total) * self.loss(out, target)
        return loss


class FusedDiceCE(nn.Module):
    """The release's Dice-CE (MONAI ``DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)``)
    computed from one softmax with a written-out gradient: about a third of the passes over the
    ``[B, N, *S]`` logits, and no one-hot volume. The same formula; float rounding differs from
    MONAI's (relative 1e-6 in float32), so gradient signs can flip where the gradient is ~0.

    Takes logits ``[B, N, *S]`` and integer-valued labels ``[B, 1, *S]``; computes in float32
    (float64 logits stay float64) and returns the gradient in the logits' dtype.
    """

    def __init__(self, smooth_nr: float = 0.0, smooth_dr: float = 1e-6) -> None:
        super().__init__()
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != logits.dim() or labels.shape[1] != 1 or labels.shape[2:] != logits.shape[2:]:
            raise ValueError(f"labels must be [B, 1, *S] for logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
        index = labels.flatten(2).long()  # [B, 1, V]
        return _DiceCE.apply(logits, index, self.smooth_nr, self.smooth_dr)


FREQ_NORMS = ("relative", "l1")
"""Reductions of :func:`frequency_consistency_loss`."""


def _check_norm(norm: str) -> None:
    if norm not in FREQ_NORMS:
        raise ValueError(f"unknown frequency-consistency norm {norm!r}; valid: {', '.join(FREQ_NORMS)}")


def frequency_consistency_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, norm: str = "relative"
) -> torch.Tensor:
    """Frequency-consistency regulariser of VAFT (the paper's Eq. 4, as its code release computes it).

    Both logit volumes go through an orthonormal 3D DCT-II over the whole ROI (the last
    three dims, as the reference does with one 96³ block per ROI); the loss is the L1
    distance between the two spectra:

    - ``"relative"`` (default, the reference's training code):
      ``sum|DCT(clean) - DCT(adv)| / sum|DCT(clean)|``, both sums over the whole batch
      (all samples, classes and frequencies at once, not per sample). Scale-free, so it
      adds to the two Dice-CE terms with weight 1.
    - ``"l1"`` (the paper's Eq. 4 as printed): ``sum|DCT(clean) - DCT(adv)|``, a plain
      sum over the whole batch (no mean), so it grows with ``B·N·H·W·D``; weight it
      accordingly.

    As in the reference, gradients flow into both inputs (the clean logits are not
    detached). The transform and sums run in float32 outside autocast, so AMP training
    cannot overflow the sums; the result has that dtype (float64 inputs stay float64).

    Args:
        logits_clean: model output on clean images, ``[B, N, H, W, D]``.
        logits_adv: model output on adversarial images, same shape.
        norm: ``"relative"`` or ``"l1"``.

    Returns:
        Scalar loss.

    Raises:
        ValueError: unknown ``norm``, shapes that differ or are not ``[B, N, H, W, D]``.
    """
    _check_norm(norm)
    if logits_clean.shape != logits_adv.shape:
        raise ValueError(
            f"logits_clean and logits_adv must have the same shape, got {tuple(logits_clean.shape)} "
            f"and {tuple(logits_adv.shape)}"
        )
    if logits_clean.ndim != 5:
        raise ValueError(f"expected logits [B, N, H, W, D], got shape {tuple(logits_clean.shape)}")
    dtype = torch.promote_types(logits_clean.dtype, torch.float32)
    with torch.autocast(device_type=logits_clean.device.type, enabled=False):
        spec_clean = dct(logits_clean.to(dtype), ndim=3)  # [B, N, H, W, D]
        spec_adv = dct(logits_adv.to(dtype), ndim=3)  # [B, N, H, W, D]
        distance = (spec_clean - spec_adv).abs().sum()
        if norm == "l1":
            return distance
        # the reference divides unguarded; the floor only turns 0/0 (all-zero logits) into 0
        return distance / spec_clean.abs().sum().clamp_min(torch.finfo(dtype).tiny)
