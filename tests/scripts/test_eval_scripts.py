"""End to end: generate_adv_samples.py and inference_on_saved_adv_samples.py on a tiny dataset."""

from __future__ import annotations

import argparse
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

import generate_adv_samples as gen
import inference_on_saved_adv_samples as inf
from attacks import ATTACKS
from tests.scripts.helpers import ATTACK_FLAGS, data_flags, make_tiny_checkpoint, run_main, tiny_model_flags
from engine.jobs import adv_subdir_name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@pytest.fixture(scope="module")
def base_flags(tiny_dataset, checkpoint):
    return tiny_model_flags() + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name) + [
        "--use_pretrained", "--pretrained_path", checkpoint, "--max_cases", "1", "--infer_overlap", "0"]


def test_registry_and_cli_cover_the_same_attacks():
    assert set(ATTACK_FLAGS) == set(ATTACKS)


@pytest.mark.parametrize("attack", sorted(ATTACK_FLAGS))
def test_generation_writes_the_release_layout(attack, base_flags, tmp_path, tiny_dataset, capsys):
    argv = base_flags + ["--gen_val_adv_mode", "--save_adv_images_dir", str(tmp_path), "--attack_name", attack] + ATTACK_FLAGS[attack]
    code, err = run_main(gen.main, argv, capsys)
    assert code == 0, err
    args = gen.parse_args(argv)
    run_dir = tmp_path / adv_subdir_name(args)
    item = tiny_dataset.validation[0]
    name, lbl = os.path.basename(item["image"]), os.path.basename(item["label"])
    for rel in (f"imagesTsClean/clean_{name}", f"labelsTsClean/{lbl}", f"imagesTsAdv/adv_{name}",
                "args.json", "log.out", "results.json", "per_case.csv"):
        assert (run_dir / rel).exists(), rel
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"overall", "per_case", "args"}
    case = results["per_case"][name]
    assert "spleen" in case["per_organ"] and "timing" not in case
    if attack == "worst-case":  # which member won each case, through the report hooks
        assert case["worst_case_winner"] in ("apgd-masked-ce", "segpgd")
        assert case["won[apgd-masked-ce]"] + case["won[segpgd]"] >= 1
    clean = nib.load(run_dir / f"imagesTsClean/clean_{name}")
    adv = nib.load(run_dir / f"imagesTsAdv/adv_{name}")
    assert clean.get_data_dtype() == np.uint8 and adv.shape == clean.shape
    assert np.allclose(adv.affine, clean.affine)


def test_folder_names_follow_the_release():
    ns = argparse.Namespace(attack_name="vafa-3d", q_max=20.0, steps=20, block_size=(32, 32, 32), use_ssim_loss=True,
                            alpha=0.01, eps=4.0, std=4.0, target_class=0, attack_batch_size=6)
    assert adv_subdir_name(ns) == "vafa_q_max_20.0_i_20_3d_dct_32x32x32_use_ssim_loss_True"
    ns.attack_name, ns.block_size = "vafa-2d", (32, 32)
    assert adv_subdir_name(ns) == "vafa_q_max_20.0_i_20_2d_dct_32x32"
    ns.attack_name = "pgd"
    assert adv_subdir_name(ns) == "pgd_alpha_0.01_eps_4.0_i_20"
    ns.attack_name = "gn"
    assert adv_subdir_name(ns) == "gn_std_4.0"


@pytest.fixture(scope="module")
def pgd_run(base_flags, tmp_path_factory, tiny_dataset):
    """One float32 PGD run on two cases, shared by the checks below."""
    out = tmp_path_factory.mktemp("pgd")
    flags = [f for f in base_flags]
    flags[flags.index("--max_cases") + 1] = "2"
    argv = flags + ["--save_adv_images_dir", str(out), "--attack_name", "pgd", "--steps", "2", "--eps", "8",
                    "--save_dtype", "float32", "--seed", "3"]
    assert gen.main(argv) == 0
    args = gen.parse_args(argv)
    return argv, args, out / adv_subdir_name(args)


