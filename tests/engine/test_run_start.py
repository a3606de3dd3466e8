"""A run folder appears only once a run has started correctly, and a folder without a finished case never
blocks the corrected command."""

from __future__ import annotations

import json
import os

import pytest

import generate_adv_samples as gen
from utils.run_folder import holds_finished_cases, prepare_run_dir
from tests.scripts.helpers import eval_flags, make_tiny_checkpoint, run_main
from utils.errors import UserError

FGSM = ["--attack_name", "fgsm", "--eps", "8"]
FOLDER = "fgsm_eps_8.0"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


def test_a_wrong_model_flag_leaves_no_folder_and_the_corrected_command_runs(tiny_dataset, checkpoint, tmp_path,
                                                                             capsys, one_thread):
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path, *FGSM)
    wrong = argv[: argv.index("--feature_size")] + ["--feature_size", "16"] + argv[argv.index("--feature_size") + 2:]
    code, err = run_main(gen.main, wrong, capsys)
    assert code == 2 and "Traceback" not in err
    assert not (tmp_path / FOLDER).exists()
    code, err = run_main(gen.main, argv, capsys)  # the corrected command, no --overwrite
    assert code == 0, err
    assert (tmp_path / FOLDER / "results.json").exists()


def test_a_folder_left_by_a_failed_start_does_not_block(tiny_dataset, checkpoint, tmp_path, capsys, one_thread):
    run_dir = tmp_path / FOLDER
    (run_dir / "cases").mkdir(parents=True)
    (run_dir / ".lock").write_text("")
    (run_dir / "args.json").write_text(json.dumps({"seed": 99, "feature_size": 16}))  # what the failed start recorded
    code, err = run_main(gen.main, eval_flags(tiny_dataset, checkpoint, tmp_path, *FGSM), capsys)
    assert code == 0, err
    assert json.loads((run_dir / "args.json").read_text())["seed"] == 0


def test_a_folder_with_a_finished_case_is_still_protected(tmp_path):
    run_dir = str(tmp_path / "run")
    prepare_run_dir(run_dir, {"seed": 0}, frozenset(), overwrite=False)
    assert not holds_finished_cases(run_dir)
    prepare_run_dir(run_dir, {"seed": 1}, frozenset(), overwrite=False)  # nothing finished: replaced
    with open(os.path.join(run_dir, "cases", "img1.nii.gz.json"), "w") as f:
        f.write("{}")
    assert holds_finished_cases(run_dir)
    with pytest.raises(UserError, match="seed: 1 -> 2"):
        prepare_run_dir(run_dir, {"seed": 2}, frozenset(), overwrite=False)
