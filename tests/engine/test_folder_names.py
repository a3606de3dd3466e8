"""Run-folder names: one spelling per value, older spellings still found, every numbers-changing setting named."""

from __future__ import annotations

import os

import pytest

import generate_adv_samples as gen
import inference_on_saved_adv_samples as inf
from attacks import ATTACKS, AttackSettings
from engine import jobs
from tests.scripts.helpers import data_flags, tiny_model_flags


@pytest.fixture
def flags(tiny_dataset, tmp_path):
    # the checkpoint is only read when a run starts: parsing and naming need its path only
    return tiny_model_flags() + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name) + [
        "--pretrained_path", str(tmp_path / "model.pt")]


def _gen_dir(flags, out, *extra):
    return jobs.generation_job(gen.parse_args(flags + ["--save_adv_images_dir", str(out), *extra])).run_dir


@pytest.mark.parametrize("attack, flag, typed", [("pgd", "--eps", "4"), ("pgd", "--eps", "4.0"),
                                                 ("gn", "--std", "4"), ("vafa-3d", "--q_max", "20"),
                                                 ("vafa-3d", "--q_max", "20.00")])
def test_typed_default_and_untyped_default_share_one_folder(attack, flag, typed, flags, tmp_path):
    block = ["--block_size", "8", "8", "8"] if attack == "vafa-3d" else []
    default = _gen_dir(flags, tmp_path, "--attack_name", attack, *block)
    spelled = _gen_dir(flags, tmp_path, "--attack_name", attack, *block, flag, typed)
    assert default == spelled
    # the release's own commands typed the value as a float: their folder names are unchanged
    assert f"{flag[2:]}_{float(typed)}" in os.path.basename(default)


def test_an_old_spelling_folder_is_found_by_generation_and_inference(flags, tmp_path):
    old = tmp_path / "pgd_alpha_0.01_eps_4_i_20"  # how the release named a default-eps run
    old.mkdir()
    assert _gen_dir(flags, tmp_path, "--attack_name", "pgd") == str(old)
    assert _gen_dir(flags, tmp_path, "--attack_name", "pgd", "--eps", "4") == str(old)
    job = jobs.inference_job(inf.parse_args(flags + ["--adv_images_dir", str(tmp_path), "--attack_name", "pgd"]))
    assert job.adv_folder == str(old)
    # with no folder on disk the canonical spelling is the one created
    (old).rmdir()
    assert os.path.basename(_gen_dir(flags, tmp_path, "--attack_name", "pgd")) == "pgd_alpha_0.01_eps_4.0_i_20"


@pytest.mark.parametrize("extra, part", [
    (["--targeted", "--target_class", "3"], "_targeted_3"),
    (["--precision", "bf16"], "_bf16"),
    (["--model_name", "unet", "--feature_size", "8"], "_unet"),
])
def test_numbers_changing_settings_are_in_the_name(extra, part, flags, tmp_path):
    plain = _gen_dir(flags, tmp_path, "--attack_name", "pgd")
    named = _gen_dir([f for f in flags], tmp_path, "--attack_name", "pgd", *extra)
    assert named == plain + part


def test_vafa_names_q_min_and_q_init_only_off_the_release_values():
    values = dict(q_max=20, q_min=5, steps=20, block_size=(8, 8, 8), use_ssim_loss=False, q_init="max",
                  vafa_normalise="slice", targeted=False)
    release = AttackSettings("vafa-3d", values).folder_name()
    assert release == "vafa_q_max_20.0_i_20_3d_dct_8x8x8_use_ssim_loss_False"
    paper = AttackSettings("vafa-3d", dict(values, q_min=1, q_init="one", vafa_normalise="clip")).folder_name()
    assert paper == release + "_q_min_1.0_q_init_one_clip"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_names_an_int_and_a_float_value_alike(name):
    cls = ATTACKS[name]
    values = {option.name: option.default for option in cls.options}
    as_float = {k: float(v) if type(v) is int and next(o for o in cls.options if o.name == k).type is float else v
                for k, v in values.items()}
    assert cls.folder_name(values) == cls.folder_name(as_float)
    assert cls.folder_names(values)[0] == cls.folder_name(values)


def test_inference_of_another_model_finds_the_release_models_volumes(flags, tmp_path):
    (tmp_path / "pgd_alpha_0.01_eps_4.0_i_20").mkdir()  # generated with unet-r
    argv = flags + ["--adv_images_dir", str(tmp_path), "--attack_name", "pgd", "--model_name", "unet",
                    "--feature_size", "8"]
    assert jobs.inference_job(inf.parse_args(argv)).adv_folder == str(tmp_path / "pgd_alpha_0.01_eps_4.0_i_20")
    (tmp_path / "pgd_alpha_0.01_eps_4.0_i_20_unet").mkdir()  # the evaluated model's own volumes win
    assert jobs.inference_job(inf.parse_args(argv)).adv_folder.endswith("_unet")
