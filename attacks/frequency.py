"""Numerical core of the frequency attack: block DCT, differentiable quantisation.

Everything here is vectorised: the DCT is a product with a cached orthonormal
DCT-II matrix along each transformed axis, and blocks are formed by
reshape/permute only. 2D and 3D share one code path; the number of transformed
axes is the length of ``block_size`` (or ``ndim``).

Tensors keep the dtype and device of their input, so float64 inputs give float64
results (the tests compare against ``scipy.fft`` to 1e-9).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "dct_matrix",
    "dct",
    "idct",
    "split_blocks",
    "merge_blocks",
    "block_dct",
    "block_idct",
    "phi_diff",
    "quantize",
    "dequantize",
    "quantize_dequantize",
    "normalize_slices",
    "clip_to_unit",
    "count_unspanned_slices",
    "renormalisation_share",
    "blockwise_matmul",
]


def dct_matrix(
    n: int, dtype: torch.dtype = torch.float32, device: Optional[Union[str, torch.device]] = None
) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``M`` with ``dct(x) = M @ x`` for a length-``n`` vector.

    ``M[k, i] = c_k cos(pi (2 i + 1) k / (2 n))`` with ``c_0 = sqrt(1/n)`` and
    ``c_k = sqrt(2/n)`` otherwise, so ``M^T`` is the inverse. Built in float64,
    then cast; cached per ``(n, dtype, device)``. Do not modify the returned tensor.

    Args:
        n: transform length (a block side), ``n >= 1``.
        dtype: floating dtype of the result.
        device: device of the result (default CPU).

    Returns:
        ``[n, n]`` matrix, rows indexed by frequency.
    """
    return _cached_dct_matrix(int(n), dtype, torch.device(device if device is not None else "cpu"))


