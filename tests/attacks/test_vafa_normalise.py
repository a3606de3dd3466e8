"""VAFA's ``normalise`` option: the release's per-slice min-max vs the paper's Eq. 1 clip.

Also the renormalisation measurements (``renormalisation_parts``,
``renormalisation_share``) and ``count_unspanned_slices``.
"""

import math

import pytest
import torch

from attacks import VAFA, VAFA2D, VAFA3D, attack_options, build_attack
from attacks.frequency import (
    block_dct,
    block_idct,
    clip_to_unit,
    count_unspanned_slices,
    normalize_slices,
    quantize_dequantize,
    renormalisation_share,
)
from attacks.vafa import NORMALISE_MODES
from training.losses import build_dice_ce

from .test_vafa import reference_vafa
from .tiny import make_batch, make_model

BLOCKS = [(4, 4, 4), (4, 4)]
BLOCK_IDS = ["3d", "2d"]


def _attack(block, **kwargs):
    kwargs.setdefault("steps", 2)
    return VAFA(make_model(dtype=kwargs.pop("dtype", torch.float32)), build_dice_ce(), block_size=block, **kwargs)


def _sum_sq(x):
    return x.double().square().sum(dim=(1, 2, 3, 4))


# --------------------------------------------------------------------------- clip mode numerics


@pytest.mark.parametrize(
    "shape, block, steps",
    [((2, 1, 16, 8, 8), (8, 4, 4), 1), ((1, 1, 8, 8, 8), (4, 4, 4), 3), ((2, 1, 16, 8, 4), (8, 4), 2)],
    ids=["3d-1step", "3d-3steps", "2d-HneW-2steps"],
)
def test_clip_reproduces_loop_reference(shape, block, steps):
    """The whole attack (tables, gradients through the clamp, output) against the loop reference."""
    images, labels = make_batch(shape, dtype=torch.float64)
    model, loss_fn = make_model(dtype=torch.float64).eval(), build_dice_ce()
    expected_adv, expected_q = reference_vafa(model, loss_fn, images, labels, steps, 20.0, 5.0, block, normalise="clip")

    attack = VAFA(model, loss_fn, q_max=20, q_min=5, steps=steps, block_size=block, normalise="clip")
    adv = attack(images, labels)
    torch.testing.assert_close(adv, expected_adv, rtol=0, atol=1e-9)
    assert torch.equal(attack.q_tables.reshape(expected_q.shape), expected_q)


@pytest.mark.parametrize("block", BLOCKS, ids=BLOCK_IDS)
def test_one_step_clip_is_clamp_of_the_unnormalised_inverse_dct(block):
    """One step: ``X'`` is built from the initial tables (q_max) and alpha = 0.1, recomputed here."""
    images, labels = make_batch((2, 1, 8, 8, 8))
    adv = _attack(block, q_max=20, steps=1, normalise="clip")(images, labels)
    transform = block if len(block) == 3 else (*block, 1)
    coeffs = block_dct(images * 255 - 128, transform)
    restored = block_idct(quantize_dequantize(coeffs, torch.full_like(coeffs, 20.0), 0.1), transform) + 128
    torch.testing.assert_close(adv, torch.clamp(restored / 255, 0, 1), rtol=0, atol=1e-6)
    assert not torch.allclose(adv, normalize_slices(restored), rtol=0, atol=1e-3)  # the modes do differ here


def test_clip_to_unit():
    x = torch.tensor([-10.0, 0.0, 51.0, 255.0, 300.0])
    assert torch.equal(clip_to_unit(x), torch.tensor([0.0, 0.0, 0.2, 1.0, 1.0]))
    assert torch.equal(clip_to_unit(x, scale=510.0), torch.tensor([0.0, 0.0, 0.1, 0.5, 300 / 510]))
    x = torch.tensor([-1.0, 100.0, 300.0], requires_grad=True)
    clip_to_unit(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1 / 255, 0.0]))


# --------------------------------------------------------------------------- slice mode unchanged


@pytest.mark.parametrize("block", [(8, 8, 8), (8, 8)], ids=["3d", "2d"])
def test_default_is_slice_bit_for_bit(block):
    images, labels = make_batch((2, 1, 16, 16, 16))
    default = _attack(block, steps=3)
    explicit = _attack(block, steps=3, normalise="slice")
    assert default.normalise == "slice"
    out_default, out_slice = default(images, labels), explicit(images, labels)
    assert torch.equal(out_default, out_slice)
    assert torch.equal(default.q_tables, explicit.q_tables)
    for key in ("diff_sq", "pert_sq", "clip_pert_sq"):
        assert torch.equal(default.renormalisation_parts[key], explicit.renormalisation_parts[key])


@pytest.mark.parametrize("block", BLOCKS, ids=BLOCK_IDS)
def test_one_step_slice_is_normalize_slices_of_the_inverse_dct(block):
    images, labels = make_batch((2, 1, 8, 8, 8))
    adv = _attack(block, q_max=20, steps=1)(images, labels)
    transform = block if len(block) == 3 else (*block, 1)
    coeffs = block_dct(images * 255 - 128, transform)
    restored = block_idct(quantize_dequantize(coeffs, torch.full_like(coeffs, 20.0), 0.1), transform) + 128
    assert torch.equal(adv, torch.clamp(normalize_slices(restored), 0, 1))


