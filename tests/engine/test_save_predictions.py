"""``--save_predictions``: clean and adversarial label maps on the grid of each case's file."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch

import generate_adv_samples as gen
from data.loading import build_dataset, plain_tensor
from engine import cli
from engine.evaluation import load_trained_model
from networks import predict_volume
from tests.scripts.helpers import eval_flags, make_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_predictions_overlay_the_original_image(tiny_dataset, tmp_path):
    """The phantom is stored LPS (the loader flips two axes to RAS) and cropped to the body: the saved
    maps have the file's shape and affine, and loading a saved map the way a label is loaded gives back
    the prediction on the loaded grid voxel for voxel (flips and crops are exact)."""
    checkpoint = make_tiny_checkpoint(str(tmp_path / "ckpt" / "model.pt"))
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path / "out", "--attack_name", "pgd", "--steps", "1",
                      "--eps", "8", "--no_sub_dir_adv_images", "--save_predictions")
    assert gen.main(argv) == 0
    item = tiny_dataset.validation[0]
    name = os.path.basename(item["label"])  # named like the case's label file, as nnU-Net names predictions
    original = nib.load(item["image"])
    saved = {kind: nib.load(str(tmp_path / "out" / f"predTs{kind}" / name)) for kind in ("Clean", "Adv")}
    for image in saved.values():
        assert image.shape == original.shape
        np.testing.assert_allclose(image.affine, original.affine, atol=1e-5)

    args = gen.parse_args(argv)
    settings = cli.data_settings(args)
    model = load_trained_model(cli.model_settings(args), checkpoint, torch.device("cpu"))
    loaded = build_dataset(settings, "validation", "eval", items=[item])[0]
    expected = predict_volume(model, plain_tensor(loaded["image"])[None], cli.window_settings(args))[0]
    as_label = build_dataset(settings, "validation", "eval",
                             items=[dict(item, label=str(tmp_path / "out" / "predTsClean" / name))])[0]["label"]
    assert torch.equal(plain_tensor(as_label).round().long(), expected.long())
    assert len(np.unique(np.asarray(saved["Clean"].dataobj))) > 1  # not a constant map


def test_a_finished_case_without_its_predictions_is_done_again(tiny_dataset, tmp_path):
    checkpoint = make_tiny_checkpoint(str(tmp_path / "ckpt" / "model.pt"))
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path / "out", "--attack_name", "fgsm", "--eps", "8",
                      "--no_sub_dir_adv_images")
    assert gen.main(argv) == 0
    assert not (tmp_path / "out" / "predTsClean").exists()
    assert gen.main(argv + ["--save_predictions"]) == 0  # resumes the same run folder
    name = os.path.basename(tiny_dataset.validation[0]["label"])
    assert (tmp_path / "out" / "predTsAdv" / name).exists()
