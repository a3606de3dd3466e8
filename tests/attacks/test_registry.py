"""The ATTACKS registry, build_attack, and the contract every attack shares."""

import pytest
import torch

from attacks import ATTACKS, Attack, attack_options, build_attack
from training.losses import build_dice_ce

from .tiny import make_batch, make_model

CONFIGS = {
    "vafa-3d": dict(steps=2, block_size=(8, 8, 8), use_ssim_loss=True),
    "vafa-2d": dict(steps=2, block_size=(8, 8)),
    "pgd": dict(eps=4 / 255, alpha=0.01, steps=2),
    "fgsm": dict(eps=4 / 255),
    "bim": dict(eps=4 / 255, alpha=0.01, steps=2),
    "gn": dict(std=4 / 255),
    "segpgd": dict(eps=4 / 255, alpha=0.01, steps=2),
    "cospgd": dict(eps=4 / 255, alpha=0.01, steps=2, norm="l2", random_start=True),
    "apgd": dict(eps=4 / 255, steps=2, loss="masked-ce"),
    "worst-case": dict(eps=4 / 255, steps=2, attacks=("apgd-js", "pgd")),
}


def test_every_registered_attack_has_a_test_config():
    assert set(ATTACKS) == set(CONFIGS)


@pytest.fixture(params=sorted(ATTACKS))
def name(request):
    return request.param


def test_contract(name):
    images, labels = make_batch((2, 1, 16, 16, 16))
    model = make_model()
    model.train()
    model.norm.eval()  # a submodule in its own mode must come back as it was
    running_mean = model.norm.running_mean.clone()
    flags = [p.requires_grad for p in model.parameters()]

    attack = build_attack(name, model, build_dice_ce(), **CONFIGS[name])
    assert isinstance(attack, Attack)
    adv = attack(images, labels)

    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert not adv.requires_grad
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    assert not any(model.modes)  # every forward ran in eval mode
    assert model.training and not model.norm.training and model.conv.training
    assert torch.equal(model.norm.running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert isinstance(attack.success_rate, list)
    assert repr(attack).startswith(type(attack).__name__)


def test_works_under_no_grad_and_inference_mode(name):
    images, labels = make_batch((1, 1, 8, 8, 8))
    config = dict(CONFIGS[name])
    if "block_size" in config:
        config["block_size"] = config["block_size"][:2] + ((4,) if len(config["block_size"]) == 3 else ())
    attack = build_attack(name, make_model(), build_dice_ce(), **config)
    with torch.no_grad():
        assert attack(images, labels).shape == images.shape
    with torch.inference_mode():
        assert attack(images, labels).shape == images.shape


def test_float64_inputs_give_float64_outputs(name):
    images, labels = make_batch((1, 1, 8, 8, 8), dtype=torch.float64)
    config = dict(CONFIGS[name], **({"block_size": (4,) * len(CONFIGS[name]["block_size"])} if "block_size" in CONFIGS[name] else {}))
    adv = build_attack(name, make_model(dtype=torch.float64), build_dice_ce(), **config)(images, labels)
    assert adv.dtype == torch.float64


def test_model_mode_restored_after_an_error():
    model = make_model().train()
    attack = build_attack("vafa-3d", model, build_dice_ce(), steps=1)
    images, labels = make_batch((1, 1, 12, 16, 16))
    with pytest.raises(ValueError, match="not divisible"):
        attack(images, labels)
    assert model.training


@pytest.mark.parametrize(
    "images_shape, labels_shape, message",
    [
        ((1, 16, 16, 16), (1, 1, 16, 16, 16), r"images must be \[B, C, H, W, D\], got shape \(1, 16, 16, 16\)"),
        ((1, 1, 16, 16, 16), (1, 16, 16, 16), r"labels must have shape \(1, 1, 16, 16, 16\)"),
        ((2, 1, 16, 16, 16), (1, 1, 16, 16, 16), r"labels must have shape \(2, 1, 16, 16, 16\)"),
    ],
)
def test_bad_input_shapes(images_shape, labels_shape, message):
    attack = build_attack("pgd", make_model(), build_dice_ce(), **CONFIGS["pgd"])
    with pytest.raises(ValueError, match=message):
        attack(torch.rand(images_shape), torch.zeros(labels_shape))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown attack 'cw'; valid names: vafa-3d, vafa-2d, pgd, fgsm, bim, gn, segpgd, cospgd, apgd, worst-case"):
        build_attack("cw", make_model(), build_dice_ce())


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match=r"attack 'fgsm' takes keyword arguments \['eps', 'targeted'\], got unexpected \['steps'\]"):
        build_attack("fgsm", make_model(), build_dice_ce(), eps=0.1, steps=3)
    with pytest.raises(TypeError, match=r"got unexpected \['eps'\]"):
        build_attack("vafa-3d", make_model(), build_dice_ce(), eps=0.1)


@pytest.mark.parametrize(
    "name, block, message",
    [
        ("vafa-3d", (8, 8), r"vafa-3d needs a block_size with 3 sides \(bh, bw, bd\), got \(8, 8\)"),
        ("vafa-2d", (8, 8, 8), r"vafa-2d needs a block_size with 2 sides \(bh, bw\), got \(8, 8, 8\)"),
    ],
)
def test_vafa_block_sides_must_match_the_name(name, block, message):
    with pytest.raises(ValueError, match=message):
        build_attack(name, make_model(), build_dice_ce(), block_size=block)


def test_vafa_defaults_by_name():
    assert build_attack("vafa-3d", make_model(), build_dice_ce()).block_size == (8, 8, 8)
    assert build_attack("vafa-2d", make_model(), build_dice_ce()).block_size == (8, 8)
    assert "q_init" in attack_options("vafa-2d")
