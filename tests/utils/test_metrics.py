import copy
import functools
import logging
import math
import warnings

import numpy as np
import pytest
import torch

import utils.metrics as metrics
from utils.metrics import (
    ALEXNET_WEIGHTS_FILE,
    LPIPSSimilarity,
    class_mean,
    compute_case_metrics,
    dice_per_class,
    hd95_per_class,
    psnr,
    ssim3d,
    success_rate,
)


def random_labels(shape=(12, 10, 8), num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=shape)


def numpy_dice(pred, label, num_classes):
    out = []
    for c in range(num_classes):
        p, g = pred == c, label == c
        out.append(2 * np.logical_and(p, g).sum() / (p.sum() + g.sum()) if g.any() else np.nan)
    return np.array(out)


def cube(shape, start, size, value=1):
    volume = torch.zeros(shape, dtype=torch.long)
    sl = tuple(slice(s, s + size) for s in start)
    volume[sl] = value
    return volume


# ----------------------------------------------------------------------------- Dice


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_matches_numpy(seed):
    num_classes = 5
    label = random_labels(num_classes=num_classes - 1, seed=seed)  # class 4 never in the label
    pred = random_labels(num_classes=num_classes, seed=seed + 10)
    got = dice_per_class(torch.from_numpy(pred), torch.from_numpy(label), num_classes)
    want = numpy_dice(pred, label, num_classes)
    assert got.shape == (num_classes,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, equal_nan=True)
    assert math.isnan(got[4])  # absent from the ground truth: NaN even though predicted


