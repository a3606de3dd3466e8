"""SegPGD, CosPGD, APGD and the worst case: formulas against loops written here, APGD's schedule
against a hand-computed trace, budgets, targeted modes, 3D shapes."""

import json
import math

import pytest
import torch

from attacks import APGD, ATTACKS, CosPGD, SegPGD, WorstCase, build_attack
from attacks.apgd import StepSizeSchedule, apgd_checkpoints
from attacks.projection import direction, l2_norm, project, radius, random_start
from attacks.seg_losses import (cosine_weights, cospgd_loss, js_divergence, per_sample_loss, segpgd_lambda,
                                segpgd_loss, tile_score)
from training.losses import build_dice_ce

from .tiny import N_CLASSES, make_batch, make_model

NEW = ("segpgd", "cospgd", "apgd", "worst-case")
EPS = 4 / 255


def _voxels(logits):
    """Every (b, h, w, d) index of a [B, N, H, W, D] tensor, and the class logits there as floats."""
    b_, _, h_, w_, d_ = logits.shape
    for b in range(b_):
        for h in range(h_):
            for w in range(w_):
                for d in range(d_):
                    yield (b, h, w, d), [float(v) for v in logits[b, :, h, w, d]]


def _softmax(z):
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def _ce(z, y):
    return -math.log(_softmax(z)[y])


def _argmax(z):
    return max(range(len(z)), key=lambda i: (z[i], -i))


def _tiny_logits(seed=0, shape=(2, N_CLASSES, 3, 4, 2)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=gen).double()
    return logits, labels


# --------------------------------------------------------------------------- formulas against loops


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("t, steps", [(1, 5), (3, 5), (5, 5), (10, 10)])
def test_segpgd_loss_matches_a_voxel_loop(t, steps, targeted):
    logits, labels = _tiny_logits(t)
    lam = (t - 1) / (2 * steps)  # the paper's lambda_t, 1-based t
    assert segpgd_lambda(t, steps) == pytest.approx(lam)
    total, count = 0.0, 0
    for (b, h, w, d), z in _voxels(logits):
        y = int(labels[b, 0, h, w, d])
        done = (_argmax(z) == y) if targeted else (_argmax(z) != y)  # fooled already
        total += (lam if done else 1 - lam) * _ce(z, y)
        count += 1
    assert float(segpgd_loss(logits, labels, lam, targeted)) == pytest.approx(total / count, rel=1e-10)


def test_cospgd_weights_and_losses_match_a_voxel_loop():
    logits, labels = _tiny_logits(1)
    weights = cosine_weights(logits, labels)
    plain, inverse, count = 0.0, 0.0, 0
    for (b, h, w, d), z in _voxels(logits):
        y = int(labels[b, 0, h, w, d])
        p = _softmax(z)
        cos = p[y] / math.sqrt(sum(v * v for v in p))  # cos(p, e_y) = p_y / ||p||
        assert float(weights[b, h, w, d]) == pytest.approx(cos, rel=1e-10)
        plain += cos * _ce(z, y)
        inverse += (1 - cos) * _ce(z, y)
        count += 1
    assert float(cospgd_loss(logits, labels)) == pytest.approx(plain / count, rel=1e-10)
    assert float(cospgd_loss(logits, labels, targeted=True)) == pytest.approx(inverse / count, rel=1e-10)


def test_cospgd_weights_are_detached():
    logits, labels = _tiny_logits(2)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(cospgd_loss(logits, labels), logits)
    weights = cosine_weights(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].long(), reduction="none")
    (expected,) = torch.autograd.grad((weights * ce).mean(), logits)
    assert not weights.requires_grad
    assert torch.allclose(grad, expected)


@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_losses_match_voxel_loops(targeted):
    logits, labels = _tiny_logits(3)
    b_, n_ = logits.shape[:2]
    ce, masked, js, bal = ([0.0] * b_ for _ in range(4))
    counts = [[0] * n_ for _ in range(b_)]
    for (b, h, w, d), _ in _voxels(logits):
        counts[b][int(labels[b, 0, h, w, d])] += 1
    voxels = logits[0, 0].numel()
    for (b, h, w, d), z in _voxels(logits):
        y = int(labels[b, 0, h, w, d])
        keep = (_argmax(z) != y) if targeted else (_argmax(z) == y)  # not fooled yet
        p = _softmax(z)
        m = [(pi + (1.0 if i == y else 0.0)) / 2 for i, pi in enumerate(p)]
        kl_p = sum(pi * math.log(pi / mi) for pi, mi in zip(p, m) if pi > 0)
        kl_q = math.log(1 / m[y])
        present = sum(1 for c in counts[b] if c > 0)
        ce[b] += _ce(z, y) / voxels
        masked[b] += keep * _ce(z, y) / voxels
        js[b] += (kl_p + kl_q) / 2 / voxels
        bal[b] += keep * _ce(z, y) / (present * counts[b][y])
    for name, expected in (("ce", ce), ("masked-ce", masked), ("js", js), ("masked-ce-bal", bal)):
        got = per_sample_loss(name, logits, labels, targeted)
        assert got.shape == (b_,)
        assert got.tolist() == pytest.approx(expected, rel=1e-9), name