@functools.lru_cache(maxsize=None)
def _cached_dct_matrix(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if n < 1:
        raise ValueError(f"DCT length must be >= 1, got {n}")
    # A matrix first built under inference_mode would be an inference tensor and
    # could not take part in autograd later, so build it outside that mode.
    with torch.inference_mode(False):
        freq = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # [n, 1]
        pos = torch.arange(n, dtype=torch.float64).unsqueeze(0)  # [1, n]
        matrix = torch.cos(math.pi * (2 * pos + 1) * freq / (2 * n)) * math.sqrt(2.0 / n)  # [n, n]
        matrix[0] /= math.sqrt(2.0)
        return matrix.to(dtype=dtype, device=device)


def blockwise_matmul(x: torch.Tensor, matrices: Sequence[Optional[torch.Tensor]], block_size: Sequence[int]) -> torch.Tensor:
    """Multiply every block by a matrix along each of the last ``k = len(block_size)`` axes.

    Along axis ``j`` each block's length-``b_j`` fibres ``v`` become ``matrices[j] @ v``
    (``matrices[j]`` is ``[o_j, b_j]``; ``None`` means identity), so the side of the
    result along that axis is ``n_j * o_j``. Blocks are never cut out: axis ``j`` is
    viewed as ``[n_j, b_j]`` in the contiguous tensor and one (batched) matrix product
    per axis does the work, its output already in place. This is the engine of the
    block DCT (square matrices) and of the block-wise SSIM filter (``[b - 2, b]``).

    Args:
        x: ``[..., S_1, ..., S_k]``, each ``S_j`` divisible by ``block_size[j]``.
        matrices: ``k`` matrices ``[o_j, b_j]`` or ``None``, dtype and device of ``x``.
        block_size: ``(b_1, ..., b_k)``, 2 or 3 sides.

    Returns:
        ``[..., n_1 o_1, ..., n_k o_k]``.

    Raises:
        ValueError: a side is not divisible by its block side.
    """
    k = len(block_size)
    lead, sizes = x.shape[:-k], list(x.shape[-k:])
    grid = _block_grid(sizes, block_size)
    x = x.contiguous()
    for j in reversed(range(k)):  # the last axis first: a plain GEMM on the largest tensor
        matrix = matrices[j]
        if matrix is None:
            continue
        b = block_size[j]
        after = math.prod(sizes[j + 1 :])
        if after == 1:
            x = x.reshape(-1, b) @ matrix.t()  # [rows, o_j]
        else:
            x = torch.matmul(matrix, x.reshape(-1, b, after))  # [rows, o_j, after]
        sizes[j] = grid[j] * matrix.shape[0]
    return x.reshape(*lead, *sizes)


def _check_ndim(ndim: int, x: torch.Tensor) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if x.ndim < ndim:
        raise ValueError(f"expected a tensor with at least {ndim} dims, got shape {tuple(x.shape)}")


def _dct_matrices(sizes: Sequence[int], x: torch.Tensor, inverse: bool) -> list:
    """DCT matrices for ``sizes`` (``None`` for length 1, the identity), transposed when ``inverse``."""
    mats = [dct_matrix(n, x.dtype, x.device) if n > 1 else None for n in sizes]
    return [m.t() if inverse and m is not None else m for m in mats]


def dct(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Orthonormal DCT-II over the last ``ndim`` dims (``scipy.fft.dctn(norm="ortho")``).

    Args:
        x: ``[..., n1, n2]`` or ``[..., n1, n2, n3]`` floating tensor.
        ndim: 2 or 3, number of trailing dims to transform.

    Returns:
        Coefficients, same shape as ``x``.
    """
    _check_ndim(ndim, x)
    sizes = tuple(x.shape[-ndim:])
    return blockwise_matmul(x, _dct_matrices(sizes, x, inverse=False), sizes)


def idct(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`dct` (orthonormal DCT-III) over the last ``ndim`` dims.

    Args:
        x: ``[..., n1, n2]`` or ``[..., n1, n2, n3]`` coefficients.
        ndim: 2 or 3.

    Returns:
        Signal, same shape as ``x``.
    """
    _check_ndim(ndim, x)
    sizes = tuple(x.shape[-ndim:])
    return blockwise_matmul(x, _dct_matrices(sizes, x, inverse=True), sizes)


def _block_grid(spatial_shape: Sequence[int], block_size: Sequence[int]) -> Tuple[int, ...]:
    """Number of blocks along each axis; raises if a side is not divisible."""
    spatial_shape = tuple(int(s) for s in spatial_shape)
    block_size = tuple(int(b) for b in block_size)
    if len(block_size) not in (2, 3) or any(b < 1 for b in block_size):
        raise ValueError(f"block_size must be 2 or 3 positive ints, got {block_size}")
    if len(spatial_shape) != len(block_size) or any(s % b for s, b in zip(spatial_shape, block_size)):
        raise ValueError(f"spatial shape {spatial_shape} is not divisible by block_size {block_size}")
    return tuple(s // b for s, b in zip(spatial_shape, block_size))


def split_blocks(x: torch.Tensor, block_size: Sequence[int]) -> torch.Tensor:
    """Cut the last ``k = len(block_size)`` dims into non-overlapping blocks.

    Blocks are listed in row-major order of the block grid (last axis fastest),
    the order of ``monai.data.utils.dense_patch_slices(shape, block, block)``.

    Args:
        x: ``[..., H, W, D]`` (3D blocks) or ``[..., H, W]`` (2D blocks).
        block_size: ``(bh, bw, bd)`` or ``(bh, bw)``; each side must divide its dim.

    Returns:
        ``[..., n_blocks, bh, bw(, bd)]``.

    Raises:
        ValueError: a spatial side is not divisible by its block side.
    """
    k = len(block_size)
    lead, spatial = x.shape[:-k], x.shape[-k:]
    grid = _block_grid(spatial, block_size)
    split_shape = [d for n, b in zip(grid, block_size) for d in (n, b)]
    x = x.reshape(*lead, *split_shape)  # [..., n1, b1, n2, b2(, n3, b3)]
    nl = len(lead)
    grid_axes = [nl + 2 * j for j in range(k)]
    block_axes = [nl + 2 * j + 1 for j in range(k)]
    x = x.permute(*range(nl), *grid_axes, *block_axes)  # [..., n1, n2(, n3), b1, b2(, b3)]
    return x.reshape(*lead, math.prod(grid), *block_size)  # [..., n_blocks, b1, b2(, b3)]


def merge_blocks(blocks: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`split_blocks`.

    Args:
        blocks: ``[..., n_blocks, bh, bw(, bd)]`` in the order of :func:`split_blocks`.
        spatial_shape: ``(H, W(, D))`` of the merged tensor.

    Returns:
        ``[..., H, W(, D)]``.

    Raises:
        ValueError: sizes do not fit together.
    """
    k = len(spatial_shape)
    block_size = tuple(blocks.shape[-k:])
    grid = _block_grid(spatial_shape, block_size)
    lead = blocks.shape[: -k - 1]
    if blocks.shape[-k - 1] != math.prod(grid):
        raise ValueError(
            f"expected {math.prod(grid)} blocks of {block_size} for spatial shape {tuple(spatial_shape)}, "
            f"got {blocks.shape[-k - 1]}"
        )
    x = blocks.reshape(*lead, *grid, *block_size)  # [..., n1, n2(, n3), b1, b2(, b3)]
    nl = len(lead)
    interleaved = [a for j in range(k) for a in (nl + j, nl + k + j)]
    x = x.permute(*range(nl), *interleaved)  # [..., n1, b1, n2, b2(, n3, b3)]
    return x.reshape(*lead, *spatial_shape)  # [..., H, W(, D)]


def block_dct(x: torch.Tensor, block_size: Sequence[int]) -> torch.Tensor:
    """DCT of every block, in place of the blocks (no split/merge copies).

    Equal to ``merge_blocks(dct(split_blocks(x, block_size), k), spatial)`` with
    ``k = len(block_size)``, computed by :func:`blockwise_matmul`. A block side of 1
    leaves that axis untouched, so ``(bh, bw, 1)`` on ``[B, C, H, W, D]`` is the 2D
    block DCT of every axial slice.

    Args:
        x: ``[..., H, W, D]`` (3D blocks) or ``[..., H, W]`` (2D blocks).
        block_size: ``(bh, bw, bd)`` or ``(bh, bw)``.

    Returns:
        Block-wise coefficients, same shape as ``x`` (contiguous).

    Raises:
        ValueError: a spatial side is not divisible by its block side.
    """
    return blockwise_matmul(x, _dct_matrices(block_size, x, inverse=False), block_size)


def block_idct(x: torch.Tensor, block_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`block_dct`; same arguments and shapes."""
    return blockwise_matmul(x, _dct_matrices(block_size, x, inverse=True), block_size)


def phi_diff(x: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    """Differentiable rounding of AdvDrop / DSQ (as the paper's code release uses it).

    ``phi(x) = floor(x) + (tanh((x - (floor(x) + 0.5)) k) s + 1) / 2`` with
    ``k = log(2/alpha - 1)`` and ``s = 1/(1 - alpha)``; it is exact at integers and
    tends to ``round`` as ``alpha -> 0``. ``alpha`` is cast to ``x``'s dtype first, so
    float32 inputs follow the reference's float32 arithmetic.

    Args:
        x: any floating tensor.
        alpha: softness in ``(0, 1)``; float or 0-dim tensor.

    Returns:
        Tensor of ``x``'s shape; gradient flows through the ``tanh`` term.
    """
    alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    scale = 1 / (1 - alpha)
    sharpness = torch.log(2 / alpha - 1)
    floor = torch.floor(x.detach())  # zero gradient anyway; detaching skips zero-filled backward work
    phi = torch.tanh((x - (floor + 0.5)) * sharpness) * scale
    return (phi + 1) / 2 + floor


def quantize(coeffs: torch.Tensor, q: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    """Differentiably quantise DCT coefficients: ``phi_diff(coeffs / q, alpha)``.

    Args:
        coeffs: DCT coefficients, any shape.
        q: quantisation table, broadcastable to ``coeffs``.
        alpha: rounding softness, see :func:`phi_diff`.
    """
    return phi_diff(coeffs / q, alpha)


def dequantize(coeffs: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Undo the scaling of :func:`quantize`: ``coeffs * q``."""
    return coeffs * q


def quantize_dequantize(coeffs: torch.Tensor, q: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    """``dequantize(quantize(coeffs, q, alpha), q)`` in one autograd node.

    Same forward numbers as the two calls (same operations in the same order); the
    backward is one multiplication by ``d(out)/dq = phi(u) - u phi'(u)`` with
    ``u = coeffs / q`` (and by ``phi'(u)`` for ``coeffs``), instead of a dozen
    full-volume operations. This is VAFA's per-step hot path.

    Args:
        coeffs: DCT coefficients, any shape.
        q: quantisation tables, same shape as ``coeffs``.
        alpha: rounding softness, see :func:`phi_diff`.

    Returns:
        Dequantised coefficients, shape of ``coeffs``.
    """
    alpha = torch.as_tensor(alpha, dtype=coeffs.dtype, device=coeffs.device)
    return _QuantizeDequantize.apply(coeffs, q, alpha)


class _QuantizeDequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeffs, q, alpha):
        scale = 1 / (1 - alpha)
        sharpness = torch.log(2 / alpha - 1)
        u = coeffs / q
        floor = torch.floor(u)
        t = torch.tanh((u - (floor + 0.5)) * sharpness)
        phi = (t * scale).add_(1).div_(2).add_(floor)  # (tanh(.) s + 1) / 2 + floor, as phi_diff
        out = phi * q
        slope = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            slope = (1 - t * t).mul_(sharpness * scale / 2)  # phi'(u) = k s (1 - tanh^2) / 2
        d_q = torch.addcmul(phi, u, slope, value=-1) if ctx.needs_input_grad[1] else None  # phi(u) - u phi'(u)
        ctx.save_for_backward(slope if ctx.needs_input_grad[0] else None, d_q)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        slope, d_q = ctx.saved_tensors
        grad_coeffs = grad * slope if ctx.needs_input_grad[0] else None
        grad_q = grad * d_q if ctx.needs_input_grad[1] else None
        return grad_coeffs, grad_q, None


def normalize_slices(x: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Min-max normalise every axial slice to [0, 1], as the reference does after VAFA.

    Min and max are taken over ``(H, W)`` for each ``(B, C, D)``:
    ``(x - min) / (max - min)``, the reference's numbers. A slice whose max equals
    its min (where the reference divides by zero) becomes ``clamp(x / scale, 0, 1)``
    instead. Both cases are one subtraction and one division by per-slice constants.

    Args:
        x: ``[B, C, H, W, D]`` on the ``[0, scale]`` scale.
        scale: intensity scale used for constant slices.

    Returns:
        ``[B, C, H, W, D]`` in [0, 1] (up to rounding), finite with finite gradients.
    """
    low = torch.amin(x, dim=(2, 3), keepdim=True)  # [B, C, 1, 1, D]
    high = torch.amax(x, dim=(2, 3), keepdim=True)  # [B, C, 1, 1, D]
    span = high - low
    constant = span == 0
    # On a constant slice x == low, so (x - (low - scale * c)) / scale = c = clamp(low / scale, 0, 1).
    target = torch.clamp(low / scale, 0, 1)
    shift = torch.where(constant, low - scale * target, low)
    denominator = torch.where(constant, torch.full_like(span, scale), span)
    return (x - shift) / denominator


def clip_to_unit(x: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Rescale to [0, 1] by a fixed ``scale`` and clip: ``clamp(x / scale, 0, 1)``.

    The paper's Eq. 1 / Algorithm 1 output of VAFA (the merged inverse DCT of the
    dequantised blocks, clipped), as opposed to the code release's per-slice
    min-max renormalisation (:func:`normalize_slices`). The gradient is torch's
    for ``clamp``: zero where a voxel is clipped.

    Args:
        x: any floating tensor on the ``[0, scale]`` scale.
        scale: intensity scale, ``> 0``.

    Returns:
        Tensor of ``x``'s shape in [0, 1].
    """
    return torch.clamp(x / scale, 0, 1)


def count_unspanned_slices(volume: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """Number of axial slices that do not span [0, 1], per sample.

    A slice ``volume[b, c, :, :, d]`` (the slices :func:`normalize_slices` rescales)
    counts when its min is above ``low`` or its max is below ``high``; on such
    slices the min-max renormalisation stretches intensities.

    Args:
        volume: ``[B, C, H, W, D]`` images in [0, 1].
        low: a slice whose min is ``> low`` counts.
        high: a slice whose max is ``< high`` counts.

    Returns:
        ``[B]`` int64 counts (over ``C`` and ``D``), on ``volume``'s device;
        ``.sum()`` gives the batch total.

    Raises:
        ValueError: ``volume`` is not 5-dimensional.
    """
    if volume.ndim != 5:
        raise ValueError(f"volume must be [B, C, H, W, D], got shape {tuple(volume.shape)}")
    low_slice = torch.amin(volume, dim=(2, 3))  # [B, C, D]
    high_slice = torch.amax(volume, dim=(2, 3))  # [B, C, D]
    unspanned = (low_slice > low) | (high_slice < high)  # [B, C, D]
    return unspanned.sum(dim=(1, 2))  # [B]


def renormalisation_share(
    diff_sq: Union[float, torch.Tensor], pert_sq: Union[float, torch.Tensor]
) -> float:
    """Share of the perturbation due to the slice renormalisation: ``sqrt(diff_sq / pert_sq)``.

    With ``diff_sq = sum((slice(X') - clip(X'))^2)`` and ``pert_sq = sum((slice(X') - X)^2)``
    (VAFA's ``renormalisation_parts``), this is
    ``||slice(X') - clip(X')||_2 / ||slice(X') - X||_2``. Tensors are summed first,
    so per-sample or per-tile parts can be passed as they are (sums of squares add
    up across tiles and samples; norms would not).

    Args:
        diff_sq: sum(s) of squares of ``slice(X') - clip(X')``, ``>= 0``.
        pert_sq: sum(s) of squares of ``slice(X') - X``, ``>= 0``.

    Returns:
        The share, ``>= 0`` (it may exceed 1); 0.0 when both are 0, and 1.0 when
        ``pert_sq`` is 0 but ``diff_sq`` is not (the whole change is the
        renormalisation's).

    Raises:
        ValueError: a negative or non-finite sum.
    """
    diff = float(torch.as_tensor(diff_sq, dtype=torch.float64).sum())
    pert = float(torch.as_tensor(pert_sq, dtype=torch.float64).sum())
    if not (math.isfinite(diff) and math.isfinite(pert)) or diff < 0 or pert < 0:
        raise ValueError(f"sums of squares must be finite and >= 0, got diff_sq={diff}, pert_sq={pert}")
    if pert == 0:
        return 0.0 if diff == 0 else 1.0
    return math.sqrt(diff / pert)
