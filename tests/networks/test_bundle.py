"""``--model_name bundle``: a bundle written in MONAI's layout; MONAI's own bundle components are the oracle.

The bundle's ``preprocessing``, ``network`` and ``inferer``, instantiated by ``monai.bundle.ConfigParser``
from its ``configs/inference.json``, predict a case; our generation run with ``--save_predictions`` (the
bundle's window, spacing, ROI and overlap taken as defaults) must write the same label map. The window's
lower bound lies below the phantom's air, so our foreground crop keeps the whole volume and both paths slide
the same windows over the same grid.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

import generate_adv_samples as gen
from engine import jobs
from training import run as training
from run_normal_or_adv_training import parse_args
from tests.networks.bundle_folder import write_bundle
from tests.scripts.helpers import data_flags, run_main
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 14


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(str(tmp_path_factory.mktemp("bundle") / "tiny_bundle"), classes=CLASSES)


def bundle_prediction(bundle_dir: str, image_file: str) -> np.ndarray:
    """MONAI's own bundle inference of one file: the config's preprocessing, network, weights and inferer."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_dir, "configs", "inference.json"))
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(os.path.join(bundle_dir, "models", "model.pt"), weights_only=True))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": image_file})
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(data["image"][None], network)
    return logits.argmax(1)[0].numpy()


def test_clean_prediction_equals_the_bundle_inference(bundle, tiny_dataset, tmp_path, capsys):
    from monai import transforms as mt

    argv = (["--model_name", "bundle", "--bundle_dir", bundle] + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name)
            + ["--max_cases", "1", "--attack_name", "pgd", "--steps", "1", "--eps", "4", "--save_predictions",
               "--save_adv_images_dir", str(tmp_path / "run"), "--no_sub_dir_adv_images", "--sw_batch_size", "2"])
    code, err = run_main(gen.main, argv, capsys)
    assert code == 0, err
    with open(tmp_path / "run" / "args.json") as f:
        args = json.load(f)
    assert (args["a_min"], args["a_max"], args["infer_overlap"]) == (-1100.0, 300.0, 0.25)
    assert (args["roi_x"], args["roi_y"], args["roi_z"], args["out_channels"]) == (32, 32, 16, CLASSES)
    item = tiny_dataset.validation[0]
    name = os.path.basename(item["label"])
    ours = nib.load(str(tmp_path / "run" / "predTsClean" / name))
    # the bundle's prediction is on its RAS grid; bring ours there with the bundle's own spatial steps
    to_bundle_grid = mt.Compose([mt.LoadImage(image_only=True), mt.EnsureChannelFirst(), mt.Orientation(axcodes="RAS"),
                                 mt.Spacing(pixdim=(1.5, 1.5, 2.0), mode="nearest")])
    ours_on_grid = to_bundle_grid(str(tmp_path / "run" / "predTsClean" / name))[0].numpy()
    theirs = bundle_prediction(bundle, item["image"])
    assert ours.shape == nib.load(item["image"]).shape
    assert ours_on_grid.shape == theirs.shape
    assert len(np.unique(theirs)) > 1
    assert (ours_on_grid == theirs).mean() == 1.0


def test_vaft_training_takes_a_step_on_the_bundle_model(bundle):
    args = parse_args(["--data_dir", "unused", "--debugging", "--device", "cpu", "--model_name", "bundle",
                       "--bundle_dir", bundle, "--adv_training_mode", "--freq_reg_mode", "--attack_name", "vafa-3d",
                       "--steps", "1", "--block_size", "8", "8", "8", "--noamp", "--optim_lr", "1e-2",
                       "--lrschedule", "constant"])
    job = jobs.training_job(args)
    model = job.model.build()
    trainer = training.build_trainer(job, model, torch.device("cpu"))
    labels = torch.zeros(2, 1, 32, 32, 16)
    labels[:, :, 8:24, 8:24, 4:12] = 1
    batch = {"image": (0.3 + 0.3 * labels + 0.05 * torch.rand(2, 1, 32, 32, 16)).clamp(0, 1), "label": labels}
    before = [p.detach().clone() for p in model.parameters()]
    terms = trainer.train_step(batch)
    assert np.isfinite(terms["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_weights_that_do_not_fit_are_one_line(bundle, tmp_path):
    import shutil

    from networks.bundle import build_bundle

    bad = str(tmp_path / "bad")
    shutil.copytree(bundle, bad)
    state = torch.load(os.path.join(bad, "models", "model.pt"), weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, os.path.join(bad, "models", "model.pt"))
    with pytest.raises(UserError, match="does not fit the bundle's network_def"):
        build_bundle(1, CLASSES, (32, 32, 16), bad)