def _transformed_case(args, item):
    from monai.data import Dataset

    from data.loading import build_transforms
    from engine.cli import data_settings

    return Dataset([item], transform=build_transforms(data_settings(args), "eval"))[0]


def _dice_percent(pred, label, num_classes):
    scores = []
    for c in range(num_classes):
        p, t = pred == c, label == c
        if t.sum() == 0:
            continue  # MONAI: NaN for a class absent from the ground truth, left out of the mean
        scores.append(2 * (p & t).sum() / (p.sum() + t.sum()))
    return 100 * float(np.mean(scores))


def test_results_agree_with_direct_recomputation(pgd_run, tiny_dataset, checkpoint):
    from monai.inferers import sliding_window_inference

    from engine.cli import model_settings
    from networks.checkpoint import load_model_weights

    argv, args, run_dir = pgd_run
    results = json.loads((run_dir / "results.json").read_text())
    model = model_settings(args).build()
    load_model_weights(model, checkpoint)
    model.eval()
    for item in tiny_dataset.validation[:2]:
        name = os.path.basename(item["image"])
        data = _transformed_case(args, item)
        label = data["label"][0].numpy()
        adv = nib.load(run_dir / "imagesTsAdv" / f"adv_{name}")
        # kept geometry: the saved affine is the case's own, not the release's identity
        assert np.allclose(adv.affine, np.asarray(data["image"].affine), atol=1e-5)
        assert not np.allclose(adv.affine, np.eye(4))
        with torch.no_grad():
            preds = []
            for volume in (data["image"][None], torch.from_numpy(np.asarray(adv.dataobj, dtype=np.float32))[None, None]):
                logits = sliding_window_inference(volume, (32, 32, 16), 1, model, overlap=args.infer_overlap)
                preds.append(logits.argmax(1)[0].numpy())
        case = results["per_case"][name]
        assert case["dice_clean"] == pytest.approx(_dice_percent(preds[0], label, 14), abs=1e-3)
        assert case["dice_adv"] == pytest.approx(_dice_percent(preds[1], label, 14), abs=1e-3)
        assert case["success_rate"] == pytest.approx(100 * float((preds[0] != preds[1]).mean()), abs=1e-3)
        # L-inf budget of 8/255 holds on the whole stitched volume
        assert np.abs(np.asarray(adv.dataobj) - data["image"][0].numpy()).max() <= 8 / 255 + 1e-5


def test_background_finishing_equals_finishing_each_case_first(pgd_run, tmp_path, monkeypatch):
    import engine.evaluation as evaluation

    # --finish_cases background finishes case i (metrics, files, record) in a thread while
    # case i+1 is attacked; inline (the default on a CPU) finishes it first: same numbers and files
    argv, args, run_dir = pgd_run
    modes = []
    finisher = evaluation.CaseFinisher
    monkeypatch.setattr(evaluation, "CaseFinisher", lambda background, device: modes.append(background) or
                        finisher(background, device))
    other_argv = list(argv)
    other_argv[other_argv.index("--save_adv_images_dir") + 1] = str(tmp_path)
    assert gen.main(other_argv + ["--finish_cases", "background"]) == 0
    assert modes == [True]
    other = tmp_path / run_dir.name
    inline = json.loads((run_dir / "results.json").read_text())
    background = json.loads((other / "results.json").read_text())
    assert background["per_case"] == inline["per_case"] and background["overall"] == inline["overall"]
    assert list(background["per_case"]) == list(inline["per_case"])
    for name in background["per_case"]:
        for folder, prefix in (("imagesTsAdv", "adv_"), ("imagesTsClean", "clean_")):
            assert np.array_equal(np.asarray(nib.load(run_dir / folder / f"{prefix}{name}").dataobj),
                                  np.asarray(nib.load(other / folder / f"{prefix}{name}").dataobj))


