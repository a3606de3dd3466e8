"""The nnU-Net model from the command line: every registered attack end to end, with mirroring too."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("nnunetv2")

import generate_adv_samples as gen  # noqa: E402
from attacks import ATTACKS  # noqa: E402
from tests.networks.nnunet_folder import write_nnunet_folder  # noqa: E402
from tests.scripts.helpers import ATTACK_FLAGS, data_flags, run_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 14  # the tiny Synapse-layout dataset's


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_nnunet_folder(str(tmp_path_factory.mktemp("nnunet")), labels=[f"c{i}" for i in range(CLASSES)])


def nnunet_flags(folder: str, dataset, out, *extra: str) -> list[str]:
    return (["--model_name", "nnunet", "--nnunet_model_dir", folder] + data_flags(dataset.data_dir, dataset.json_name)
            + ["--max_cases", "1", "--save_adv_images_dir", str(out), *extra])


FAST = {("pgd", "mirror"), ("vafa-3d", "none")}
CASES = [pytest.param(*case, marks=() if case in FAST else pytest.mark.slow)
         for case in [(name, "mirror") for name in ATTACKS] + [("pgd", "none"), ("vafa-3d", "none"),
                                                               ("vafa-3d-clip", "mirror")]]
"""Every registered attack with mirroring (about 10-30 s each on one CPU thread: ``slow`` but two)."""


@pytest.mark.parametrize("attack, tta", CASES)
def test_every_attack_runs_on_the_nnunet_model(folder, tiny_dataset, tmp_path, attack, tta, capsys):
    flags = (["--attack_name", "vafa-3d", *ATTACK_FLAGS["vafa-3d"], "--vafa_normalise", "clip"]
             if attack == "vafa-3d-clip" else ["--attack_name", attack, *ATTACK_FLAGS[attack]])
    argv = nnunet_flags(folder, tiny_dataset, tmp_path / "out", "--tta", tta, "--no_sub_dir_adv_images", *flags)
    code, err = run_main(gen.main, argv, capsys)
    assert code == 0, err
    with open(tmp_path / "out" / "args.json") as f:
        args = json.load(f)
    # the folder's values filled the flags left unset
    assert (args["roi_x"], args["roi_y"], args["roi_z"]) == (16, 16, 16)
    assert (args["in_channels"], args["out_channels"], args["sw_blend"]) == (1, CLASSES, "nnunet")
    assert (args["a_min"], args["a_max"]) == (-160.0, 260.0)
    with open(tmp_path / "out" / "results.json") as f:
        overall = json.load(f)["overall"]
    assert overall["n_cases"] == 1


def test_a_flag_against_the_folder_is_one_line(folder, tiny_dataset, tmp_path, capsys):
    argv = nnunet_flags(folder, tiny_dataset, tmp_path, "--roi_x", "32", "--attack_name", "fgsm", "--debugging")
    code, err = run_main(gen.main, argv, capsys)
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1
    assert "patch size is (16, 16, 16), got ROI (32, 16, 16)" in err


def test_a_missing_folder_is_one_line(tiny_dataset, tmp_path, capsys):
    argv = nnunet_flags(str(tmp_path / "nowhere"), tiny_dataset, tmp_path, "--attack_name", "fgsm", "--debugging")
    code, err = run_main(gen.main, argv, capsys)
    assert code == 2 and "Traceback" not in err and "plans.json not found" in err
    assert not os.path.exists(tmp_path / "nowhere")