def test_js_is_zero_on_the_label_and_bounded():
    labels = torch.randint(0, 3, (1, 1, 2, 2, 2)).double()
    sure = torch.nn.functional.one_hot(labels[:, 0].long(), 3).movedim(-1, 1).double() * 60
    assert js_divergence(sure, labels).abs().max() < 1e-12
    assert js_divergence(-sure, labels).max() <= math.log(2) + 1e-12


def test_dice_ce_loss_is_the_release_loss_per_sample():
    logits, labels = _tiny_logits(4)
    loss_fn = build_dice_ce()
    got = per_sample_loss("dice-ce", logits, labels, False, loss_fn)
    assert got.tolist() == pytest.approx([float(loss_fn(logits[i:i + 1], labels[i:i + 1])) for i in range(2)])
    with pytest.raises(ValueError, match="needs the attack's loss_fn"):
        per_sample_loss("dice-ce", logits, labels, False)


def test_tile_score_is_the_mean_dice_over_label_classes():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0]).view(1, 1, 2, 2, 2).double()
    pred = torch.tensor([0, 1, 1, 1, 0, 0, 0, 2]).view(1, 1, 2, 2, 2)
    logits = torch.nn.functional.one_hot(pred[:, 0], 4).movedim(-1, 1).double()
    # class 0: 2*2/(4+4); class 1: 2*2/(2+3); class 2: 0; class 3 absent from the labels
    expected = (4 / 8 + 4 / 5 + 0) / 3
    assert float(tile_score(logits, labels, False)) == pytest.approx(expected)
    target = torch.zeros_like(labels)
    assert float(tile_score(logits, target, True)) == pytest.approx(4 / 8)  # not yet at class 0


# --------------------------------------------------------------------------- APGD's schedule


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(20) == [5, 9, 12, 14, 16, 18, 19, 20]
    assert apgd_checkpoints(1) == [1]
    assert all(0 < w <= n for n in range(1, 60) for w in apgd_checkpoints(n))


def test_apgd_step_size_and_restarts_follow_a_hand_computed_trace():
    # four samples, N = 20 (checkpoints 5, 9, 12, 14, 16, 18, 19, 20), eta0 = 1
    rising = [float(k) for k in range(21)]  # rises every step: never halved
    flat = [0.0] * 21  # never rises: halved at every checkpoint
    # sample 2: 4 rises of 5 at w=5 (> 3.75, best rose): kept; no rise in 6..9: halved at 9;
    # 3 of 3 at 12, kept (and halved last time); none at 13-14: halved at 14; 2 of 2 at 16:
    # kept; none at 17-18: halved; rise at 19: kept; none at 20: halved
    mixed = [0, 1, 2, 3, 4, 0.5, 0.4, 0.3, 0.2, 0.1, 5, 6, 7, 7, 7, 8, 9, 9, 9, 10, 10]
    # sample 3: rises at 2..5 but the best (f0 = 10) never beaten: halved at 5 by condition 2;
    # at 9 halved last time: kept; at 12 not halved last time and best still 10: halved;
    # from 13 on the best rises: kept (at 14 it was halved last time; at 16, 18-20 the best rose)
    stalled = [10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9.5, 9.6, 9.7] + [float(v) for v in range(11, 19)]
    trace = torch.tensor([rising, flat, mixed, stalled], dtype=torch.float64).T  # [21, 4]
    schedule = StepSizeSchedule(20, torch.ones(4, dtype=torch.float64), trace[0])
    restarts = {i: [] for i in range(4)}
    improved_at = {i: [] for i in range(4)}
    for k in range(1, 21):
        improved, restart = schedule.observe(trace[k])
        for i in range(4):
            if restart[i]:
                restarts[i].append(k)
            if improved[i]:
                improved_at[i].append(k)
    assert restarts == {0: [], 1: [5, 9, 12, 14, 16, 18, 19, 20], 2: [9, 14, 18, 20], 3: [5, 12]}
    assert schedule.eta.tolist() == [1.0, 2.0 ** -8, 2.0 ** -4, 0.25]
    assert improved_at[0] == list(range(1, 21)) and improved_at[1] == []
    assert improved_at[2] == [1, 2, 3, 4, 10, 11, 12, 15, 16, 19]
    assert improved_at[3] == list(range(13, 21))  # f(x_13) = 11 is the first to beat f(x_0) = 10
    assert schedule.best.tolist() == [20.0, 0.0, 10.0, 18.0]


