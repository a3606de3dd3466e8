"""Runs carry their settings: a checkpoint builds its own model, inference runs from a generation run folder
alone, and inference results of two checkpoints with one file name never share a folder."""

from __future__ import annotations

import json
import os

import pytest
import torch

import generate_adv_samples as gen
import inference_on_saved_adv_samples as inf
from engine import cli, jobs
from engine.evaluation import load_trained_model
from networks import read_checkpoint
from tests.scripts.helpers import TINY_MODEL, TINY_ROI, data_flags, eval_flags, make_tiny_checkpoint, run_main

FGSM = ["--attack_name", "fgsm", "--eps", "8"]


def _trained_checkpoint(path: str, **model) -> str:
    """A tiny checkpoint recording its model flags under ``args``, as the training script writes them."""
    make_tiny_checkpoint(path, **model)
    ckpt = read_checkpoint(path)
    flags = dict(TINY_MODEL, **model)
    ckpt["args"] = {"model_name": "unet-r", "in_channels": 1, "out_channels": 14, "roi_x": TINY_ROI[0],
                    "roi_y": TINY_ROI[1], "roi_z": TINY_ROI[2], "max_epochs": 3, **flags}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _trained_checkpoint(str(tmp_path_factory.mktemp("run") / "model_best.pt"), feature_size=16)


def test_a_model_is_built_from_its_checkpoint_alone(trained, tiny_dataset):
    args = gen.parse_args(data_flags(tiny_dataset.data_dir, tiny_dataset.json_name)
                          + ["--pretrained_path", trained, "--debugging"])
    settings = cli.model_settings(args)
    assert settings.roi == TINY_ROI and settings.options["feature_size"] == 16
    assert settings.options["hidden_size"] == TINY_MODEL["hidden_size"]
    model = load_trained_model(settings, trained, torch.device("cpu"))  # every weight fits
    reference = read_checkpoint(trained)["model_state_dict"]
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items() if k in reference)


def test_a_typed_flag_wins_and_a_mismatch_names_both_values(trained, tiny_dataset):
    args = gen.parse_args(data_flags(tiny_dataset.data_dir, tiny_dataset.json_name)
                          + ["--pretrained_path", trained, "--debugging", "--feature_size", "8"])
    settings = cli.model_settings(args)
    assert settings.options["feature_size"] == 8 and settings.roi == TINY_ROI
    with pytest.raises(Exception, match=r"--feature_size 16 \(this run: 8\)") as info:
        load_trained_model(settings, trained, torch.device("cpu"))
    assert "shape mismatches" not in str(info.value)


def test_inference_from_the_run_folder_alone(tiny_dataset, tmp_path, capsys, one_thread):
    trained = _trained_checkpoint(str(tmp_path / "run0" / "model_best.pt"))
    argv = eval_flags(tiny_dataset, trained, tmp_path, *FGSM)
    assert gen.main(argv) == 0
    run_dir = tmp_path / "fgsm_eps_8.0"
    code, err = run_main(inf.main, ["--adv_run_dir", str(run_dir), "--workers", "0"], capsys)
    assert code == 0, err
    results = run_dir / "inference" / "run0_model_best" / "results.json"
    inferred = json.loads(results.read_text())
    generated = json.loads((run_dir / "results.json").read_text())
    assert inferred["per_case"].keys() == generated["per_case"].keys()
    for name, case in generated["per_case"].items():
        assert inferred["per_case"][name]["dice_clean"] == pytest.approx(case["dice_clean"], abs=1e-6)
    # both means, and what each is
    overall = generated["overall"]
    for key in ("dice_clean", "dice_clean_fg", "dice_adv", "dice_adv_fg", "hd95_adv", "hd95_adv_worst"):
        assert key in overall, key
    assert "background" in generated["definitions"]["dice_clean, dice_adv"]


def test_two_checkpoints_with_one_file_name_do_not_collide(tmp_path):
    adv = str(tmp_path / "adv")
    first = jobs.inference_results_dir(None, adv, str(tmp_path / "model" / "model_latest.pt"))
    other = jobs.inference_results_dir(None, adv, str(tmp_path / "other" / "model_latest.pt"))
    assert first != other
    # same folder name too: once the first has written its record, the second gets a folder of its own
    a, b = str(tmp_path / "a" / "run" / "model.pt"), str(tmp_path / "b" / "run" / "model.pt")
    taken = jobs.inference_results_dir(None, adv, a)
    os.makedirs(taken)
    with open(os.path.join(taken, "args.json"), "w") as f:
        json.dump({"pretrained_path": a}, f)
    assert jobs.inference_results_dir(None, adv, a) == taken  # found again
    assert jobs.inference_results_dir(None, adv, b) not in (taken, None)
    assert jobs.inference_results_dir(str(tmp_path / "mine"), adv, b) == str(tmp_path / "mine")


def test_a_refused_inference_folder_names_results_dir(tmp_path):
    from utils.run_folder import prepare_run_dir
    from utils.errors import UserError

    run_dir = str(tmp_path / "r")
    prepare_run_dir(run_dir, {"seed": 0}, frozenset(), overwrite=False)
    open(os.path.join(run_dir, "results.json"), "w").close()
    with pytest.raises(UserError, match="--results_dir"):
        prepare_run_dir(run_dir, {"seed": 1}, frozenset(), overwrite=False, folder_flag="--results_dir")


def test_inference_help_lists_no_generation_flags(capsys):
    with pytest.raises(SystemExit):
        inf.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--adv_run_dir" in text
    for flag in ("--save_adv_images_dir", "--save_dtype", "--fused_dice_ce"):
        assert flag not in text


def test_training_from_a_checkpoint_takes_its_model_flags(trained, tiny_dataset):
    import run_normal_or_adv_training as train

    args = train.parse_args(data_flags(tiny_dataset.data_dir, tiny_dataset.json_name)
                            + ["--pretrained_path", trained, "--debugging", "--max_epochs", "60"])
    job = jobs.training_job(args)
    assert job.pretrained == trained and job.model.options["feature_size"] == 16 and job.model.roi == TINY_ROI
