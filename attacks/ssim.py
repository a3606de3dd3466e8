"""Block-wise SSIM, the perceptual term of VAFA-3D (the paper's Eq. 2; SSIM as pytorch-msssim computes it).

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
from torch.autograd.function import once_differentiable

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

    The reference's statistics are computed once here; each call filters three
    maps of ``y`` and has a hand-written backward (a few products and the
    transposed filters), so the term stays cheap next to a network's step.

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
        x = reference.detach().contiguous()
        window = gaussian_window(win_size, win_sigma).to(device=x.device, dtype=x.dtype)
        self.filters = [valid_filter_matrix(b, window) for b in self.block_size]
        self.windows = tuple(b if f is None else f.shape[0] for b, f in zip(self.block_size, self.filters))
        self.shape = x.shape
        self.twice_x = 2 * x
        mu_x = self.filter(x)  # [..., n1 o1, n2 o2(, n3 o3)]
        self.twice_mu_x = 2 * mu_x
        mu_xx = mu_x * mu_x
        self.luminance_den = mu_xx + self.c1  # mu_x^2 + c1
        self.contrast_den = (self.filter(x * x) - mu_xx).add_(self.c2)  # sigma_x^2 + c2

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian 'valid' filter inside every block: ``[..., n_j b_j] -> [..., n_j o_j]``."""
        return blockwise_matmul(x, self.filters, self.block_size)

    def filter_transposed(self, x: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`filter`: ``[..., n_j o_j] -> [..., n_j b_j]``."""
        return blockwise_matmul(x, [None if f is None else f.t() for f in self.filters], self.windows)

    def block_view(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., n1 o1, n2 o2(, n3 o3)] -> [..., n1, o1, n2, o2(, n3, o3)]`` (a view)."""
        k = len(self.block_size)
        grid = [s // b for s, b in zip(self.shape[-k:], self.block_size)]
        return x.reshape(*x.shape[:-k], *[d for n, o in zip(grid, self.windows) for d in (n, o)])

    def window_dims(self, lead: int) -> list:
        """Window axes of :meth:`block_view` for ``lead`` leading dims."""
        return [lead + 2 * j + 1 for j in range(len(self.block_size))]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Mean block SSIM of ``y`` (same shape as the reference) as a 0-dim tensor, differentiable in ``y``."""
        if y.shape != self.shape:
            raise ValueError(f"expected shape {tuple(self.shape)} (the reference's), got {tuple(y.shape)}")
        return _BlockSSIMFunction.apply(y, self)


class _BlockSSIMFunction(torch.autograd.Function):
    """SSIM map ``S = a1 a2 / (d1 d2)`` with ``a1 = 2 mu_x mu_y + c1``, ``d1 = mu_x^2 + mu_y^2 + c1``,
    ``a2 = 2 (E[xy] - mu_x mu_y) + c2``, ``d2 = sigma_x^2 + E[y^2] - mu_y^2 + c2``, and its gradient."""

    @staticmethod
    def forward(ctx, y, ssim):
        y = y.contiguous()
        mu_y = ssim.filter(y)
        twice_mu_xy = ssim.twice_mu_x * mu_y
        a1 = twice_mu_xy + ssim.c1
        d1 = torch.addcmul(ssim.luminance_den, mu_y, mu_y)
        a2 = ssim.filter(ssim.twice_x * y).sub_(twice_mu_xy).add_(ssim.c2)
        d2 = torch.addcmul(ssim.filter(y * y).add_(ssim.contrast_den), mu_y, mu_y, value=-1)
        ssim_map = (a1 * a2).div_(d1 * d2)  # [..., n1 o1, n2 o2(, n3 o3)]
        lead = y.ndim - len(ssim.block_size)
        per_block = ssim.block_view(ssim_map).mean(dim=ssim.window_dims(lead), keepdim=True)  # [..., n1, 1, n2, 1(, n3, 1)]
        if ssim.nonnegative:
            per_block = torch.relu(per_block)
        ctx.ssim = ssim
        ctx.save_for_backward(y, mu_y, a1, a2, d1, d2, ssim_map, per_block)
        return per_block.mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        ssim = ctx.ssim
        y, mu_y, a1, a2, d1, d2, ssim_map, per_block = ctx.saved_tensors
        # d(result)/dS per window: 1 / (windows per block * blocks), 0 in blocks clipped by the relu.
        weight = grad / (ssim_map.numel())  # every block has the same number of windows
        if ssim.nonnegative:
            weight = weight * (per_block > 0)
        weighted = ssim.block_view(ssim_map) * weight  # [..., n1, o1, n2, o2(, n3, o3)]
        weighted = weighted.reshape(ssim_map.shape)  # w S
        grad_e_xy2 = weighted / a2  # dS/d(2 E[xy]) = S / a2
        minus_grad_e_yy = weighted / d2  # dS/dE[y^2] = -S / d2
        grad_mu_y = (weighted / a1).sub_(grad_e_xy2).mul_(ssim.twice_mu_x)  # 2 mu_x (S/a1 - S/a2)
        grad_mu_y.addcmul_(mu_y, minus_grad_e_yy - weighted / d1, value=2)  # + 2 mu_y (S/d2 - S/d1)
        grad_y = ssim.filter_transposed(grad_mu_y)
        grad_y.addcmul_(y, ssim.filter_transposed(minus_grad_e_yy), value=-2)  # d E[y^2] / dy = 2 y F^T
        grad_y.addcmul_(ssim.twice_x, ssim.filter_transposed(grad_e_xy2))  # d(2 E[xy]) / dy = 2 x F^T
        return grad_y, None


def block_ssim(x: torch.Tensor, y: torch.Tensor, block_size: Sequence[int], **kwargs) -> torch.Tensor:
    """Functional form of :class:`BlockSSIM`: ``BlockSSIM(x, block_size, **kwargs)(y)``.

    Raises:
        ValueError: ``x`` and ``y`` differ in shape, even ``win_size``, or indivisible sides.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return BlockSSIM(x, block_size, **kwargs)(y)
