"""attacks.frequency against independent references (scipy.fft, monai, pytorch_msssim, numpy)."""

import contextlib
import numpy as np
import pytest
import scipy.fft
import torch
from monai.data.utils import dense_patch_slices
from pytorch_msssim import ssim

from attacks.frequency import (
    block_dct,
    block_idct,
    blockwise_matmul,
    dct,
    dct_matrix,
    dequantize,
    idct,
    merge_blocks,
    normalize_slices,
    phi_diff,
    quantize,
    quantize_dequantize,
    split_blocks,
)
from attacks.ssim import BlockSSIM, block_ssim

SHAPES = [(4, 4), (8, 8), (5, 12), (32, 48), (96, 96), (4, 4, 4), (8, 8, 8), (16, 8, 4), (6, 10, 12), (96, 8, 4)]


def _data(shape, dtype, lead=(2,)):
    gen = torch.Generator().manual_seed(sum(shape))
    return torch.rand(*lead, *shape, generator=gen, dtype=torch.float64).to(dtype) * 255


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_dct_and_idct_match_scipy(shape, dtype):
    x = _data(shape, dtype)
    axes = tuple(range(-len(shape), 0))
    expected = scipy.fft.dctn(x.double().numpy(), axes=axes, norm="ortho")
    got = dct(x, len(shape))
    assert got.dtype == dtype
    if dtype == torch.float64:
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9)
    else:
        assert np.abs(got.double().numpy() - expected).max() <= 1e-5 * np.abs(expected).max()

    coeffs = torch.from_numpy(expected).to(dtype)
    expected_inv = scipy.fft.idctn(expected, axes=axes, norm="ortho")
    got_inv = idct(coeffs, len(shape))
    if dtype == torch.float64:
        np.testing.assert_allclose(got_inv.numpy(), expected_inv, rtol=0, atol=1e-9)
        np.testing.assert_allclose(idct(dct(x, len(shape)), len(shape)).numpy(), x.numpy(), rtol=0, atol=1e-9)
    else:
        assert np.abs(got_inv.double().numpy() - expected_inv).max() <= 1e-5 * np.abs(expected_inv).max()


def test_dct_matrix_is_orthonormal_and_cached():
    m = dct_matrix(8, torch.float64)
    torch.testing.assert_close(m @ m.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-12)
    assert dct_matrix(8, torch.float64, "cpu") is m
    assert dct_matrix(8, torch.float32).dtype == torch.float32


