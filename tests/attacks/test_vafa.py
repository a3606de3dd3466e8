"""VAFA: reference numerics (slow independent re-implementation), invariants, errors."""

import logging

import numpy as np
import pytest
import scipy.fft
import torch
from monai.data.utils import dense_patch_slices
from pytorch_msssim import ssim

from attacks import VAFA
from training.losses import build_dice_ce

from .tiny import make_batch, make_model


# --------------------------------------------------------------------------- independent reference


def _dct_basis(n):
    """DCT-II matrix from scipy: column j is the transform of the j-th unit vector."""
    return torch.from_numpy(scipy.fft.dct(np.eye(n), axis=0, norm="ortho"))


def _transform(block, inverse):
    mats = [_dct_basis(n) for n in block.shape]
    if inverse:
        mats = [m.T for m in mats]
    if block.ndim == 3:
        return torch.einsum("ai,bj,ck,ijk->abc", *mats, block)
    return torch.einsum("ai,bj,ij->ab", *mats, block)


def _phi(x, alpha):
    s = 1 / (1 - alpha)
    k = np.log(2 / alpha - 1)
    fl = torch.floor(x)
    return fl + (torch.tanh((x - fl - 0.5) * k) * s + 1) / 2


def reference_vafa(model, loss_fn, images, labels, steps, q_max, q_min, block, use_ssim=False, normalise="slice"):
    """The release's VAFA written the slow, obvious way: Python loops over blocks and slices.

    ``normalise="clip"`` replaces the release's per-slice min-max by the paper's
    Eq. 1 clip, ``clamp(merged / 255, 0, 1)`` of the whole merged volume.

    Float64 throughout except alpha, which accumulates in float32 as in the release.
    The 2D blocks are merged back at the right place (the release swaps H and W).
    """
    B, C, H, W, D = images.shape
    is_3d = len(block) == 3
    alpha = np.float32(0.1)
    alpha_step = np.float32((1e-20 - 0.1) / steps)
    if is_3d:
        where = [(b, c, sl) for b in range(B) for c in range(C) for sl in dense_patch_slices((H, W, D), block, block)]
        index = lambda b, c, sl: (b, c) + tuple(sl)  # noqa: E731
    else:
        where = [(b, c, (d, sl)) for b in range(B) for c in range(C) for d in range(D) for sl in dense_patch_slices((H, W), block, block)]
        index = lambda b, c, dsl: (b, c) + tuple(dsl[1]) + (dsl[0],)  # noqa: E731
    q = [torch.full(block, float(q_max), dtype=torch.float64) for _ in where]
    for _ in range(steps):
        for t in q:
            t.requires_grad_(True)
        merged = torch.zeros_like(images)
        for (b, c, sl), qt in zip(where, q):
            coeffs = _transform(images[index(b, c, sl)] * 255 - 128, inverse=False)
            restored = _transform(_phi(coeffs / qt, float(alpha)) * qt, inverse=True) + 128
            merged[index(b, c, sl)] = restored
        if normalise == "clip":
            adv = torch.clamp(merged / 255, 0, 1)
        else:
            slices = []
            for b in range(B):
                for c in range(C):
                    for d in range(D):
                        s = merged[b, c, :, :, d]
                        slices.append((s - s.min()) / (s.max() - s.min()))
            adv = torch.stack(slices).reshape(B, C, D, H, W).permute(0, 1, 3, 4, 2)
        loss = -loss_fn(model(adv), labels)
        if use_ssim:  # the release's layout: [n_blocks, B, bd, bh, bw] with C = 1
            clean = torch.stack([images[:, 0][(slice(None),) + tuple(sl)].permute(0, 3, 1, 2) for _, _, sl in where[: len(where) // B]])
            pert = torch.stack([adv[:, 0][(slice(None),) + tuple(sl)].permute(0, 3, 1, 2) for _, _, sl in where[: len(where) // B]])
            loss = loss + 1 - ssim(clean, pert, data_range=1, nonnegative_ssim=True, size_average=True, win_size=3)
        grads = torch.autograd.grad(loss, q)
        q = [torch.clamp(t.detach() - torch.sign(g), q_min, q_max) for t, g in zip(q, grads)]
        alpha = np.float32(alpha + alpha_step)
    return torch.clamp(adv.detach(), 0, 1), torch.stack(q)


@pytest.mark.parametrize(
    "shape, block, steps, use_ssim",
    [
        ((2, 1, 16, 8, 8), (8, 4, 4), 1, False),
        ((2, 1, 16, 8, 8), (8, 4, 4), 2, True),
        ((1, 1, 8, 8, 8), (4, 4, 4), 3, True),
        ((2, 1, 16, 8, 4), (8, 4), 2, False),
    ],
    ids=["3d-1step", "3d-2steps-ssim", "3d-3steps-ssim", "2d-HneW-2steps"],
)
def test_vafa_reproduces_reference_numerics(shape, block, steps, use_ssim):
    images, labels = make_batch(shape, dtype=torch.float64)
    model = make_model(dtype=torch.float64).eval()
    loss_fn = build_dice_ce()
    expected_adv, expected_q = reference_vafa(model, loss_fn, images, labels, steps, 20.0, 5.0, block, use_ssim)

    attack = VAFA(model, loss_fn, q_max=20, q_min=5, steps=steps, block_size=block, use_ssim_loss=use_ssim)
    adv = attack(images, labels)
    assert len(attack.success_rate) == steps
    torch.testing.assert_close(adv, expected_adv, rtol=0, atol=1e-9)
    q = attack.q_tables
    if len(block) == 3:
        assert q.shape == (shape[0], shape[1], expected_q.shape[0] // (shape[0] * shape[1]), *block)
    else:
        assert q.shape == (shape[0], shape[1], shape[4], expected_q.shape[0] // (shape[0] * shape[1] * shape[4]), *block)
    assert torch.equal(q.reshape(expected_q.shape), expected_q)
    assert (q < 20).any() and (q == 20).any()  # the tables moved, in both directions of the gradient sign


# --------------------------------------------------------------------------- invariants


@pytest.fixture(params=[(8, 8, 8), (8, 8), (16, 4, 8)], ids=["3d", "2d", "3d-nonsquare"])
def block(request):
    return request.param


def test_q_tables_integer_valued_within_bounds(block):
    images, labels = make_batch((2, 1, 16, 16, 16))
    attack = VAFA(make_model(), build_dice_ce(), q_max=9, q_min=5, steps=6, block_size=block)
    attack(images, labels)
    q = attack.q_tables
    assert q.dtype == images.dtype
    assert torch.equal(q, torch.round(q))
    assert q.min() >= 5 and q.max() <= 9
    assert q.min() < 9  # gradients reached the tables


def test_gradient_reaches_q_tables(block):
    images, labels = make_batch((1, 1, 16, 16, 16))
    attack = VAFA(make_model(), build_dice_ce(), q_max=50, q_min=1, steps=1, block_size=block)
    attack(images, labels)
    assert (attack.q_tables == 49).any()


@pytest.mark.parametrize("q_init, expected", [("max", 20.0), ("one", 1.0)])
def test_q_init(q_init, expected):
    images, labels = make_batch((1, 1, 8, 8, 8))
    attack = VAFA(make_model(), build_dice_ce(), q_max=20, q_min=1, q_init=q_init, steps=1, block_size=(4, 4, 4))
    attack(images, labels)
    assert set(attack.q_tables.unique().tolist()) <= {expected - 1, expected, expected + 1} & {float(v) for v in range(1, 21)}


def test_output_finite_in_range_with_constant_slices(block):
    images, labels = make_batch((2, 1, 16, 16, 16))
    images[0, :, :, :, 3] = 0.0
    images[1, :, :, :, :5] = 0.7
    images[1, :, :, :, 10:] = 1.0
    attack = VAFA(make_model(), build_dice_ce(), steps=2, block_size=block, use_ssim_loss=True)
    adv = attack(images, labels)
    assert torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.isfinite(attack.q_tables).all()


def test_all_constant_image_stays_finite():
    images = torch.zeros(1, 1, 8, 8, 8)
    labels = torch.zeros(1, 1, 8, 8, 8)
    adv = VAFA(make_model(), build_dice_ce(), steps=2, block_size=(4, 4, 4))(images, labels)
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1


def test_steps_honoured(block):
    images, labels = make_batch((1, 1, 16, 16, 16))
    model = make_model()
    attack = VAFA(model, build_dice_ce(), steps=5, block_size=block)
    attack(images, labels)
    assert model.calls == 5
    assert len(attack.success_rate) == 5
    assert all(0 <= r < 1 for r in attack.success_rate)


def test_early_stop_when_every_voxel_is_fooled():
    model = make_model()
    with torch.no_grad():  # always predicts class 1
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    images, _ = make_batch((1, 1, 8, 8, 8))
    labels = torch.zeros(1, 1, 8, 8, 8)
    attack = VAFA(model, build_dice_ce(), steps=5, block_size=(4, 4, 4))
    attack(images, labels)
    assert model.calls == 1
    assert attack.success_rate == [1.0]
    assert torch.equal(attack.predictions, torch.ones(1, 1, 8, 8, 8, dtype=torch.long))


def test_reuse_is_independent_and_deterministic(block):
    images, labels = make_batch((2, 1, 16, 16, 16))
    attack = VAFA(make_model(), build_dice_ce(), steps=3, block_size=block)
    first, q_first = attack(images, labels), attack.q_tables
    attack(images[:1, :, :, :8], labels[:1, :, :, :8])  # another batch and patch size in between
    second = attack(images, labels)
    assert torch.equal(first, second)
    assert torch.equal(q_first, attack.q_tables)


def test_targeted_vafa_moves_towards_target():
    images, _ = make_batch((1, 1, 16, 16, 16))
    target = torch.zeros(1, 1, 16, 16, 16)
    target[..., 8:] = 2
    model, loss_fn = make_model(), build_dice_ce()
    losses = []
    for steps in (1, 15):
        adv = VAFA(model, loss_fn, q_max=40, steps=steps, block_size=(8, 8, 8), targeted=True)(images, target)
        with torch.no_grad():
            losses.append(loss_fn(model.eval()(adv), target).item())
    assert losses[1] < losses[0]


def test_transforms_ignore_a_callers_autocast():
    images, labels = make_batch((1, 1, 16, 16, 16))
    attack = VAFA(make_model(), build_dice_ce(), steps=1, block_size=(8, 8, 8), use_ssim_loss=True)
    expected = attack(images, labels)  # one step: built from the initial tables, whatever the model computes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attack(images, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_2d_ignores_ssim_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="attacks.vafa"):
        attack = VAFA(make_model(), build_dice_ce(), steps=1, block_size=(8, 8), use_ssim_loss=True)
        images, labels = make_batch((1, 1, 8, 8, 4))
        attack(images, labels)
        attack(images, labels)
    assert sum("no SSIM term" in r.getMessage() for r in caplog.records) == 1


def test_multichannel_input_with_ssim():
    images, labels = make_batch((1, 2, 8, 8, 8))
    attack = VAFA(make_model(in_channels=2), build_dice_ce(), steps=2, block_size=(4, 4, 4), use_ssim_loss=True)
    adv = attack(images, labels)
    assert adv.shape == images.shape
    assert attack.q_tables.shape == (1, 2, 8, 4, 4, 4)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(q_min=30, q_max=20), r"q_min must be <= q_max, got q_min=30 > q_max=20"),
        (dict(q_min=0), r"q_min must be > 0, got 0"),
        (dict(q_min=-1), r"q_min must be > 0, got -1"),
        (dict(steps=0), r"steps must be an int >= 1, got 0"),
        (dict(block_size=(8,)), r"block_size must be 2 or 3 positive ints, got \(8,\)"),
        (dict(block_size=(8, 8, 8, 8)), r"block_size must be 2 or 3 positive ints, got \(8, 8, 8, 8\)"),
        (dict(block_size=(8, 0, 8)), r"block_size must be 2 or 3 positive ints, got \(8, 0, 8\)"),
        (dict(block_size=(8, 4.5)), r"block_size must be 2 or 3 positive ints"),
        (dict(q_init="zero"), r"q_init must be one of \('max', 'one'\), got 'zero'"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAFA(make_model(), build_dice_ce(), **kwargs)


@pytest.mark.parametrize(
    "block, shape, message",
    [
        ((8, 8, 8), (1, 1, 16, 16, 12), r"spatial shape \(16, 16, 12\) is not divisible by block_size \(8, 8, 8\)"),
        ((8, 8), (1, 1, 16, 12, 5), r"spatial shape \(16, 12, 5\) is not divisible by block_size \(8, 8\)"),
    ],
)
def test_indivisible_input_is_rejected(block, shape, message):
    images, labels = make_batch(shape)
    with pytest.raises(ValueError, match=message):
        VAFA(make_model(), build_dice_ce(), steps=1, block_size=block)(images, labels)


def test_2d_needs_only_h_w_divisible():
    images, labels = make_batch((1, 1, 16, 8, 5))
    adv = VAFA(make_model(), build_dice_ce(), steps=1, block_size=(8, 8))(images, labels)
    assert adv.shape == images.shape
