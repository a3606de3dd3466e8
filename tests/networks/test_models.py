"""Every registered model: built from its flags, forward/backward, one attack and one training step."""

from __future__ import annotations

import pytest
import torch

from engine import cli, jobs
from training import run as training
from networks import MODELS, build_model, model_options
from run_normal_or_adv_training import parse_args
from tests.networks.tiny_models import TINY_MODELS, tiny_flags
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 3


def training_args(name: str, *extra: str):
    return parse_args(["--data_dir", "unused", "--debugging", "--device", "cpu", "--out_channels", str(CLASSES),
                       *tiny_flags(name), *extra])


def batch_for(roi, seed: int = 0, size: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(size, 1, *roi)
    x, y, z = roi
    labels[:, :, x // 4: 3 * x // 4, y // 4: 3 * y // 4, z // 4: 3 * z // 4] = 1
    labels[:, :, 3 * x // 8: 5 * x // 8, 3 * y // 8: 5 * y // 8, 3 * z // 8: 5 * z // 8] = 2
    images = (0.2 + 0.3 * labels + 0.05 * torch.rand(size, 1, *roi, generator=g)).clamp(0, 1)
    return {"image": images, "label": labels}


def test_model_flags_are_declared_once_without_clashes():
    names = [option.name for option in model_options()]
    assert len(names) == len(set(names))
    for name, entry in MODELS.items():
        assert entry.description, name


@pytest.mark.parametrize("name", list(MODELS))
def test_model_builds_and_runs_forward_backward(name):
    args = training_args(name)
    settings = cli.model_settings(args)
    assert set(settings.options) == {option.name for option in MODELS[name].options}  # only its own flags
    torch.manual_seed(0)
    model = settings.build()
    roi = settings.roi
    images = torch.rand(1, 1, *roi, requires_grad=True)
    model.eval()
    logits = model(images)
    assert logits.shape == (1, CLASSES, *roi)
    logits.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_model_goes_through_one_attack_and_one_training_step(name):
    """Adversarial training with PGD: the attack (eval mode, input gradients) builds X', then one
    optimiser step on DiceCE(M(X'), Y) changes the weights (constant rate: warm-up starts at 0)."""
    args = training_args(name, "--adv_training_mode", "--attack_name", "pgd", "--steps", "1", "--eps", "8",
                         "--noamp", "--optim_lr", "1e-2", "--lrschedule", "constant")
    job = jobs.training_job(args)
    torch.manual_seed(0)
    model = job.model.build()
    trainer = training.build_trainer(job, model, torch.device("cpu"))
    batch = batch_for(job.model.roi)
    adv = trainer.adversarial(batch["image"], batch["label"])
    assert adv.shape == batch["image"].shape
    assert (adv - batch["image"]).abs().max() <= 8 / 255 + 1e-6 and 0 <= adv.min() and adv.max() <= 1
    before = [p.detach().clone() for p in model.parameters()]
    terms = trainer.train_step(batch)
    assert torch.isfinite(torch.tensor(terms["loss"]))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name, roi, match", [
    ("unet-r", (32, 32, 24), "divisible by its patch size 16"),
    ("unetr++", (32, 32, 8), r"divisible by \(32, 32, 16\)"),
    ("swin-unetr", (96, 96, 80), "divisible by 32"),
    ("segresnet", (32, 32, 12), "divisible by 8"),
    ("unet", (32, 32, 12), "divisible by 16"),
])
def test_roi_that_does_not_fit_the_model_is_a_user_error(name, roi, match):
    with pytest.raises(UserError, match=match):
        build_model(name, 1, 3, roi)


def test_every_model_has_a_tiny_configuration():
    assert set(TINY_MODELS) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_runs_through_the_generation_script(name, tiny_dataset, tmp_path, capsys):
    """Whole-volume tiling of the attack and sliding-window inference, from the command line."""
    import generate_adv_samples as gen
    from tests.scripts.helpers import data_flags

    if MODELS[name].defaults is not None:
        pytest.skip("its classes come from its own folder (tests/networks/test_nnunet_cli.py runs it end to end)")
    args = training_args(name, "--out_channels", "14")  # the dataset's classes
    torch.manual_seed(0)
    model = cli.model_settings(args).build()
    path = str(tmp_path / "model.pt")
    torch.save({"state_dict": model.state_dict()}, path)
    argv = (tiny_flags(name) + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name)
            + ["--pretrained_path", path, "--max_cases", "1", "--infer_overlap", "0", "--attack_name", "pgd",
               "--steps", "1", "--debugging"])
    assert gen.main(argv) == 0
    assert "== PGD" in capsys.readouterr().out


def test_an_roi_the_model_refuses_is_one_line_from_the_script(tiny_dataset, tmp_path, capsys):
    import generate_adv_samples as gen
    from tests.scripts.helpers import data_flags, run_main

    path = str(tmp_path / "model.pt")
    torch.save({"state_dict": {}}, path)
    argv = (tiny_flags("swin-unetr") + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name)
            + ["--roi_z", "16", "--pretrained_path", path, "--max_cases", "1", "--attack_name", "fgsm", "--debugging"])
    code, err = run_main(gen.main, argv, capsys)
    # refused while the flags are parsed (the builder's check, run on the meta device): one line, no traceback
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1
    assert "error: SwinUNETR needs every ROI side divisible by 32, got roi (64, 32, 16)" in last
