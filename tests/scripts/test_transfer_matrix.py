"""scripts/transfer_matrix.py on two tiny models: a 2x2 matrix whose diagonal is the white-box runs."""

from __future__ import annotations

import csv
import json
import shlex

import pytest
import torch

import generate_adv_samples as gen
from scripts import transfer_matrix
from tests.networks.tiny_models import tiny_flags
from tests.scripts.helpers import data_flags, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("unet-r", "unet")


def model_flags(name: str) -> list[str]:
    return tiny_flags(name)


def save_tiny(name: str, path: str, seed: int) -> str:
    from engine import cli
    from run_normal_or_adv_training import parse_args

    settings = cli.model_settings(parse_args(["--data_dir", "unused", "--debugging", *model_flags(name)]))
    torch.manual_seed(seed)
    model = settings.build()
    torch.save({"epoch": 0, "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def white_box(tiny_dataset, tmp_path_factory):
    """Each tiny model attacked white-box with FGSM (float32 volumes, one case): checkpoints, folders, results."""
    root = tmp_path_factory.mktemp("transfer")
    runs = {}
    for seed, name in enumerate(MODELS):
        checkpoint = save_tiny(name, str(root / f"{name}.pt"), seed)
        out = root / "adv" / name
        argv = (model_flags(name) + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name)
                + ["--pretrained_path", checkpoint, "--max_cases", "1", "--infer_overlap", "0",
                   "--save_adv_images_dir", str(out), "--attack_name", "fgsm", "--eps", "8",
                   "--save_dtype", "float32"])
        assert gen.main(argv) == 0
        folder = out / ("fgsm_eps_8.0" + ("" if name == "unet-r" else f"_{name}"))  # a model other than the release's is named
        runs[name] = dict(checkpoint=checkpoint, folder=str(folder),
                          results=json.loads((folder / "results.json").read_text())["overall"])
    return root, runs


def transfer_argv(tiny_dataset, runs, out) -> list[str]:
    argv = ["--out_dir", str(out)]
    for name in MODELS:
        argv += ["--model", name, runs[name]["checkpoint"], shlex.join(model_flags(name)[2:] + ["--model_name", name])]
        argv += ["--adv", name, runs[name]["folder"]]
    return argv + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name) + ["--max_cases", "1",
                                                                              "--infer_overlap", "0"]


def test_two_models_give_a_2x2_matrix_whose_diagonal_is_white_box(white_box, tiny_dataset, capsys):
    root, runs = white_box
    out = root / "matrix"
    assert transfer_matrix.main(transfer_argv(tiny_dataset, runs, out)) == 0
    printed = capsys.readouterr().out
    assert "dice_adv (rows: surrogate, columns: target)" in printed

    report = json.loads((out / "transfer.json").read_text())
    assert report["surrogates"] == list(MODELS) and report["targets"] == list(MODELS)
    for s in MODELS:
        for t in MODELS:
            assert report["dice_adv"][s][t] is not None
            assert report["drop"][s][t] == pytest.approx(report["dice_clean"][s][t] - report["dice_adv"][s][t])
        # the diagonal: each model on its own white-box volumes, as the generation run measured
        assert report["dice_adv"][s][s] == pytest.approx(runs[s]["results"]["dice_adv"], abs=1e-3)
        assert report["dice_clean"][s][s] == pytest.approx(runs[s]["results"]["dice_clean"], abs=1e-6)
    # a target's clean Dice does not depend on the surrogate
    for t in MODELS:
        assert report["dice_clean"][MODELS[0]][t] == pytest.approx(report["dice_clean"][MODELS[1]][t], abs=1e-6)
    with open(out / "transfer.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["surrogate"], r["target"]) for r in rows) == sorted((s, t) for s in MODELS for t in MODELS)
    assert (out / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resumable per cell: a rerun skips finished cells; a removed cell is evaluated again
    cell = out / "cells" / f"{MODELS[0]}__on__{MODELS[1]}" / "results.json"
    kept = out / "cells" / f"{MODELS[1]}__on__{MODELS[0]}" / "results.json"
    kept_mtime = kept.stat().st_mtime_ns
    cell.unlink()
    assert transfer_matrix.main(transfer_argv(tiny_dataset, runs, out)) == 0
    capsys.readouterr()
    assert cell.exists() and kept.stat().st_mtime_ns == kept_mtime
    again = json.loads((out / "transfer.json").read_text())
    assert again["dice_adv"] == report["dice_adv"]


def test_bad_input_is_one_line(white_box, tiny_dataset, tmp_path, capsys):
    root, runs = white_box
    argv = transfer_argv(tiny_dataset, runs, tmp_path / "m")
    argv[argv.index("--adv") + 1] = "nobody"
    code, err = run_main(transfer_matrix.main, argv, capsys)
    assert code == 2 and "--adv names 'nobody'" in err and len(err.strip().splitlines()) == 1

    argv = transfer_argv(tiny_dataset, runs, tmp_path / "m")
    argv[argv.index("--adv") + 2] = str(tmp_path / "missing")
    code, err = run_main(transfer_matrix.main, argv, capsys)
    assert code == 2 and "adversarial folder of surrogate" in err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        transfer_matrix.main(["--help"])
    assert exit_.value.code == 0 and "--model LABEL CHECKPOINT FLAGS" in capsys.readouterr().out
