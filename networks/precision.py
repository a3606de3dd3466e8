"""Precision of the model passes (``--precision``) and ``torch.compile`` (``--compile``).

``fp32`` runs the network as built (bit-identical to a run without the flag). ``bf16`` and
``fp16`` run its forward pass under ``torch.autocast`` and hand float32 logits back, so
losses, gradient signs, VAFA's DCT, quantisation and SSIM, and every metric stay in
float32: only the network's own layers run at half precision.

Half-precision input gradients: float16 has 5 exponent bits, and the gradient of a loss
averaged over a million voxels is ~1e-7 per logit, below float16's normal range; most of
it would flush to zero inside the network and the attack would stall. Under ``fp16`` the
wrapper therefore scales the gradient entering the network by a power of two (its
largest logit gradient brought to about 1) and divides it out at the input — exact in
float32, so the input gradient keeps its value and only gains precision. bfloat16 has
float32's exponent range and needs no scaling. Training steps use their own scaler
(``torch.amp.GradScaler``, see :mod:`trainer`); the wrapper is for passes whose
gradients are taken with respect to the input only (attacks) or not at all (inference).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional

import torch
import torch.nn as nn

from utils.errors import UserError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``--precision`` values and their autocast dtypes (``None``: no autocast)."""

GRAD_PEAK = 1.0
"""Under ``fp16``, the largest logit gradient is scaled to about this value inside the network:
every logit gradient down to 6e-5 of the largest stays a normal float16, and the network may
amplify the gradient 65504-fold on its way to the input before float16 overflows (at 2**8,
SegPGD on the demo UNETR overflowed)."""


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a ``--precision`` value (``None`` for ``fp32``).

    Raises:
        UserError: unknown value.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; valid values: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def autocast(device_type: str, precision: str):
    """``torch.autocast`` for ``precision`` on ``device_type``; a no-op context for ``fp32``."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


class _Scale:
    """The power-of-two factor one backward pass applied (shared by its two ends)."""

    value = 1.0


class _IntoNetwork(torch.autograd.Function):
    """Identity on the input; divides the scale back out of the input gradient."""

    @staticmethod
    def forward(ctx, x, scale):  # noqa: D102 - autograd API
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        grad = grad / ctx.scale.value
        if not bool(grad.isfinite().all()):
            raise UserError("the input gradient overflowed float16 inside the network (--precision fp16); "
                            "use --precision bf16 or fp32")
        return grad, None


class _OutOfNetwork(torch.autograd.Function):
    """Identity on the logits; scales their gradient so its largest entry is about :data:`GRAD_PEAK`."""

    @staticmethod
    def forward(ctx, y, scale):  # noqa: D102
        ctx.scale = scale
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        factor = _scale_for(float(grad.abs().max()) if grad.numel() else 0.0)
        ctx.scale.value = factor
        return grad * factor, None


def _scale_for(peak: float) -> float:
    """The power of two that brings a gradient's largest entry ``peak`` to about :data:`GRAD_PEAK`."""
    if not 0.0 < peak < math.inf:
        return 1.0
    return 2.0 ** math.floor(math.log2(GRAD_PEAK / peak))


class MixedPrecision(nn.Module):
    """A network whose forward pass runs under autocast, returning float32 outputs.

    Args:
        model: the network (``self.model``; its ``state_dict`` is the network's, under ``model.``).
        precision: ``"bf16"`` or ``"fp16"`` (``"fp32"`` needs no wrapper: see :func:`with_precision`).
    """

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        self.model = model
        self.precision = precision
        self.dtype = autocast_dtype(precision)

    def forward(self, x: torch.Tensor):
        scale = None
        if self.dtype == torch.float16 and torch.is_grad_enabled() and x.requires_grad:
            scale = _Scale()
            x = _IntoNetwork.apply(x, scale)
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        if isinstance(out, (list, tuple)):  # deep supervision (training mode): one output per resolution
            return type(out)(o.float() for o in out)
        out = out.float()
        return out if scale is None else _OutOfNetwork.apply(out, scale)

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model`` itself for ``fp32``, else wrapped in :class:`MixedPrecision`."""
    return model if autocast_dtype(precision) is None else MixedPrecision(model, precision)


def compiled(model: nn.Module, enabled: bool, device: Optional[torch.device] = None) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` (weights shared with ``model``), else ``model``.

    On a CPU a note says, once per process, that the first passes compile (minutes, and often
    slower than eager passes there), so a long silence is not taken for a hang. ``device``:
    where the model will run (default: where its parameters are).
    """
    if not enabled:
        return model
    device = torch.device(device) if device is not None else next((p.device for p in model.parameters()),
                                                                   torch.device("cpu"))
    if device.type == "cpu" and not _COMPILE_NOTED:
        _COMPILE_NOTED.append(True)
        logging.getLogger(__name__).warning(
            "--compile on a CPU: the first passes compile the model, which can take minutes (and compiled passes "
            "are often slower than eager ones on a CPU); drop --compile to start at once")
    return torch.compile(model)


_COMPILE_NOTED: list = []  # the CPU note of compiled() was given


def training_precision(device: torch.device, amp: bool, precision: Optional[str]) -> str:
    """Precision of the training passes: ``--precision`` when given, else the release's
    mixed precision: ``fp16`` (with a gradient scaler) on CUDA unless ``--noamp``, ``fp32``
    on other devices (the release's CUDA autocast did nothing there)."""
    if precision is not None:
        return precision
    return "fp16" if amp and device.type == "cuda" else "fp32"