def test_apgd_momentum_after_a_restart_follows_the_authors_loop(monkeypatch):
    """Scripted gradients and restarts: APGD's iterates equal a loop written as in the authors'
    ``autopgd_base.py``, where the momentum after a restart is ``x_best - x_k`` (not the abandoned step)."""
    steps, eps = 6, 0.1
    gen = torch.Generator().manual_seed(3)
    images = torch.rand((2, 1, 3, 3, 2), generator=gen, dtype=torch.float64) * 0.6 + 0.2
    grads = [torch.randn(images.shape, generator=gen, dtype=torch.float64) for _ in range(steps + 1)]
    improved_script = {1: [True, True], 2: [True, False], 3: [False, True], 4: [False, False], 5: [True, True],
                       6: [False, False]}
    restart_script = {3: [True, False], 4: [False, True], 6: [True, True]}

    class Scripted:
        def __init__(self, n, eta, loss):
            self.eta, self.k = eta.clone(), 0

        def observe(self, loss):
            self.k += 1
            improved = torch.tensor(improved_script[self.k])
            restart = torch.tensor(restart_script.get(self.k, [False, False]))
            self.eta = torch.where(restart, self.eta / 2, self.eta)
            return improved, restart

    seen = []

    class Recording(APGD):
        def evaluate(self, adv, labels):
            seen.append(adv.clone())
            logits = torch.zeros((adv.shape[0], N_CLASSES) + adv.shape[2:], dtype=adv.dtype)
            return torch.zeros(adv.shape[0], dtype=adv.dtype), grads[len(seen) - 1], logits

    monkeypatch.setattr("attacks.apgd.StepSizeSchedule", Scripted)
    labels = torch.zeros((2, 1) + images.shape[2:], dtype=images.dtype)
    Recording(make_model(), build_dice_ce(), eps=eps, steps=steps, loss="ce")(images, labels)

    def clip(x):
        return torch.min(torch.max(x, images - eps), images + eps).clamp(0, 1)

    x = x_old = seen[0]
    grad, x_best, grad_best = grads[0], seen[0], grads[0]
    eta = torch.full((2, 1, 1, 1, 1), 2 * eps, dtype=torch.float64)
    expected = [x]
    for i in range(steps):
        grad2, x_old = x - x_old, x  # the authors' momentum: where x stands now minus where the last step began
        a = 1.0 if i == 0 else 0.75
        z = clip(x + eta * grad.sign())
        x = clip(x + (z - x) * a + grad2 * (1 - a))
        expected.append(x)
        grad = grads[i + 1]
        for b in range(2):
            if improved_script[i + 1][b]:
                x_best, grad_best = x_best.clone(), grad_best.clone()
                x_best[b], grad_best[b] = x[b], grad[b]
            if restart_script.get(i + 1, [False, False])[b]:
                eta[b] /= 2
                x, grad = x.clone(), grad.clone()
                x[b], grad[b] = x_best[b], grad_best[b]
    assert len(seen) == steps + 1
    for k, (got, want) in enumerate(zip(seen, expected)):
        assert torch.allclose(got, want, atol=1e-12), f"iterate {k}"


def test_apgd_returns_each_samples_worst_prediction():
    images, labels = make_batch((3, 1, 8, 8, 8))
    model = make_model()
    attack = APGD(model, build_dice_ce(), eps=8 / 255, steps=6, loss="ce")
    torch.manual_seed(0)
    adv = attack(images, labels)
    with torch.no_grad():
        model.eval()
        assert torch.allclose(tile_score(model(adv), labels, False), attack.best_score)
    assert attack.eta_trace.shape == (7, 3)
    assert torch.all(attack.eta_trace[0] == 2 * 8 / 255)
    assert len(attack.success_rate) == 7


# --------------------------------------------------------------------------- budgets, targeted, shapes


