"""A new attack, model or dataset is one class or entry plus one registry line.

Each test registers a toy entry here (nothing else in the repository changes) and runs
``generate_adv_samples.py`` end to end: the flag, the run-folder name, results.json and
the printed summary come out of the registry alone.
"""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet

import generate_adv_samples as gen
from attacks import ATTACKS, Attack
from data.datasets import DATASETS, DatasetSpec
from networks import MODELS, ModelEntry
from tests.scripts.helpers import eval_flags, run_main
from utils.options import Option

pytestmark = pytest.mark.usefixtures("one_thread")


class ShiftAttack(Attack):
    """Toy attack: adds a constant to every voxel."""

    name = "toy-shift"
    options = (Option("shift", float, 1.0, "toy: added to every voxel, [0,255] scale", scale=1 / 255, minimum=0.0),)
    folder_format = "toy_shift_{shift}"
    summary_format = "TOY-SHIFT: shift={shift}/255"

    def __init__(self, model, loss_fn, *, shift: float):
        super().__init__(model, loss_fn)
        self.shift = shift

    def forward(self, images, labels):
        return torch.clamp(images + self.shift, 0, 1)


def build_toy_unet(in_channels, out_channels, img_size, unet_width=4):
    w = unet_width
    return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                     features=(w, w, 2 * w, 2 * w, 4 * w, w))



def test_a_toy_attack_runs_end_to_end(monkeypatch, tiny_dataset, checkpoint, tmp_path, capsys):
    monkeypatch.setitem(ATTACKS, ShiftAttack.name, ShiftAttack)
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path, "--attack_name", "toy-shift", "--shift", "2",
                  "--save_dtype", "float32")
    code = gen.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    run_dir = tmp_path / "toy_shift_2.0"
    name = os.path.basename(tiny_dataset.validation[0]["image"])
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["per_case"]) == [name] and results["args"]["shift"] == 2.0
    assert "== TOY-SHIFT: shift=2.0/255 (1 cases)" in out.out
    clean = nib.load(run_dir / f"imagesTsClean/clean_{name}").get_fdata()
    adv = nib.load(run_dir / f"imagesTsAdv/adv_{name}").get_fdata()
    np.testing.assert_allclose(adv, np.clip(clean + 2 / 255, 0, 1), atol=1e-6)
    # its option is checked like every other: a non-finite value is one line, exit 2
    code, err = run_main(gen.main, eval_flags(tiny_dataset, checkpoint, tmp_path / "bad", "--attack_name", "toy-shift",
                                          "--shift", "nan"), capsys)
    assert code == 2 and "--shift must be a finite number, got nan" in err and len(err.strip().splitlines()) == 1


def test_a_toy_model_runs_end_to_end(monkeypatch, tiny_dataset, tmp_path, capsys):
    monkeypatch.setitem(MODELS, "toy-unet", ModelEntry(build_toy_unet, (Option("unet_width", int, 4, "toy width"),)))
    torch.manual_seed(0)
    model = build_toy_unet(1, 14, None, unet_width=2)
    path = str(tmp_path / "toy.pt")
    torch.save({"epoch": 0, "state_dict": model.state_dict()}, path)
    # UNETR's flags (--feature_size ...) are accepted but not passed to a model that does not declare them
    argv = eval_flags(tiny_dataset, path, tmp_path / "out", "--model_name", "toy-unet", "--unet_width", "2",
                  "--attack_name", "fgsm", "--eps", "4")
    assert gen.main(argv) == 0
    results = json.loads((tmp_path / "out" / "fgsm_eps_4.0_toy-unet" / "results.json").read_text())
    assert results["args"]["model_name"] == "toy-unet" and results["overall"]["n_cases"] == 1
    capsys.readouterr()
    # another width does not fit the checkpoint: one line naming the mismatch, exit 2
    code, err = run_main(gen.main, eval_flags(tiny_dataset, path, tmp_path / "other", "--model_name", "toy-unet",
                                          "--unet_width", "3", "--attack_name", "fgsm", "--debugging"), capsys)
    assert code == 2 and "does not fit the model" in err and "Traceback" not in err


def test_a_toy_dataset_entry_gives_defaults_and_names(monkeypatch, tiny_dataset, checkpoint, tmp_path):
    names = tuple(f"organ {i}" for i in range(14))
    monkeypatch.setitem(DATASETS, "toy", DatasetSpec("toy", "toy CT", names, window=(-175.0, 250.0)))
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_dataset.data_dir, data_dir)
    listing = json.loads((data_dir / tiny_dataset.json_name).read_text())
    listing.pop("labels", None)
    (data_dir / tiny_dataset.json_name).write_text(json.dumps(listing))
    flags = eval_flags(tiny_dataset, checkpoint, tmp_path / "out", "--attack_name", "gn", "--std", "4")
    flags[flags.index("--data_dir") + 1] = str(data_dir)
    assert gen.main(flags + ["--dataset", "toy"]) == 0
    results = json.loads((tmp_path / "out" / "gn_std_4.0" / "results.json").read_text())
    # the entry's class count and window became the defaults, its names label the report
    assert (results["args"]["out_channels"], results["args"]["a_min"], results["args"]["a_max"]) == (14, -175.0, 250.0)
    assert list(results["overall"]["per_organ"]) == list(names)

    # a Decathlon "labels" field names the classes of any dataset
    listing["labels"] = {str(i): f"structure {i}" for i in range(14)}
    (data_dir / tiny_dataset.json_name).write_text(json.dumps(listing))
    assert gen.main(flags + ["--dataset", "toy", "--overwrite"]) == 0
    results = json.loads((tmp_path / "out" / "gn_std_4.0" / "results.json").read_text())
    assert list(results["overall"]["per_organ"]) == [f"structure {i}" for i in range(14)]
