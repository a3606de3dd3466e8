import numpy as np
import pytest

from engine.cli import data_settings
import torch

from utils.figures import ORGAN_COLOURS, save_case_figure, select_slice, to_display
from data.phantom import LABEL_NAMES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _case(shape=(24, 20, 10), busiest=6):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    adv = np.clip(image + 0.02 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[4:10, 4:10, 2] = 6  # 36 voxels
    label[2:20, 3:15, busiest] = 1  # 216 voxels: the busiest slice
    label[5:8, 5:8, busiest] = 8
    label[10:14, 10:14, 8] = 3
    pred_adv = label.copy()
    pred_adv[2:12, 3:15, busiest] = 7
    return image, adv, label, label.copy(), pred_adv


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width, height, len(data)


def test_figure_is_a_png_of_the_busiest_slice(tmp_path):
    path = tmp_path / "sub" / "case.png"
    index = save_case_figure(str(path), *_case(), LABEL_NAMES, title="img0001.nii.gz — pgd",
                             dice_clean=80.0, dice_adv=30.0)
    assert index == 6 == select_slice(_case()[2])
    width, height, size = _png_size(path)
    assert (width, height) == (1200, 860)
    assert size > 20_000  # six panels of content, not an empty canvas


def test_figure_accepts_tensors_and_an_explicit_slice(tmp_path):
    image, adv, label, pred, pred_adv = (torch.as_tensor(x)[None, None] for x in _case())
    index = save_case_figure(str(tmp_path / "t.png"), image, adv, label, pred, pred_adv, LABEL_NAMES, slice_index=2)
    assert index == 2
    _png_size(tmp_path / "t.png")


def test_figure_without_perturbation_or_foreground(tmp_path):
    image = np.zeros((16, 16, 8), np.float32)
    index = save_case_figure(str(tmp_path / "z.png"), image, image, image, image, image, LABEL_NAMES)
    assert index == 4  # no foreground: the middle slice
    _png_size(tmp_path / "z.png")


def test_figure_rejects_bad_input(tmp_path):
    image, adv, label, pred, pred_adv = _case()
    with pytest.raises(ValueError, match="same shape"):
        save_case_figure(str(tmp_path / "x.png"), image, adv[:, :, :5], label, pred, pred_adv, LABEL_NAMES)
    with pytest.raises(ValueError, match="slice_index must be in 0..9"):
        save_case_figure(str(tmp_path / "x.png"), image, adv, label, pred, pred_adv, LABEL_NAMES, slice_index=10)


def test_display_is_radiological_for_ras_arrays():
    # axis 0 points to the patient's right, axis 1 anterior (RAS)
    slice_hw = np.zeros((6, 4))
    slice_hw[5, 3] = 1  # right-most, most anterior voxel
    shown = to_display(slice_hw)
    assert shown.shape == (4, 6)
    assert shown[0, 0] == 1  # top row (anterior), left column (patient's right)


def test_palette_has_14_distinct_colours():
    assert len(ORGAN_COLOURS) == 14 and len(set(ORGAN_COLOURS)) == 14


def test_figure_from_the_phantom(tiny_dataset, data_args, tmp_path):
    from data.loading import build_transforms

    out = build_transforms(data_settings(data_args), "eval")(tiny_dataset.validation[0])
    image, label = out["image"][0].numpy(), out["label"][0].numpy()
    adv = np.clip(image + 4 / 255 * np.sign(np.random.default_rng(1).standard_normal(image.shape)), 0, 1)
    index = save_case_figure(str(tmp_path / "phantom.png"), image, adv, label, label, label, LABEL_NAMES)
    assert index == int(np.argmax((label > 0).sum(axis=(0, 1))))
    _png_size(tmp_path / "phantom.png")
