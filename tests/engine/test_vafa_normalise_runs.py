"""``--vafa_normalise`` through the scripts: run-folder identity, the per-case renormalisation
share in the reports, its warning, and the flag reaching adversarial training."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch

import generate_adv_samples as gen
import run_normal_or_adv_training as train_script
from engine import cli, jobs
from training import run as training
from networks import build_model
from tests.scripts.helpers import eval_flags

pytestmark = pytest.mark.usefixtures("one_thread")

VAFA = ["--attack_name", "vafa-3d", "--block_size", "8", "8", "8", "--steps", "2", "--q_max", "20"]



def test_the_default_keeps_the_release_folder_and_clip_gets_its_own(tiny_dataset, checkpoint, tmp_path):
    default = gen.parse_args(eval_flags(tiny_dataset, checkpoint, tmp_path, *VAFA))
    clip = gen.parse_args(eval_flags(tiny_dataset, checkpoint, tmp_path, *VAFA, "--vafa_normalise", "clip"))
    assert jobs.adv_subdir_name(default) == "vafa_q_max_20.0_i_2_3d_dct_8x8x8_use_ssim_loss_False"
    assert jobs.adv_subdir_name(clip) == "vafa_q_max_20.0_i_2_3d_dct_8x8x8_use_ssim_loss_False_clip"
    assert cli.attack_settings(clip).build(None, None).normalise == "clip"


def _run(argv, run_dir):
    assert gen.main(argv) == 0
    results = json.loads((run_dir / "results.json").read_text())
    with open(run_dir / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return results, rows


def test_share_is_reported_per_case_and_overall(tiny_dataset, checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    results, rows = _run(eval_flags(tiny_dataset, checkpoint, tmp_path, *VAFA), tmp_path / "vafa_q_max_20.0_i_2_3d_dct_8x8x8_use_ssim_loss_False")
    (case,) = results["per_case"].values()
    assert 0 <= case["renormalisation_share"] == pytest.approx(results["overall"]["renormalisation_share"])
    assert float(rows[0]["renormalisation_share"]) == pytest.approx(case["renormalisation_share"])
    assert any("axial slices do not span [0, 1]" in r.getMessage() and "tile" in r.getMessage()
               for r in caplog.records)


def test_a_compressed_range_fires_the_warning_and_clip_perturbs_less(tiny_dataset, checkpoint, tmp_path, caplog):
    # the CT window mapped into [0.3, 0.6]: no slice spans [0, 1], as with MRI normalised per volume
    squeeze = ["--b_min", "0.3", "--b_max", "0.6"]
    caplog.set_level(logging.INFO)
    slice_results, _ = _run(eval_flags(tiny_dataset, checkpoint, tmp_path, *VAFA, *squeeze),
                            tmp_path / "vafa_q_max_20.0_i_2_3d_dct_8x8x8_use_ssim_loss_False")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    name = next(iter(slice_results["per_case"]))
    assert slice_results["per_case"][name]["renormalisation_share"] > 0.5
    assert len([w for w in warnings if "--vafa_normalise clip" in w]) == 1 and name in warnings[-1]
    clip_results, _ = _run(eval_flags(tiny_dataset, checkpoint, tmp_path, *VAFA, *squeeze, "--vafa_normalise", "clip"),
                           tmp_path / "vafa_q_max_20.0_i_2_3d_dct_8x8x8_use_ssim_loss_False_clip")
    # the stretch is gone: the clipped attack changes the image far less
    assert clip_results["overall"]["psnr"] > slice_results["overall"]["psnr"] + 10
    # a clip run says what its share is (the release's form's, not applied) and does not advise clip
    clip_case = clip_results["per_case"][name]
    assert "renormalisation_share" not in clip_case and clip_case["renormalisation_share_if_slice"] > 0.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "--vafa_normalise clip" in w]) == 1


def test_the_flag_reaches_adversarial_training_and_its_validation_attack(tmp_path):
    argv = ["--data_dir", "unused", "--debugging", "--device", "cpu", "--feature_size", "8", "--hidden_size", "48",
            "--mlp_dim", "96", "--num_heads", "4", "--roi_x", "16", "--roi_y", "16", "--roi_z", "16",
            "--out_channels", "3", "--adv_training_mode", "--freq_reg_mode", "--val_attack", *VAFA,
            "--vafa_normalise", "clip"]
    args = train_script.parse_args(argv)
    model = build_model("unet-r", in_channels=1, out_channels=3, img_size=(16, 16, 16), feature_size=8,
                        hidden_size=48, mlp_dim=96, num_heads=4)
    trainer = training.build_trainer(jobs.training_job(args), model, torch.device("cpu"))
    assert type(trainer).__name__ == "VAFTTrainer" and trainer.attack.normalise == "clip"
    assert jobs.training_job(args).run_dir is None
    args = train_script.parse_args([a for a in argv if a != "--debugging"] + ["--save_model_dir", str(tmp_path)])
    assert jobs.training_job(args).run_dir.endswith("_use_ssim_loss_False_clip")


def test_the_renormalisation_lines_come_from_the_attack_class():
    from attacks import PGD, VAFA3D
    from engine.reports import format_summary

    overall = {"n_cases": 1, "dice_clean": 70.0, "dice_adv": 60.0, "renormalisation_share_if_slice": 0.9}
    text = format_summary(overall, "t", VAFA3D.summary_lines(overall))
    assert "had the release's per-slice min-max been used 0.900 (this run clipped" in text
    assert VAFA3D.summary_lines({"renormalisation_share": 0.25}) == [
        "VAFA renormalisation share 0.250 (share of the perturbation that the release's per-slice min-max makes)"]
    assert PGD.summary_lines(overall) == [] and "renormalisation" not in format_summary(overall, "t")
