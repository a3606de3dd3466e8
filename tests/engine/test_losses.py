import numpy as np
import pytest
import scipy.fft
import torch

from training.losses import build_dice_ce, frequency_consistency_loss


def logits_pair(shape=(2, 3, 8, 6, 4), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randn(shape, generator=gen, dtype=dtype)
    adv = clean + 0.3 * torch.randn(shape, generator=gen, dtype=dtype)
    return clean, adv


def numpy_reference(clean: np.ndarray, adv: np.ndarray, norm: str) -> float:
    spec_clean = scipy.fft.dctn(clean, type=2, norm="ortho", axes=(-3, -2, -1))
    spec_adv = scipy.fft.dctn(adv, type=2, norm="ortho", axes=(-3, -2, -1))
    distance = np.abs(spec_clean - spec_adv).sum()
    return distance if norm == "l1" else distance / np.abs(spec_clean).sum()


@pytest.mark.parametrize("norm", ["relative", "l1"])
def test_matches_scipy_dctn(norm):
    clean, adv = logits_pair()
    got = frequency_consistency_loss(clean, adv, norm=norm)
    assert got.ndim == 0
    np.testing.assert_allclose(got.item(), numpy_reference(clean.numpy(), adv.numpy(), norm), rtol=1e-10)


def test_float32_and_default_norm_is_relative():
    clean, adv = logits_pair(dtype=torch.float32)
    got = frequency_consistency_loss(clean, adv)
    assert got.dtype == torch.float32
    want = numpy_reference(clean.double().numpy(), adv.double().numpy(), "relative")
    np.testing.assert_allclose(got.item(), want, rtol=1e-5)


@pytest.mark.parametrize("norm", ["relative", "l1"])
def test_zero_for_identical_inputs(norm):
    clean, _ = logits_pair()
    assert frequency_consistency_loss(clean, clean.clone(), norm=norm).item() == 0.0


def test_all_zero_logits_give_zero_not_nan():
    zeros = torch.zeros(1, 2, 4, 4, 4)
    assert frequency_consistency_loss(zeros, zeros.clone()).item() == 0.0


def test_gradient_reaches_both_inputs_like_the_reference():
    clean, adv = logits_pair()
    clean.requires_grad_(True)
    adv.requires_grad_(True)
    frequency_consistency_loss(clean, adv).backward()
    assert clean.grad is not None and clean.grad.abs().sum() > 0
    assert adv.grad is not None and adv.grad.abs().sum() > 0


def test_unknown_norm():
    clean, adv = logits_pair()
    with pytest.raises(ValueError, match=r"unknown frequency-consistency norm 'l2'; valid: relative, l1"):
        frequency_consistency_loss(clean, adv, norm="l2")


def test_shape_mismatch():
    clean, adv = logits_pair()
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3, 8, 6, 4\) and \(2, 3, 8, 6, 2\)"):
        frequency_consistency_loss(clean, adv[..., :2])
    with pytest.raises(ValueError, match=r"expected logits \[B, N, H, W, D\]"):
        frequency_consistency_loss(clean[0], adv[0])


def test_build_dice_ce_runs():
    logits = torch.randn(1, 3, 4, 4, 4)
    labels = torch.randint(0, 3, (1, 1, 4, 4, 4)).float()
    assert torch.isfinite(build_dice_ce()(logits, labels))


def test_runs_in_float32_under_autocast():
    clean, adv = logits_pair(dtype=torch.float32)
    want = frequency_consistency_loss(clean, adv)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = frequency_consistency_loss(clean, adv)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_logits_match_cpu():
    clean, adv = logits_pair(dtype=torch.float32)
    want = frequency_consistency_loss(clean, adv)
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        got = frequency_consistency_loss(clean.cuda().half(), adv.cuda().half())
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, rtol=1e-2, atol=1e-3)


# --------------------------------------------------------------------------- fused Dice-CE


def dice_ce_by_hand(logits: torch.Tensor, labels: torch.Tensor, smooth_nr: float, smooth_dr: float) -> torch.Tensor:
    """The release's Dice-CE written out from its definition (float64, autograd for the gradient):
    softmax, explicit one-hot, squared-denominator soft Dice per sample and class, mean CE."""
    num_classes = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    t = torch.stack([(labels[:, 0] == c).to(logits.dtype) for c in range(num_classes)], dim=1)
    dims = tuple(range(2, logits.dim()))
    hits, squares, counts = (p * t).sum(dims), (p * p).sum(dims), t.sum(dims)
    dice = (1 - (2 * hits + smooth_nr) / (squares + counts + smooth_dr)).mean()
    ce = -(torch.log_softmax(logits, dim=1) * t).sum(1).mean()
    return dice + ce


def dice_ce_case(shape, seed, dtype=torch.float64, absent=True):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(shape, generator=gen, dtype=dtype)
    top = shape[1] - 1 if absent else shape[1]  # the last class absent from the labels
    labels = torch.randint(0, top, (shape[0], 1) + tuple(shape[2:]), generator=gen).to(dtype)
    return logits, labels


@pytest.mark.parametrize("shape", [(2, 5, 6, 7, 8), (1, 3, 10, 9), (3, 4, 5, 5, 5)])
@pytest.mark.parametrize("smooth", [(0.0, 1e-6), (1e-5, 1e-5)])
def test_fused_dice_ce_equals_the_formula_and_its_gradient(shape, smooth):
    logits, labels = dice_ce_case(shape, seed=len(shape))
    x = logits.clone().requires_grad_()
    want = dice_ce_by_hand(x, labels, *smooth)
    (want_grad,) = torch.autograd.grad(2.5 * want, x)
    x = logits.clone().requires_grad_()
    got = build_dice_ce(*smooth, fused=True)(x, labels)
    (grad,) = torch.autograd.grad(2.5 * got, x)  # the incoming gradient scales the result
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-13)


def test_fused_dice_ce_agrees_with_monai_in_float32():
    logits, labels = dice_ce_case((2, 6, 12, 10, 8), seed=1, dtype=torch.float32, absent=False)
    grads = []
    for fused in (False, True):
        x = logits.clone().requires_grad_()
        loss = build_dice_ce(fused=fused)(x, labels)
        grads.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
    (monai_loss, monai_grad), (loss, grad) = grads
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, monai_loss, rtol=1e-6, atol=1e-6)
    assert float((grad - monai_grad).abs().max() / monai_grad.abs().max()) < 1e-5


def test_default_dice_ce_is_monai():
    from monai.losses import DiceCELoss

    assert isinstance(build_dice_ce(), DiceCELoss)


def test_fused_dice_ce_returns_the_gradient_in_the_logits_dtype():
    logits, labels = dice_ce_case((1, 3, 6, 6, 6), seed=2, dtype=torch.float32)
    want = build_dice_ce(fused=True)(logits, labels)
    x = logits.bfloat16().requires_grad_()
    got = build_dice_ce(fused=True)(x, labels)
    (grad,) = torch.autograd.grad(got, x)
    assert got.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_fused_dice_ce_refuses_labels_of_another_shape():
    logits, labels = dice_ce_case((1, 3, 6, 6, 6), seed=3)
    with pytest.raises(ValueError, match=r"labels must be \[B, 1, \*S\]"):
        build_dice_ce(fused=True)(logits, labels[:, :, :5])
