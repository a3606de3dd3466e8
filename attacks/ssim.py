"""Block-wise SSIM, the perceptual term of VAFA-3D (DESIGN §4, step 5).

The release computes ``pytorch_msssim.ssim`` with every block fed as its own
image (``data_range=1, win_size=3, nonnegative_ssim=True``, averaged). Here the
separable Gaussian 'valid' filter of a block side is a small banded matrix
applied by :func:`attacks.frequency.blockwise_matmul` to the un-split volume, so
windows never cross a block edge and no block is ever copied out. The statistics
of the clean image are computed once (:class:`BlockSSIM`) and reused every step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .frequency import blockwise_matmul

__all__ = ["BlockSSIM", "block_ssim"]


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """1D Gaussian window summing to 1, built in float32 as ``pytorch_msssim`` builds it."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def valid_filter_matrix(n: int, window: torch.Tensor) -> Optional[torch.Tensor]:
    """``[n - w + 1, n]`` matrix of a 'valid' correlation with ``window``.

    ``None`` (no smoothing) when ``n < w``, as ``pytorch_msssim`` skips such a side.
    """
    w = window.numel()
    if n < w:
        return None
    matrix = torch.zeros(n - w + 1, n, dtype=window.dtype, device=window.device)
    for offset in range(w):
        matrix.diagonal(offset).copy_(window[offset])
    return matrix


class BlockSSIM:
    """SSIM of images against a fixed reference, averaged over non-overlapping blocks.

    ``BlockSSIM(x, block)(y)`` equals ``pytorch_msssim.ssim(blocks(x), blocks(y),
    data_range, size_average=True, win_size, win_sigma, K=(k1, k2),
    nonnegative_ssim=nonnegative)`` with every block as one image, up to float
    rounding: SSIM is averaged over the windows inside each block, clipped at 0
    when ``nonnegative``, then averaged over blocks (and leading dims).

    Args:
        reference: ``[..., H, W, D]`` (3D blocks) or ``[..., H, W]`` (2D blocks) in
            ``[0, data_range]``; treated as a constant.
        block_size: ``(bh, bw, bd)`` or ``(bh, bw)``, dividing the trailing dims.
        data_range: value range, for the constants ``(k * data_range)^2``.
        win_size: odd Gaussian window length.
        win_sigma: Gaussian window standard deviation.
        k1: luminance constant.
        k2: contrast constant.
        nonnegative: clip each block's SSIM at 0.

    Raises:
        ValueError: even ``win_size`` or a side not divisible by its block side.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        block_size: Sequence[int],
        data_range: float = 1.0,
        win_size: int = 3,
        win_sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        nonnegative: bool = True,
    ):
        if win_size % 2 != 1:
            raise ValueError(f"win_size must be odd, got {win_size}")
        self.block_size = tuple(block_size)
        self.nonnegative = nonnegative
        self.c1 = (k1 * data_range) ** 2
        self.c2 = (k2 * data_range) ** 2
        x = reference.detach()
        window = gaussian_window(win_size, win_sigma).to(device=x.device, dtype=x.dtype)
        self.filters = [valid_filter_matrix(b, window) for b in self.block_size]
        self.shape = x.shape
        self.mu_x = self._filter(x)  # [..., n1 o1, n2 o2(, n3 o3)]
        self.luminance_den = self.mu_x * self.mu_x + self.c1
        self.contrast_den = self._filter(x * x) - self.mu_x * self.mu_x + self.c2
        self.reference = x

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        return blockwise_matmul(x, self.filters, self.block_size)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Mean block SSIM of ``y`` (same shape as the reference) as a 0-dim tensor, differentiable in ``y``."""
        if y.shape != self.shape:
            raise ValueError(f"expected shape {tuple(self.shape)} (the reference's), got {tuple(y.shape)}")
        mu_y = self._filter(y)
        e_yy = self._filter(y * y)
        e_xy = self._filter(self.reference * y)
        mu_yy = mu_y * mu_y
        mu_xy = self.mu_x * mu_y
        luminance = (2 * mu_xy + self.c1) / (self.luminance_den + mu_yy)
        contrast = (2 * (e_xy - mu_xy) + self.c2) / (self.contrast_den + (e_yy - mu_yy))
        ssim_map = luminance * contrast  # [..., n1 o1, n2 o2(, n3 o3)]
        k = len(self.block_size)
        lead = ssim_map.shape[:-k]
        grid = [s // b for s, b in zip(self.shape[-k:], self.block_size)]
        windows = [s // n for s, n in zip(ssim_map.shape[-k:], grid)]
        per_window = ssim_map.reshape(*lead, *[d for n, o in zip(grid, windows) for d in (n, o)])  # [..., n1, o1, ...]
        per_block = per_window.mean(dim=[len(lead) + 2 * j + 1 for j in range(k)])  # [..., n1, n2(, n3)]
        if self.nonnegative:
            per_block = torch.relu(per_block)
        return per_block.mean()


def block_ssim(x: torch.Tensor, y: torch.Tensor, block_size: Sequence[int], **kwargs) -> torch.Tensor:
    """Functional form of :class:`BlockSSIM`: ``BlockSSIM(x, block_size, **kwargs)(y)``.

    Raises:
        ValueError: ``x`` and ``y`` differ in shape, even ``win_size``, or indivisible sides.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return BlockSSIM(x, block_size, **kwargs)(y)