def test_dice_equals_monai_dice_metric():
    """The release's semantics: MONAI's Dice with the background, NaN for classes absent from the truth."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    num_classes = 6
    label = torch.from_numpy(random_labels(num_classes=num_classes - 1, seed=4))
    pred = torch.from_numpy(random_labels(num_classes=num_classes, seed=5))
    want = compute_dice(one_hot(pred[None, None], num_classes), one_hot(label[None, None], num_classes),
                        include_background=True, ignore_empty=True)[0]
    torch.testing.assert_close(dice_per_class(pred, label, num_classes), want.float(), equal_nan=True)


def test_dice_accepts_batched_shapes_and_float_labels():
    label = random_labels()
    pred = random_labels(seed=3)
    flat = dice_per_class(pred, label, 4)
    batched = dice_per_class(torch.from_numpy(pred)[None, None], torch.from_numpy(label).float()[None, None], 4)
    torch.testing.assert_close(flat, batched, equal_nan=True)


def test_dice_missed_class_is_zero():
    label = cube((8, 8, 8), (1, 1, 1), 3)
    pred = torch.zeros_like(label)
    assert dice_per_class(pred, label, 2)[1].item() == 0.0


def test_dice_rejects_bad_input():
    label = random_labels()
    with pytest.raises(ValueError, match=r"pred values must lie in \[0, 2\] for num_classes=3, got range \[0, 3\]"):
        dice_per_class(label, label, 3)
    with pytest.raises(ValueError, match="same shape"):
        dice_per_class(label[:5], label, 4)
    with pytest.raises(ValueError, match="integer class indices"):
        dice_per_class(label + 0.5, label, 4)


# ----------------------------------------------------------------------------- HD95


def test_hd95_of_shifted_cubes_is_the_shift():
    shape = (24, 24, 24)
    label = cube(shape, (4, 4, 4), 8)
    pred = cube(shape, (7, 4, 4), 8)  # shifted by 3 voxels along H
    got = hd95_per_class(pred, label, 2)
    assert got[1].item() == pytest.approx(3.0)


def test_hd95_uses_spacing():
    shape = (24, 24, 24)
    got = hd95_per_class(cube(shape, (7, 4, 4), 8), cube(shape, (4, 4, 4), 8), 2, spacing=(1.5, 1.5, 2.0))
    assert got[1].item() == pytest.approx(4.5)


def test_hd95_is_nan_for_classes_missing_on_either_side():
    shape = (16, 16, 16)
    label = cube(shape, (2, 2, 2), 4, value=1)
    label[10:13, 10:13, 10:13] = 2  # class 2 only in the ground truth
    pred = cube(shape, (2, 2, 2), 4, value=1)
    pred[0:2, 12:14, 0:2] = 3  # class 3 only in the prediction
    got = hd95_per_class(pred, label, 5)
    assert got[1].item() == 0.0
    assert all(math.isnan(v) for v in got[2:].tolist())  # 2: no pred, 3: no label, 4: neither
    assert class_mean(got) == pytest.approx(class_mean(got[:2]))


def test_class_mean_skips_nan():
    assert class_mean([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(class_mean([float("nan")]))
    assert class_mean(torch.tensor([0.5, 0.25])) == 0.375


# ----------------------------------------------------------------------------- success rate, PSNR, SSIM


def test_success_rate():
    clean = torch.zeros(4, 4, 4, dtype=torch.long)
    adv = clean.clone()
    adv[0, :, :] = 2  # 16 of 64 voxels changed
    assert success_rate(clean, adv) == 0.25
    assert success_rate(clean, clean) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        success_rate(clean, adv[:2])


def test_psnr_known_value():
    clean = torch.full((8, 8, 8), 0.5)
    adv = clean + 0.1  # MSE 0.01 -> 20 dB on data range 1
    assert psnr(clean, adv) == pytest.approx(20.0, abs=1e-4)
    assert psnr(clean, clean) == math.inf


def test_ssim_identical_and_different():
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 1, 16, 16, 8, generator=gen)
    assert ssim3d(clean, clean) == pytest.approx(1.0, abs=1e-6)
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    assert ssim3d(clean, noisy) < 0.9
    with pytest.raises(ValueError, match="positive odd"):
        ssim3d(clean, noisy, win_size=4)


# ----------------------------------------------------------------------------- LPIPS


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "_warned_unavailable", False)
    return tmp_path


def test_lpips_without_cached_weights_warns_once(empty_hub, caplog):
    volume = torch.rand(32, 32, 4)
    first, second = LPIPSSimilarity(), LPIPSSimilarity()
    assert not first.available
    with caplog.at_level(logging.WARNING, logger="utils.metrics"):
        assert first(volume, volume) is None
        assert first(volume, volume) is None
        assert second(volume, volume) is None
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "LPIPS similarity is reported as missing" in message
    assert ALEXNET_WEIGHTS_FILE in message and str(empty_hub / "checkpoints") in message
    assert not first.available


@functools.lru_cache(maxsize=1)
def random_lpips():
    """LPIPS with a randomly initialised AlexNet (nothing downloaded), built once."""
    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated"
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()


def test_lpips_with_builder_identical_volumes_is_one(empty_hub):
    calls = []

    def builder():
        calls.append(1)
        return random_lpips()

    lpips_sim = LPIPSSimilarity(builder=builder, batch_size=3)
    assert lpips_sim.available and not calls  # built lazily
    volume = torch.rand(1, 1, 32, 32, 5, generator=torch.Generator().manual_seed(0))
    assert lpips_sim(volume, volume) == pytest.approx(1.0, abs=1e-6)
    other = (volume + 0.3 * torch.randn(volume.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert lpips_sim(volume, other) < 1.0
    assert len(calls) == 1


def test_lpips_feeds_axial_slices_like_the_reference(empty_hub):
    net = random_lpips()
    gen = torch.Generator().manual_seed(2)
    clean, adv = torch.rand(32, 36, 5, generator=gen), torch.rand(32, 36, 5, generator=gen)
    got = LPIPSSimilarity(builder=lambda: net, batch_size=2)(clean, adv)
    with torch.no_grad():
        slices = lambda v: v.permute(2, 0, 1).unsqueeze(1)  # [D, 1, H, W]
        want = 1 - net(2 * slices(clean) - 1, 2 * slices(adv) - 1).view(-1).mean().item()
    assert got == pytest.approx(want, abs=1e-6)


def test_default_builder_loads_cached_alexnet_weights(empty_hub):
    # torchvision's AlexNet layout ("features.{i}.weight"), random values, classifier left out
    gen = torch.Generator().manual_seed(0)
    features = {
        f"features.{key.split('.', 1)[1]}": torch.randn(value.shape, generator=gen) * 0.05
        for key, value in random_lpips().net.state_dict().items()
    }
    (empty_hub / "checkpoints").mkdir()
    torch.save(features, empty_hub / "checkpoints" / ALEXNET_WEIGHTS_FILE)
    lpips_sim = LPIPSSimilarity()
    assert lpips_sim.available
    volume = torch.rand(32, 32, 3)
    assert lpips_sim(volume, volume) == pytest.approx(1.0, abs=1e-6)
    net = lpips_sim._net
    assert torch.equal(net.net.slice1[0].weight, features["features.0.weight"])
    assert torch.equal(getattr(net.net.slice5, "10").bias, features["features.10.bias"])


# ----------------------------------------------------------------------------- one case


def test_class_names():
    from data.datasets import DATASETS

    assert len(DATASETS["btcv"].class_names) == 14 and DATASETS["btcv"].class_names[13] == "left adrenal"
    assert list(DATASETS["acdc"].class_names) == ["background", "RV", "myocardium", "LV"]


def test_compute_case_metrics(empty_hub):
    shape = (16, 16, 16)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, *shape, generator=gen)
    image_adv = (image + 0.05).clamp(0, 1)
    label = cube(shape, (3, 3, 3), 6)
    pred_clean = label.clone()
    pred_adv = cube(shape, (5, 3, 3), 6)
    result = compute_case_metrics(image, image_adv, label[None, None], pred_clean, pred_adv, num_classes=3)

    assert set(result) == {
        "dice_clean", "dice_clean_mean", "dice_clean_fg_mean", "dice_adv", "dice_adv_mean", "dice_adv_fg_mean",
        "hd95_clean", "hd95_clean_mean", "hd95_clean_worst_mean", "hd95_adv", "hd95_adv_mean", "hd95_adv_worst_mean",
        "success_rate", "ssim", "psnr", "lpips_similarity",
    }  # fmt: skip
    assert result["dice_clean"][:2] == [1.0, 1.0] and math.isnan(result["dice_clean"][2])
    assert result["dice_clean_mean"] == 1.0
    assert result["dice_adv"][1] == pytest.approx(2 * 4 * 36 / (2 * 216))
    assert result["hd95_clean"][1] == 0.0 and result["hd95_adv"][1] == pytest.approx(2.0)
    assert result["success_rate"] == pytest.approx(2 * 2 * 36 / 16**3)
    assert 0 < result["ssim"] < 1 and result["psnr"] > 20
    assert result["lpips_similarity"] is None
    for key, value in result.items():
        assert value is None or isinstance(value, (float, list)), key

    with_lpips = compute_case_metrics(
        image[0, 0].repeat(2, 2, 1), image[0, 0].repeat(2, 2, 1), label.repeat(2, 2, 1),
        label.repeat(2, 2, 1), label.repeat(2, 2, 1), 3, lpips=LPIPSSimilarity(builder=random_lpips),
    )  # fmt: skip
    assert with_lpips["lpips_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert with_lpips["success_rate"] == 0.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_the_cpu_numbers():
    shape = (32, 32, 8)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(shape, generator=gen)
    label = cube(shape, (3, 3, 1), 6)
    pred = cube(shape, (5, 3, 1), 6)
    lpips_sim = LPIPSSimilarity(builder=lambda: copy.deepcopy(random_lpips()))
    cpu = compute_case_metrics(image, image * 0.9, label, label, pred, 2, lpips=lpips_sim)
    gpu = compute_case_metrics(
        image.cuda(), image.cuda() * 0.9, label.cuda(), label.cuda(), pred.cuda(), 2, lpips=lpips_sim
    )
    for key in cpu:
        np.testing.assert_allclose(np.asarray(gpu[key], dtype=float), np.asarray(cpu[key], dtype=float), rtol=1e-3, atol=1e-3)


def test_hd95_equals_monai_on_the_whole_volume():
    """The per-class crop before MONAI's call changes nothing: classes at the border, in the
    prediction only, in the label only, single voxels, and absent ones."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    num_classes = 7
    label = torch.zeros(20, 18, 12, dtype=torch.long)
    label[0:6, 0:5, 0:4] = 1  # touches three borders
    label[8:15, 6:12, 3:9] = 2
    label[17:20, 14:18, 9:12] = 3  # touches the far borders
    label[10, 2, 6] = 4  # a single voxel
    pred = label.clone()
    pred[9:16, 7:12, 2:9] = 2
    pred[2:5, 1:3, 1:3] = 0
    pred[0, 17, 0] = 5  # predicted only
    pred[10, 2, 6] = 0  # class 4 missed
    # class 6 nowhere
    with pytest.warns(UserWarning, match="is all 0"):  # MONAI's note on the absent classes
        want = compute_hausdorff_distance(one_hot(pred[None, None], num_classes),
                                          one_hot(label[None, None], num_classes),
                                          include_background=True, distance_metric="euclidean", percentile=95)[0]
    for threads in (1, 3):  # the classes spread over threads: same numbers, in class order
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            got = hd95_per_class(pred, label, num_classes)
        finally:
            torch.set_num_threads(previous)
        torch.testing.assert_close(got, want.float(), equal_nan=True)