# --------------------------------------------------------------------------- renormalisation parts


@pytest.mark.parametrize("block", BLOCKS, ids=BLOCK_IDS)
@pytest.mark.parametrize("mode", NORMALISE_MODES)
def test_parts_format_and_consistency_with_the_output(block, mode):
    images, labels = make_batch((3, 1, 8, 8, 8))
    attack = _attack(block, normalise=mode)
    assert attack.renormalisation_parts is None
    adv = attack(images, labels)
    parts = attack.renormalisation_parts
    assert set(parts) == {"diff_sq", "pert_sq", "clip_pert_sq"}
    for value in parts.values():
        assert value.dtype == torch.float64 and value.device.type == "cpu" and value.shape == (3,)
        assert not value.requires_grad and (value >= 0).all()
    own = "pert_sq" if mode == "slice" else "clip_pert_sq"  # the returned image is that mode's X'
    torch.testing.assert_close(parts[own], _sum_sq(adv - images), rtol=1e-6, atol=1e-9)
    # The three are sides of one triangle: |diff - pert| <= clip_pert <= diff + pert (norms).
    diff, pert, clip = (parts[k].sqrt() for k in ("diff_sq", "pert_sq", "clip_pert_sq"))
    assert (clip <= diff + pert + 1e-6).all() and (clip >= (diff - pert).abs() - 1e-6).all()


@pytest.mark.parametrize("block", BLOCKS, ids=BLOCK_IDS)
def test_one_step_parts_do_not_depend_on_the_mode(block):
    """One step: both modes build X' from the same tables, so the parts describe the same ``R``."""
    images, labels = make_batch((2, 1, 8, 8, 8))
    parts = []
    outs = []
    for mode in NORMALISE_MODES:
        attack = _attack(block, steps=1, normalise=mode)
        outs.append(attack(images, labels))
        parts.append(attack.renormalisation_parts)
    for key in parts[0]:
        torch.testing.assert_close(parts[0][key], parts[1][key], rtol=0, atol=0)
    torch.testing.assert_close(parts[0]["diff_sq"], _sum_sq(outs[0] - outs[1]), rtol=1e-6, atol=1e-9)


def _spanning_volume(dtype=torch.float32):
    """Every axial slice spans exactly [0, 1] and survives quantisation with q = 4 exactly.

    A constant block of 0 or 1 has only a DC coefficient, ``sqrt(n) (255 x - 128)``:
    -1024 and 1016 for 4x4x4 blocks, -512 and 508 for 4x4 ones, all multiples of 4.
    The other voxels stay in [0.1, 0.9] so that the quantisation noise (a few units
    on the 0..255 scale) keeps them inside [0, 255].
    """
    images, labels = make_batch((2, 1, 16, 16, 8), dtype=dtype)
    images = 0.1 + 0.8 * images
    images[:, :, 0:4, 0:4, :] = 0
    images[:, :, 4:8, 0:4, :] = 1
    return images, labels


@pytest.mark.parametrize("block", BLOCKS, ids=BLOCK_IDS)
def test_spanning_slices_both_modes_agree_and_share_is_zero(block):
    images, labels = _spanning_volume()
    assert count_unspanned_slices(images).tolist() == [0, 0]
    outs, shares = [], []
    for mode in NORMALISE_MODES:
        # q_max = 4 with q_min = 4: every step quantises with q = 4, whatever the gradients say.
        attack = _attack(block, q_max=4, q_min=4, steps=2, normalise=mode)
        outs.append(attack(images, labels))
        parts = attack.renormalisation_parts
        assert (parts["pert_sq"] > 1e-4).all()  # there is a perturbation to compare with
        shares.append(renormalisation_share(parts["diff_sq"], parts["pert_sq"]))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    assert max(shares) < 0.05
    assert max(shares) < 1e-3  # in fact the two coincide up to rounding


@pytest.mark.parametrize("block", BLOCKS, ids=BLOCK_IDS)
@pytest.mark.parametrize("mode", NORMALISE_MODES)
def test_compressed_range_renormalisation_dominates(block, mode):
    images, labels = make_batch((2, 1, 16, 16, 8))
    images = 0.3 + 0.3 * images  # every slice within [0.3, 0.6]
    assert count_unspanned_slices(images).tolist() == [8, 8]  # C * D slices per sample
    attack = _attack(block, q_max=20, steps=2, normalise=mode)
    attack(images, labels)
    parts = attack.renormalisation_parts
    assert renormalisation_share(parts["diff_sq"], parts["pert_sq"]) > 0.5
    for b in range(2):  # per sample, too
        assert renormalisation_share(parts["diff_sq"][b], parts["pert_sq"][b]) > 0.5
    # The quantisation alone (clip) moves the images far less than the renormalisation.
    assert (parts["clip_pert_sq"] < parts["diff_sq"]).all()