def _build(name, model, norm="linf", targeted=False, eps=EPS, steps=3):
    cfg = dict(eps=eps, steps=steps, targeted=targeted)
    if name != "apgd":
        cfg["alpha"] = eps / 2
    if name in ("cospgd", "apgd", "worst-case"):
        cfg["norm"] = norm
    if name == "worst-case":
        cfg["attacks"] = ("apgd-masked-ce", "apgd-js") if norm == "l2" else ("apgd-masked-ce", "segpgd")
    return build_attack(name, model, build_dice_ce(), **cfg)


CASES = [(name, "linf") for name in NEW] + [(name, "l2") for name in ("cospgd", "apgd", "worst-case")]


@pytest.mark.parametrize("name, norm", CASES)
def test_budget_and_unit_range(name, norm):
    images, labels = make_batch((2, 2, 8, 12, 6))  # two channels, a non-cubic 3D tile
    images[0, :, :2] = 0.0  # voxels at the range's ends: the [0, 1] clamp must hold
    images[1, :, -2:] = 1.0
    model = make_model(in_channels=2)
    adv = _build(name, model, norm)(images, labels)
    delta = adv - images
    assert adv.shape == images.shape and adv.min() >= 0 and adv.max() <= 1
    if norm == "linf":
        assert delta.abs().max() <= EPS + 1e-6
    else:
        assert torch.all(l2_norm(delta) <= EPS * math.sqrt(images[0].numel()) + 1e-5)
    assert delta.abs().max() > 0


@pytest.mark.parametrize("name, norm", CASES)
def test_targeted_lowers_the_loss_towards_the_target(name, norm):
    images, _ = make_batch((2, 1, 8, 8, 8))
    target = torch.zeros(2, 1, 8, 8, 8)
    target[..., :4] = 1
    model = make_model()
    with torch.no_grad():
        model.eval()
        before = float(torch.nn.functional.cross_entropy(model(images), target[:, 0].long()))
    torch.manual_seed(0)
    adv = _build(name, model, norm, targeted=True, eps=16 / 255, steps=5)(images, target)
    with torch.no_grad():
        model.eval()
        after = float(torch.nn.functional.cross_entropy(model(adv), target[:, 0].long()))
    assert after < before


@pytest.mark.parametrize("name", NEW)
def test_untargeted_attacks_lower_the_tile_dice(name):
    images, _ = make_batch((2, 1, 8, 8, 8))
    model = make_model()
    with torch.no_grad():
        model.eval()
        labels = model(images).argmax(dim=1, keepdim=True).float()  # clean Dice 1: any flip shows
        before = tile_score(model(images), labels, False)
    torch.manual_seed(0)
    adv = _build(name, model, eps=16 / 255, steps=5)(images, labels)
    with torch.no_grad():
        after = tile_score(model(adv), labels, False)
    assert torch.all(after <= before + 1e-9) and torch.any(after < before)


def test_segpgd_steps_match_an_independent_loop():
    images, labels = make_batch((1, 1, 4, 4, 2), dtype=torch.float64)
    model = make_model(dtype=torch.float64)
    steps, alpha = 3, 1 / 255
    adv = SegPGD(model, None, eps=EPS, alpha=alpha, steps=steps)(images, labels)
    model.eval()
    x = images.clone()
    for t in range(1, steps + 1):
        x.requires_grad_(True)
        logits = model(x)
        lam = (t - 1) / (2 * steps)
        terms = []
        for (b, h, w, d), z in _voxels(logits.detach()):
            y = int(labels[b, 0, h, w, d])
            ce = torch.nn.functional.cross_entropy(logits[b:b + 1, :, h, w, d], labels[b:b + 1, 0, h, w, d].long())
            terms.append((lam if _argmax(z) != y else 1 - lam) * ce)
        (grad,) = torch.autograd.grad(torch.stack(terms).mean(), x)
        x = torch.clamp(torch.clamp(x.detach() + alpha * grad.sign(), images - EPS, images + EPS), 0, 1)
    assert torch.allclose(adv, x)


def test_cospgd_l2_step_matches_the_formula():
    images, labels = make_batch((2, 1, 6, 6, 4), dtype=torch.float64)
    model = make_model(dtype=torch.float64)
    eps, alpha = 8 / 255, 2 / 255
    adv = CosPGD(model, None, eps=eps, alpha=alpha, steps=1, norm="l2")(images, labels)
    model.eval()
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cospgd_loss(model(x), labels), x)
    size = math.sqrt(images[0].numel())
    step = alpha * size * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    assert torch.allclose(adv, torch.clamp(images + step, 0, 1))  # alpha < eps: no projection


