"""``--dataset nnunet``: nnU-Net's raw layout and geometry, our clean predictions against nnU-Net's own.

nnU-Net's ``nnUNetPredictor.predict_from_files_sequential`` predicts the fold's validation cases from their
raw files (its reader, preprocessing, sliding window, export); our generation run with ``--save_predictions``
must write the same label maps on the same grids. One case has the plans' spacing (no resampling), one
another spacing (resampled there and back).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

import generate_adv_samples as gen  # noqa: E402
from data.phantom_nnunet import write_nnunet_raw_dataset  # noqa: E402
from tests.networks.nnunet_folder import write_nnunet_folder  # noqa: E402
from tests.scripts.helpers import run_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VAL = ["case_0000", "case_0001"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet_raw")
    # nnU-Net's arrays are (z, y, x): the plans' spacing (2.0, 1.5, 1.5) is x/y 1.5 mm, z 2.0 mm
    raw = write_nnunet_raw_dataset(str(root / "raw" / "Dataset999_Tiny"), n_cases=3, shape=(40, 36, 20),
                                   spacings=[(1.5, 1.5, 2.0), (1.3, 1.2, 2.4)], organs=[6, 1])
    model = write_nnunet_folder(str(root / "results"), labels=("background", "liver", "spleen"), folds=(0,))
    with open(os.path.join(model, "splits_final.json"), "w") as f:
        json.dump([{"train": ["case_0002"], "val": VAL}], f)
    return raw, model


def reference_predictions(raw: str, model: str, mirror: bool, out: str) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model, use_folds=(0,))
    os.makedirs(out, exist_ok=True)
    predictor.predict_from_files_sequential([[f"{raw}/imagesTr/{case}_0000.nii.gz"] for case in VAL], out,
                                            save_probabilities=False, overwrite=True,
                                            folder_with_segs_from_prev_stage=None)


@pytest.mark.parametrize("tta", ["none", pytest.param("mirror", marks=pytest.mark.slow)])
def test_clean_predictions_equal_nnunet_predictor(setup, tmp_path, tta, capsys):
    import SimpleITK as sitk

    raw, model = setup
    argv = ["--model_name", "nnunet", "--nnunet_model_dir", model, "--dataset", "nnunet", "--data_dir", raw,
            "--tta", tta, "--attack_name", "pgd", "--steps", "1", "--eps", "4", "--save_predictions",
            "--save_adv_images_dir", str(tmp_path / "run"), "--no_sub_dir_adv_images", "--workers", "0",
            "--device", "cpu"]
    code, err = run_main(gen.main, argv, capsys)
    assert code == 0, err
    reference_predictions(raw, model, tta == "mirror", str(tmp_path / "nnunet"))
    for case in VAL:
        ours = sitk.ReadImage(str(tmp_path / "run" / "predTsClean" / f"{case}.nii.gz"))
        theirs = sitk.ReadImage(str(tmp_path / "nnunet" / f"{case}.nii.gz"))
        original = sitk.ReadImage(f"{raw}/imagesTr/{case}_0000.nii.gz")
        for image in (ours, theirs):
            assert image.GetSize() == original.GetSize()
            np.testing.assert_allclose(image.GetSpacing(), original.GetSpacing())
            np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin())
        a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
        assert len(np.unique(b)) > 1  # not a constant map
        agreement = float((a == b).mean())
        assert agreement >= 0.995, (case, agreement)
        adv = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / "predTsAdv" / f"{case}.nii.gz")))
        assert adv.shape == a.shape


def test_missing_splits_is_one_line(setup, tmp_path, capsys, monkeypatch):
    import shutil

    raw, model = setup
    copy = str(tmp_path / "results" / os.path.basename(model))
    shutil.copytree(model, copy)
    os.remove(os.path.join(copy, "splits_final.json"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    argv = ["--model_name", "nnunet", "--nnunet_model_dir", copy, "--dataset", "nnunet", "--data_dir", raw,
            "--attack_name", "fgsm", "--debugging", "--workers", "0", "--device", "cpu"]
    code, err = run_main(gen.main, argv, capsys)
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1
    assert "splits_final.json not found" in err


def test_test_cases_come_from_images_ts_with_their_labels(setup, tmp_path, capsys):
    """``--nnunet_cases test`` evaluates every case of ``imagesTs/`` (labels from ``labelsTs/``), not the fold's;
    a copy of a validation case there is predicted exactly as the fold run predicts it."""
    import shutil

    raw, model = setup
    copy = tmp_path / "raw" / os.path.basename(raw)
    shutil.copytree(raw, copy)
    (copy / "imagesTs").mkdir()
    (copy / "labelsTs").mkdir()
    shutil.copy(copy / "imagesTr" / "case_0001_0000.nii.gz", copy / "imagesTs" / "test_0007_0000.nii.gz")
    shutil.copy(copy / "labelsTr" / "case_0001.nii.gz", copy / "labelsTs" / "test_0007.nii.gz")
    base = ["--model_name", "nnunet", "--nnunet_model_dir", model, "--dataset", "nnunet", "--data_dir", str(copy),
            "--attack_name", "gn", "--std", "4", "--save_predictions", "--no_sub_dir_adv_images", "--workers", "0",
            "--device", "cpu"]
    code, err = run_main(gen.main, base + ["--nnunet_cases", "test", "--save_adv_images_dir", str(tmp_path / "test")],
                         capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "test" / "results.json").read_text())
    assert results["overall"]["n_cases"] == 1 and results["args"]["nnunet_cases"] == "test"
    code, err = run_main(gen.main, base + ["--max_cases", "2", "--save_adv_images_dir", str(tmp_path / "fold")], capsys)
    assert code == 0, err
    import nibabel as nib

    ours = np.asarray(nib.load(str(tmp_path / "test" / "predTsClean" / "test_0007.nii.gz")).dataobj)
    fold = np.asarray(nib.load(str(tmp_path / "fold" / "predTsClean" / "case_0001.nii.gz")).dataobj)
    assert np.array_equal(ours, fold)
    shutil.rmtree(copy / "labelsTs")
    code, err = run_main(gen.main, base + ["--nnunet_cases", "test", "--save_adv_images_dir", str(tmp_path / "t2")],
                         capsys)
    assert code == 2 and "labelsTs" in err and "Traceback" not in err