# --------------------------------------------------------------------------- renormalisation_share


@pytest.mark.parametrize(
    "diff_sq, pert_sq, expected",
    [
        (0.0, 0.0, 0.0),
        (2.0, 0.0, 1.0),
        (0.0, 4.0, 0.0),
        (1.0, 4.0, 0.5),
        (9.0, 4.0, 1.5),
        (torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([4.0, 8.0], dtype=torch.float64), 0.5),
        (torch.tensor(3.0), 12, 0.5),
    ],
)
def test_renormalisation_share(diff_sq, pert_sq, expected):
    share = renormalisation_share(diff_sq, pert_sq)
    assert isinstance(share, float)
    assert share == pytest.approx(expected, rel=1e-12)


def test_renormalisation_share_adds_tiles_before_the_root():
    """Sums of squares over tiles, then one root: the share of the stitched volume."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 6, 4, generator=gen, dtype=torch.float64)
    tiles_diff, tiles_pert = a.square().sum(dim=1), b.square().sum(dim=1)  # 4 tiles of 6 voxels
    expected = a.norm() / b.norm()
    assert renormalisation_share(tiles_diff, tiles_pert) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("diff_sq, pert_sq", [(-1.0, 1.0), (1.0, -1e-3), (math.nan, 1.0), (1.0, math.inf)])
def test_renormalisation_share_rejects_invalid_sums(diff_sq, pert_sq):
    with pytest.raises(ValueError, match=r"sums of squares must be finite and >= 0, got diff_sq="):
        renormalisation_share(diff_sq, pert_sq)


# --------------------------------------------------------------------------- count_unspanned_slices


def _count_loop(volume, low, high):
    B, C, H, W, D = volume.shape
    counts = []
    for b in range(B):
        n = 0
        for c in range(C):
            for d in range(D):
                s = volume[b, c, :, :, d]
                n += int(s.min().item() > low or s.max().item() < high)
        counts.append(n)
    return counts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("low, high", [(0.01, 0.99), (0.0, 1.0), (0.2, 0.8)])
def test_count_unspanned_slices_matches_a_loop(dtype, low, high):
    gen = torch.Generator().manual_seed(3)
    volume = torch.rand(3, 2, 5, 6, 7, generator=gen, dtype=torch.float64)
    volume = volume * torch.rand(3, 2, 1, 1, 7, generator=gen, dtype=torch.float64)  # varied slice ranges
    volume[0, 0, 0, 0, :] = 0.0
    volume[0, 0, 1, 1, :3] = 1.0  # first slices of (0, 0) span [0, 1]
    volume[1, 1, :, :, 2] = 0.5  # a constant slice
    volume[2, 0, :, :, 4] = torch.linspace(0.01, 0.99, 30, dtype=torch.float64).reshape(5, 6)  # on the thresholds
    volume = volume.to(dtype)
    got = count_unspanned_slices(volume, low, high)
    assert got.dtype == torch.int64 and got.shape == (3,)
    assert got.tolist() == _count_loop(volume, low, high)
    assert 0 < got.sum() < 3 * 2 * 7


def test_count_unspanned_slices_defaults_and_errors():
    volume = torch.zeros(1, 1, 4, 4, 3)
    volume[..., 0, 0, :] = 1  # every slice spans [0, 1]
    volume[..., 0, 0, 1] = 0.995  # max still above 0.99
    volume[..., 2] = 0.5
    assert count_unspanned_slices(volume).tolist() == [1]
    with pytest.raises(ValueError, match=r"volume must be \[B, C, H, W, D\], got shape \(4, 4, 3\)"):
        count_unspanned_slices(volume[0, 0])


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("bad", ["minmax", "Slice", "", None])
def test_invalid_normalise_is_rejected(bad):
    with pytest.raises(ValueError, match=r"normalise must be one of \('slice', 'clip'\), got " + repr(repr(bad))[1:-1]):
        VAFA(make_model(), build_dice_ce(), normalise=bad)


@pytest.mark.parametrize("cls, block", [(VAFA3D, (4, 4, 4)), (VAFA2D, (4, 4))], ids=BLOCK_IDS)
def test_subclasses_and_registry_take_normalise(cls, block):
    attack = cls(make_model(), build_dice_ce(), block_size=block, steps=1, normalise="clip")
    assert attack.normalise == "clip"
    assert repr(attack).endswith("normalise='clip')")
    images, labels = make_batch((1, 1, 8, 8, 8))
    adv = attack(images, labels)
    assert adv.min() >= 0 and adv.max() <= 1
    with pytest.raises(ValueError, match=r"normalise must be one of"):
        cls(make_model(), build_dice_ce(), block_size=block, normalise="nope")
    name = "vafa-3d" if cls is VAFA3D else "vafa-2d"
    assert "normalise" in attack_options(name)
    assert build_attack(name, make_model(), build_dice_ce(), block_size=block, normalise="clip").normalise == "clip"


def test_repr_default():
    assert "normalise='slice'" in repr(VAFA(make_model(), build_dice_ce()))
