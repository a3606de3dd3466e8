import numpy as np
import pytest
import scipy.fft
import torch

from engine.losses import FrequencyConsistencyLoss, build_dice_ce, frequency_consistency_loss


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


def test_module_applies_weight():
    clean, adv = logits_pair()
    loss = FrequencyConsistencyLoss(norm="l1", weight=0.5)
    assert torch.allclose(loss(clean, adv), 0.5 * frequency_consistency_loss(clean, adv, norm="l1"))
    assert "norm='l1'" in repr(loss)


def test_unknown_norm():
    clean, adv = logits_pair()
    with pytest.raises(ValueError, match=r"unknown frequency-consistency norm 'l2'; valid: relative, l1"):
        frequency_consistency_loss(clean, adv, norm="l2")
    with pytest.raises(ValueError, match="unknown frequency-consistency norm"):
        FrequencyConsistencyLoss(norm="mean")


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