def test_second_run_skips_finished_cases(pgd_run, capsys):
    argv, args, run_dir = pgd_run
    before = json.loads((run_dir / "results.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in (run_dir / "imagesTsAdv").iterdir()}
    code, err = run_main(gen.main, argv, capsys)
    assert code == 0, err
    assert "2 finished case(s) skipped" in err
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (run_dir / "imagesTsAdv").iterdir()}
    after = json.loads((run_dir / "results.json").read_text())
    assert after["per_case"] == before["per_case"]


def test_other_settings_in_the_same_folder_are_refused(pgd_run, capsys):
    argv, args, run_dir = pgd_run
    changed = argv[: argv.index("--seed")] + ["--seed", "4"]
    code, err = run_main(gen.main, changed, capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err
    assert (run_dir / "results.json").exists()


def test_fused_dice_ce_is_named_and_part_of_the_run(pgd_run, tmp_path, monkeypatch, capsys):
    import engine.evaluation as evaluation
    from training.losses import FusedDiceCE

    argv, args, run_dir = pgd_run
    code, err = run_main(gen.main, argv + ["--fused_dice_ce"], capsys)  # same folder, other loss
    assert code == 2 and "fused_dice_ce" in err and "Traceback" not in err
    losses = []
    build = evaluation.build_dice_ce
    monkeypatch.setattr(evaluation, "build_dice_ce", lambda **kw: losses.append(build(**kw)) or losses[-1])
    other = list(argv)
    other[other.index("--save_adv_images_dir") + 1] = str(tmp_path)
    other[other.index("--max_cases") + 1] = "1"
    assert gen.main(other + ["--fused_dice_ce"]) == 0
    out = capsys.readouterr().out
    assert [type(loss) for loss in losses] == [FusedDiceCE] and "[fused Dice-CE]" in out


def test_inference_on_saved_samples_matches_generation(pgd_run, capsys):
    argv, args, run_dir = pgd_run
    flags = argv[: argv.index("--save_adv_images_dir")] + [
        "--adv_images_dir", str(run_dir.parent), "--attack_name", "pgd", "--steps", "2", "--eps", "8"]
    code, err = run_main(inf.main, flags, capsys)
    assert code == 0, err
    generated = json.loads((run_dir / "results.json").read_text())["per_case"]
    ckpt = argv[argv.index("--pretrained_path") + 1]  # <parent>/model.pt
    folder = f"{os.path.basename(os.path.dirname(ckpt))}_model"
    inferred = json.loads((run_dir / "inference" / folder / "results.json").read_text())["per_case"]
    assert generated.keys() == inferred.keys()
    for name in generated:
        assert inferred[name]["dice_clean"] == pytest.approx(generated[name]["dice_clean"], abs=1e-6)
        assert inferred[name]["dice_adv"] == pytest.approx(generated[name]["dice_adv"], abs=1e-3)


def test_inference_names_a_missing_attack_folder(base_flags, tmp_path, capsys):
    code, err = run_main(inf.main, base_flags + ["--adv_images_dir", str(tmp_path), "--attack_name", "fgsm"], capsys)
    assert code == 2 and "fgsm_eps_4" in err and "Traceback" not in err


def test_debugging_saves_nothing(base_flags, tmp_path, capsys):
    code, err = run_main(gen.main, base_flags + ["--debugging", "--save_adv_images_dir", str(tmp_path / "out"),
                                                 "--attack_name", "gn"], capsys)
    assert code == 0, err
    assert not (tmp_path / "out").exists()
    # the release's README passes both: the user is told, not left to find an empty folder later
    assert "WARNING: --debugging saves nothing" in err and str(tmp_path / "out") in err


# --------------------------------------------------------------------------- bad input


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _bad_case(tmp_path, image_shape, label_shape, label_value=1):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.full(image_shape, 40, np.int16), affine), tmp_path / "imagesTr/img0001.nii.gz")
    nib.save(nib.Nifti1Image(np.full(label_shape, label_value, np.uint8), affine), tmp_path / "labelsTr/label0001.nii.gz")
    entry = {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    _write(tmp_path / "data.json", {"training": [entry], "validation": [entry]})


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_data_dir", "does not exist"),
        ("no_json", "nope.json"),
        ("no_split", "validation"),
        ("shape_mismatch", "shape"),
        ("label_too_large", "out_channels"),
        ("block_not_dividing", "not divisible"),
        ("split_conflict", "exclude each other"),
        ("missing_checkpoint", "checkpoint"),
    ],
)
def test_bad_input_ends_with_one_line(case, expected, tmp_path, checkpoint, capsys):
    data_dir, json_name, extra = tmp_path, "data.json", []
    ckpt = checkpoint
    if case == "no_data_dir":
        data_dir = tmp_path / "missing"
    elif case == "no_json":
        json_name = "nope.json"
    elif case == "no_split":
        _write(tmp_path / "data.json", {"training": []})
    elif case == "shape_mismatch":
        _bad_case(tmp_path, (40, 40, 20), (40, 40, 18))
    elif case == "label_too_large":
        _bad_case(tmp_path, (40, 40, 20), (40, 40, 20), label_value=20)
    elif case == "block_not_dividing":
        extra = ["--block_size", "12", "12", "12"]
    elif case == "split_conflict":
        extra = ["--gen_val_adv_mode", "--gen_train_adv_mode"]
    elif case == "missing_checkpoint":
        _bad_case(tmp_path, (40, 40, 20), (40, 40, 20))
        ckpt = str(tmp_path / "absent.pt")
    argv = tiny_model_flags() + data_flags(str(data_dir), json_name) + [
        "--pretrained_path", ckpt, "--debugging", "--attack_name", "vafa-3d"] + extra
    code, err = run_main(gen.main, argv, capsys)
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and expected in lines[0], err