def test_dct_matrix_built_in_inference_mode_still_supports_autograd():
    with torch.inference_mode():
        dct_matrix(7, torch.float64)
    x = torch.rand(3, 7, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(dct(x, 2).sum(), x)
    assert torch.isfinite(grad).all()


def test_dct_rejects_bad_ndim():
    with pytest.raises(ValueError, match="ndim must be 2 or 3, got 4"):
        dct(torch.zeros(2, 2, 2, 2), 4)


@pytest.mark.parametrize(
    "shape, block",
    [((2, 1, 32, 48, 16), (8, 16, 4)), ((2, 3, 16, 8, 24), (4, 8, 8)), ((2, 1, 5, 24, 16), (8, 4)), ((1, 2, 12, 32), (4, 16))],
    ids=str,
)
def test_split_merge_round_trip_and_block_order(shape, block):
    x = _data(shape[-len(block):], torch.float64, lead=shape[: -len(block)])
    blocks = split_blocks(x, block)
    n_blocks = int(np.prod(shape[-len(block):])) // int(np.prod(block))
    assert blocks.shape == (*shape[: -len(block)], n_blocks, *block)
    assert torch.equal(merge_blocks(blocks, shape[-len(block):]), x)
    slices = dense_patch_slices(shape[-len(block):], block, block)
    assert len(slices) == n_blocks
    lead = (slice(None),) * (len(shape) - len(block))
    for i, sl in enumerate(slices):
        assert torch.equal(blocks[..., i, *([slice(None)] * len(block))], x[lead + tuple(sl)])


@pytest.mark.parametrize("shape, block", [((2, 1, 16, 24, 8), (8, 8, 4)), ((2, 1, 8, 16, 4), (8, 4)), ((1, 1, 32, 32, 32), (32, 32, 32))], ids=str)
def test_block_dct_agrees_with_split_dct(shape, block):
    x = _data(shape[2:], torch.float64, lead=shape[:2])
    if len(block) == 2:
        x = x.permute(0, 1, 4, 2, 3)  # per-slice layout, a non-contiguous view as VAFA-2D uses it
    k = len(block)
    expected = merge_blocks(dct(split_blocks(x, block), k), x.shape[-k:])
    got = block_dct(x, block)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(block_idct(got, block), x, rtol=0, atol=1e-9)


def test_block_side_one_gives_per_slice_2d_blocks():
    x = _data((16, 8, 5), torch.float64, lead=(2, 1))
    expected = block_dct(x.permute(0, 1, 4, 2, 3), (8, 4)).permute(0, 1, 3, 4, 2)  # 2D blocks on each [H, W] slice
    torch.testing.assert_close(block_dct(x, (8, 4, 1)), expected, rtol=0, atol=1e-9)


def test_blockwise_matmul_with_rectangular_matrices():
    x = _data((8, 6), torch.float64, lead=(3,))
    a, b = torch.rand(2, 4, dtype=torch.float64), torch.rand(1, 3, dtype=torch.float64)
    blocks = split_blocks(x, (4, 3))  # [3, 4, 4, 3]
    expected = merge_blocks(torch.einsum("ai,bj,...ij->...ab", a, b, blocks), (4, 2))
    torch.testing.assert_close(blockwise_matmul(x, [a, b], (4, 3)), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("fn", [split_blocks, block_dct], ids=lambda f: f.__name__)
def test_indivisible_shape_is_rejected(fn):
    with pytest.raises(ValueError, match=r"spatial shape \(97, 96, 96\) is not divisible by block_size \(8, 8, 8\)"):
        fn(torch.zeros(1, 1, 97, 96, 96), (8, 8, 8))


def test_merge_rejects_wrong_block_count():
    with pytest.raises(ValueError, match="expected 4 blocks"):
        merge_blocks(torch.zeros(1, 3, 4, 4), (8, 8))


def _phi_numpy(x, alpha):
    s = 1.0 / (1.0 - alpha)
    k = np.log(2.0 / alpha - 1.0)
    fl = np.floor(x)
    return fl + (np.tanh((x - fl - 0.5) * k) * s + 1.0) / 2.0


@pytest.mark.parametrize("alpha", [0.1, 0.05, 1e-3, 1e-20])
def test_phi_diff_matches_formula_and_rounds_integers(alpha):
    x = np.linspace(-7.3, 9.1, 1001)
    got = phi_diff(torch.from_numpy(x), alpha).numpy()
    np.testing.assert_allclose(got, _phi_numpy(x, alpha), rtol=0, atol=1e-12)
    ints = torch.arange(-5, 6, dtype=torch.float64)
    torch.testing.assert_close(phi_diff(ints, alpha), ints, rtol=0, atol=1e-9)


def test_phi_diff_has_gradient():
    x = torch.tensor([0.3, 1.5, -2.7], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(phi_diff(x, torch.tensor(0.1)).sum(), x)
    assert (grad > 0).all()


def test_quantize_dequantize():
    coeffs = torch.tensor([[-100.0, 37.0], [4.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[10.0, 20.0], [5.0, 7.0]], dtype=torch.float64)
    got = dequantize(quantize(coeffs, q, 1e-20), q)
    torch.testing.assert_close(got, torch.round(coeffs / q) * q, rtol=0, atol=1e-6)


def test_normalize_slices_matches_per_slice_min_max_and_guards_constant_slices():
    x = _data((6, 5, 4), torch.float64, lead=(2, 1))
    x[0, 0, :, :, 1] = 300.0  # constant slice above the scale: clamps to 1
    x[1, 0, :, :, 2] = 51.0  # constant slice: 51 / 255
    x.requires_grad_(True)
    out = normalize_slices(x)
    for b in range(2):
        for d in range(4):
            s = x[b, 0, :, :, d].detach()
            if (b, d) == (0, 1):
                expected = torch.ones_like(s)
            elif (b, d) == (1, 2):
                expected = torch.full_like(s, 0.2)
            else:
                expected = (s - s.min()) / (s.max() - s.min())
            torch.testing.assert_close(out[b, 0, :, :, d].detach(), expected, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(
    "shape, block",
    [((2, 1, 16, 8, 8), (8, 4, 4)), ((1, 2, 8, 8, 8), (8, 8, 8)), ((2, 1, 8, 4, 4), (4, 2, 4)), ((3, 16, 12), (8, 6))],
    ids=str,
)
def test_block_ssim_matches_pytorch_msssim_on_split_blocks(shape, block):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + 0.3 * torch.rand(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    y[0, ..., : block[0], : block[1]] = 1 - y[0, ..., : block[0], : block[1]]  # a block with negative SSIM
    as_images = lambda t: split_blocks(t, block).reshape(-1, 1, *block)  # noqa: E731  every block an image
    with pytest.warns(UserWarning, match="Skipping Gaussian") if min(block) < 3 else contextlib.nullcontext():
        expected = ssim(as_images(x), as_images(y), data_range=1, size_average=True, win_size=3, nonnegative_ssim=True)
    torch.testing.assert_close(block_ssim(x, y, block), expected, rtol=0, atol=1e-12)
    assert block_ssim(x, x, block).item() == pytest.approx(1.0)


def test_block_ssim_errors():
    with pytest.raises(ValueError, match="same shape"):
        block_ssim(torch.zeros(8, 8), torch.zeros(8, 4), (4, 4))
    with pytest.raises(ValueError, match="win_size must be odd, got 4"):
        block_ssim(torch.zeros(8, 8), torch.zeros(8, 8), (4, 4), win_size=4)


def test_quantize_dequantize_matches_the_two_steps_and_passes_gradcheck():
    gen = torch.Generator().manual_seed(0)
    coeffs = (torch.rand(4, 8, generator=gen, dtype=torch.float64) - 0.5) * 400
    q = torch.randint(5, 21, (4, 8), generator=gen).double()
    alpha = torch.tensor(0.07, dtype=torch.float32)
    assert torch.equal(quantize_dequantize(coeffs, q, alpha), dequantize(quantize(coeffs, q, alpha), q))
    coeffs.requires_grad_(True)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, t: quantize_dequantize(c, t, 0.07), (coeffs, q))


@pytest.mark.parametrize("nonnegative", [True, False])
@pytest.mark.parametrize("shape, block", [((1, 2, 8, 8, 6), (4, 4, 3)), ((2, 6, 8), (3, 4)), ((1, 8, 4, 4), (4, 2, 4))], ids=str)
def test_block_ssim_gradient_passes_gradcheck(shape, block, nonnegative):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    y[..., : block[-2], : block[-1]] = 1 - y[..., : block[-2], : block[-1]]  # a block clipped by the relu
    y.requires_grad_(True)
    ssim = BlockSSIM(x, block, nonnegative=nonnegative)
    assert torch.autograd.gradcheck(ssim, (y,))
