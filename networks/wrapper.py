"""Any ``torch.nn.Module`` as a model the attacks take: [0, 1] images in, one logits tensor out.

The attacks (:mod:`attacks`) call ``model(images [B, C, *S]) -> logits [B, K, *S]`` on images in [0, 1].
:class:`SegmentationModel` adapts the two usual departures from that contract:

- outputs that are a list or tuple (deep supervision: full resolution first, as nnU-Net and UNETR++ return
  them in training mode) or a dict (``{"out": ...}``, torchvision style): one entry is taken;
- networks trained on another intensity scale (HU z-scores, [-1, 1] ...): ``x * in_scale + in_shift`` maps
  [0, 1] on to it inside the model, so the attack's budget stays on the [0, 1] scale.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn


class SegmentationModel(nn.Module):
    """``module`` on [0, 1] images, returning one ``[B, K, *S]`` logits tensor.

    Args:
        module: the network.
        output: which output to use when it returns several: an index into a list/tuple (default 0, the
            full-resolution head of deep supervision) or a key of a dict (default ``"out"``, else the first).
        in_scale, in_shift: the network sees ``x * in_scale + in_shift``.

    Raises:
        TypeError: (in ``forward``) the chosen output is not a tensor.
    """

    def __init__(self, module: nn.Module, output: Optional[Union[int, str]] = None, in_scale: float = 1.0,
                 in_shift: float = 0.0):
        super().__init__()
        self.module = module
        self.output = output
        self.in_scale, self.in_shift = float(in_scale), float(in_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *S]`` in [0, 1] -> ``[B, K, *S]`` logits."""
        if (self.in_scale, self.in_shift) != (1.0, 0.0):
            x = x * self.in_scale + self.in_shift
        out = self.module(x)
        if isinstance(out, (list, tuple)):
            out = out[0 if self.output is None else self.output]
        elif isinstance(out, dict):
            key = self.output if self.output is not None else ("out" if "out" in out else next(iter(out)))
            out = out[key]
        if not torch.is_tensor(out):
            raise TypeError(f"the wrapped model's output {self.output!r} is a {type(out).__name__}, not a tensor of "
                            "logits; pass output= naming the logits")
        return out

    def extra_repr(self) -> str:
        return f"output={self.output!r}, in_scale={self.in_scale:g}, in_shift={self.in_shift:g}"