# --------------------------------------------------------------------------- the release's commands

SEED_GENERATE = """--model_name unet-r --feature_size=16 --infer_overlap=0.5 --dataset btcv --data_dir=DATA
 --json_list=dataset_synapse_18_12.json --use_pretrained --pretrained_path=MODEL --gen_val_adv_mode
 --save_adv_images_dir=OUT --attack_name vafa-3d --q_max 20 --steps 20 --block_size 32 32 32 --use_ssim_loss --debugging"""
SEED_ATTACKS = [
    "--attack_name vafa-2d --q_max 20 --steps 20 --block_size 32 32 --use_ssim_loss",
    "--attack_name pgd --steps 20 --eps 4 --alpha 0.01",
    "--attack_name fgsm --steps 20 --eps 4 --alpha 0.01",
    "--attack_name bim --steps 20 --eps 4 --alpha 0.01",
    "--attack_name gn --steps 20 --eps 4 --alpha 0.01 --std 4",
]
SEED_INFERENCE = """--model_name unet-r --in_channels 1 --out_channel 14 --feature_size=16 --infer_overlap=0.5
 --dataset btcv --data_dir=DATA --json_list=dataset_synapse_18_12.json --use_pretrained --pretrained_path=MODEL
 --adv_images_dir=ADV --attack_name vafa-3d --q_max 20 --steps 20 --block_size 32 32 32 --use_ssim_loss"""


def test_release_commands_parse_unchanged():
    args = gen.parse_args(SEED_GENERATE.split())
    assert (args.attack_name, args.q_max, args.block_size, args.use_ssim_loss, args.debugging) == ("vafa-3d", 20.0, (32, 32, 32), True, True)
    assert adv_subdir_name(args) == "vafa_q_max_20.0_i_20_3d_dct_32x32x32_use_ssim_loss_True"
    base = SEED_GENERATE.split()
    base = base[: base.index("--attack_name")]
    for attack in SEED_ATTACKS:
        parsed = gen.parse_args(base + attack.split() + ["--debugging"])
        assert parsed.attack_name == attack.split()[1]
    args = inf.parse_args(SEED_INFERENCE.split())
    assert args.out_channels == 14 and args.adv_images_dir == "ADV"


def test_a_rerun_clears_what_a_killed_write_left(pgd_run):
    from utils.io import TEMP_PREFIX

    argv, _, run_dir = pgd_run
    (run_dir / "cases" / f"{TEMP_PREFIX}x.json").write_text("{")
    (run_dir / "imagesTsAdv" / f"{TEMP_PREFIX}y.nii.gz").write_bytes(b"")
    assert gen.main(argv) == 0
    assert not [p for p in run_dir.rglob(f"{TEMP_PREFIX}*")]