def test_foreground_mean_and_an_erased_organ_as_the_worst_distance():
    # two organs; the attacked prediction erases organ 2 and shifts organ 1 by two voxels
    shape = (16, 16, 8)
    label = cube(shape, (2, 2, 2), 4) + cube(shape, (9, 9, 2), 4, value=2)
    pred = cube(shape, (4, 2, 2), 4)
    result = compute_case_metrics(torch.zeros(shape), torch.zeros(shape), label, label, pred, num_classes=3)
    truth_bg, pred_bg = 16 * 16 * 8 - 128, 16 * 16 * 8 - 64
    both_bg = 16 * 16 * 8 - 128 - 2 * 16  # background in both: pred's shifted organ 1 covers 2 slabs of 16 more
    background = 2 * both_bg / (truth_bg + pred_bg)
    organ1 = 2 * 32 / (64 + 64)
    assert result["dice_adv"] == pytest.approx([background, organ1, 0.0])
    assert result["dice_adv_mean"] == pytest.approx((background + organ1) / 3)  # the release's: background in
    assert result["dice_adv_fg_mean"] == pytest.approx(organ1 / 2)  # foreground only
    # the release's HD95 skips the erased organ; the worst-case field counts the volume's diagonal
    hd = result["hd95_adv"]
    assert math.isnan(hd[2])
    assert result["hd95_adv_mean"] == pytest.approx((hd[0] + hd[1]) / 2)
    diagonal = math.sqrt(16**2 + 16**2 + 8**2)
    assert result["hd95_adv_worst_mean"] == pytest.approx((hd[0] + hd[1] + diagonal) / 3)
    assert result["hd95_clean_worst_mean"] == result["hd95_clean_mean"] == 0.0
    spaced = metrics.hd95_worst_case(torch.tensor(hd), pred, label, 3, spacing=(1.5, 1.5, 2.0))
    assert float(spaced[2]) == pytest.approx(math.sqrt(24**2 + 24**2 + 16**2))