def test_projection_and_random_start_stay_in_the_balls():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 5, 6, 7)
    for norm in ("linf", "l2"):
        rad = radius(images, EPS, norm)
        start = random_start(images, rad, norm)
        far = project(images + torch.randn_like(images), images, rad, norm)
        for x in (start, far):
            assert x.min() >= 0 and x.max() <= 1
            size = (x - images).abs().flatten(1).amax(dim=1) if norm == "linf" else l2_norm(x - images)
            assert torch.all(size <= rad + 1e-6)
    g = torch.randn(3, 1, 5, 6, 7)
    assert torch.allclose(l2_norm(direction(g, "l2")), torch.ones(3))
    assert torch.equal(direction(g, "linf"), g.sign())


# --------------------------------------------------------------------------- the worst case


def test_worst_case_keeps_each_tiles_lowest_score_and_counts_the_winners():
    images, labels = make_batch((4, 1, 8, 8, 8))
    model = make_model()
    attack = WorstCase(model, build_dice_ce(), attacks=("apgd-masked-ce", "apgd-js", "segpgd"), eps=16 / 255,
                       alpha=4 / 255, steps=3)
    torch.manual_seed(0)
    adv = attack(images, labels)
    scores = attack.scores  # [M, B]
    assert scores.shape == (3, 4)
    assert torch.equal(attack.winner, scores.argmin(dim=0))  # first on ties, as argmin
    with torch.no_grad():
        model.eval()
        assert torch.allclose(tile_score(model(adv), labels, False), scores.min(dim=0).values)
    parts = {key: float(value) for key, value in attack.call_parts().items()}
    assert sum(parts.values()) == 4 and set(parts) == {"won[apgd-masked-ce]", "won[apgd-js]", "won[segpgd]"}
    metrics = WorstCase.case_metrics({"won[apgd-masked-ce]": 2.0, "won[apgd-js]": 5.0, "won[segpgd]": 5.0})
    assert metrics == {"won[apgd-masked-ce]": 2, "won[apgd-js]": 5, "won[segpgd]": 5, "worst_case_winner": "apgd-js"}
    json.dumps(metrics)


@pytest.mark.parametrize("kwargs, message", [
    (dict(attacks=()), "at least one member"),
    (dict(attacks=("apgd-js", "cw")), r"unknown worst-case member\(s\) \['cw'\]"),
    (dict(attacks=("pgd", "pgd")), "must differ"),
    (dict(attacks=("pgd",), norm="l2"), "'pgd' is L-inf only"),
])
def test_worst_case_refuses_bad_members(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorstCase(make_model(), build_dice_ce(), eps=EPS, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="dlr"), "unknown APGD loss 'dlr'"),
    (dict(norm="l1"), "unknown norm 'l1'"),
    (dict(steps=0), "steps must be an int >= 1"),
])
def test_apgd_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        APGD(make_model(), build_dice_ce(), **dict(dict(eps=EPS, steps=2), **kwargs))


def test_folder_names_and_summaries():
    values = dict(eps=4.0, alpha=0.01, steps=20, norm="linf", loss="masked-ce", random_start=False, targeted=False,
                  attacks=("apgd-masked-ce", "apgd-js"))
    assert ATTACKS["segpgd"].folder_name(values) == "segpgd_alpha_0.01_eps_4.0_i_20"
    assert ATTACKS["segpgd"].folder_name(dict(values, random_start=True)) == "segpgd_alpha_0.01_eps_4.0_i_20_rs"
    assert ATTACKS["cospgd"].folder_name(dict(values, norm="l2")) == "cospgd_l2_alpha_0.01_eps_4.0_i_20"
    assert ATTACKS["apgd"].folder_name(values) == "apgd_masked-ce_linf_eps_4.0_i_20"
    assert ATTACKS["worst-case"].folder_name(values) == "worst_case_apgd-masked-ce+apgd-js_linf_eps_4.0_i_20"
    assert ATTACKS["worst-case"].folder_name(dict(values, attacks=("pgd",))) == "worst_case_pgd_linf_eps_4.0_i_20_alpha_0.01"
    assert ATTACKS["worst-case"].summary(values).startswith("worst case of apgd-masked-ce+apgd-js: norm=linf")
    assert "loss=masked-ce" in ATTACKS["apgd"].summary(values)
