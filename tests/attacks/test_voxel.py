"""PGD, BIM, FGSM, Gaussian noise: budgets, independent FGSM, targeted direction, errors."""

import pytest
import torch

from attacks import BIM, FGSM, PGD, GaussianNoise
from training.losses import build_dice_ce

from .tiny import make_batch, make_model

EPS = 4 / 255


@pytest.mark.parametrize("cls, kwargs", [(PGD, {}), (PGD, dict(random_start=False)), (BIM, {})], ids=["pgd", "pgd-no-start", "bim"])
def test_iterative_attacks_stay_in_eps_ball_and_unit_range(cls, kwargs):
    images, labels = make_batch()
    model = make_model()
    attack = cls(model, build_dice_ce(), eps=EPS, alpha=0.01, steps=3, **kwargs)
    adv = attack(images, labels)
    assert (adv - images).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert not torch.equal(adv, images)
    assert model.calls == 3
    assert len(attack.success_rate) == 3


def test_bim_is_deterministic_pgd_without_random_start():
    images, labels = make_batch()
    model, loss_fn = make_model(), build_dice_ce()
    bim = BIM(model, loss_fn, eps=EPS, alpha=0.005, steps=2)(images, labels)
    pgd = PGD(model, loss_fn, eps=EPS, alpha=0.005, steps=2, random_start=False)(images, labels)
    assert torch.equal(bim, pgd)


def test_pgd_reuse_with_same_seed_is_identical():
    images, labels = make_batch()
    attack = PGD(make_model(), build_dice_ce(), eps=EPS, alpha=0.01, steps=2)
    torch.manual_seed(3)
    first = attack(images, labels)
    torch.manual_seed(3)
    assert torch.equal(attack(images, labels), first)


def test_pgd_ascends_the_loss():
    images, labels = make_batch()
    model, loss_fn = make_model(), build_dice_ce()
    adv = PGD(model, loss_fn, eps=16 / 255, alpha=4 / 255, steps=5)(images, labels)
    with torch.no_grad():
        model.eval()
        assert loss_fn(model(adv), labels) > loss_fn(model(images), labels)


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_matches_independent_formula(targeted):
    images, labels = make_batch()
    model, loss_fn = make_model(), build_dice_ce()
    adv = FGSM(model, loss_fn, eps=EPS, targeted=targeted)(images, labels)

    model.eval()
    x = images.clone().requires_grad_(True)
    loss = loss_fn(model(x), labels)
    (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    assert torch.equal(adv, torch.clamp(images + EPS * grad.sign(), 0, 1))


@pytest.mark.parametrize("cls, kwargs", [(PGD, dict(alpha=2 / 255, steps=5)), (BIM, dict(alpha=2 / 255, steps=5)), (FGSM, {})])
def test_targeted_attacks_lower_the_loss_towards_the_target(cls, kwargs):
    images, _ = make_batch()
    target = torch.zeros(2, 1, 16, 16, 16)
    target[..., :8] = 1
    model, loss_fn = make_model(), build_dice_ce()
    adv = cls(model, loss_fn, eps=16 / 255, targeted=True, **kwargs)(images, target)
    with torch.no_grad():
        model.eval()
        assert loss_fn(model(adv), target) < loss_fn(model(images), target)


def test_gaussian_noise():
    images = torch.full((2, 1, 16, 16, 16), 0.5)
    torch.manual_seed(0)
    adv = GaussianNoise(None, std=0.05)(images, torch.zeros(2, 1, 16, 16, 16))
    assert adv.min() >= 0 and adv.max() <= 1
    assert abs((adv - images).std().item() - 0.05) < 0.005
    assert torch.equal(GaussianNoise(make_model(), None, std=0.0)(images, torch.zeros(2, 1, 16, 16, 16)), images)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m, l: PGD(m, l, eps=-0.1, alpha=0.01, steps=1), r"eps must be >= 0, got -0.1"),
        (lambda m, l: PGD(m, l, eps=0.1, alpha=-1, steps=1), r"alpha must be >= 0, got -1"),
        (lambda m, l: PGD(m, l, eps=0.1, alpha=0.01, steps=0), r"steps must be an int >= 1, got 0"),
        (lambda m, l: BIM(m, l, eps=0.1, alpha=0.01, steps=-2), r"steps must be an int >= 1, got -2"),
        (lambda m, l: FGSM(m, l, eps=-0.5), r"eps must be >= 0, got -0.5"),
        (lambda m, l: GaussianNoise(m, l, std=-0.01), r"std must be >= 0, got -0.01"),
    ],
)
def test_invalid_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(make_model(), build_dice_ce())
