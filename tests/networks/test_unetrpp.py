"""UNETR++: the authors' parameter names and shapes, their checkpoint layout, deep supervision."""

from __future__ import annotations

import json
import os

import pytest
import torch

from training.losses import DeepSupervisionLoss, build_dice_ce
from networks import build_model, load_model_weights
from networks.unetrpp import UNETRPlusPlus

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = os.path.dirname(os.path.abspath(__file__))

# the authors' trainers: Synapse 64x128x128 crops (depth first) and 14 classes, ACDC 16x160x160 and 4;
# our ROI is (x, y, z), i.e. their crop reversed
CONFIGS = {"synapse": ((128, 128, 64), 14), "acdc": ((160, 160, 16), 4)}

TINY = dict(unetrpp_feature_size=4, unetrpp_num_heads=2, unetrpp_depths=(1, 1, 1, 1))
TINY_ROI = (32, 32, 16)


def expected_keys(variant: str) -> dict[str, tuple]:
    """Names and shapes of the authors' model (``tests/networks/unetrpp_<variant>_keys.json``, listed from an
    instance of their public architecture Amshaker/unetr_plus_plus with the trainers' arguments)."""
    with open(os.path.join(HERE, f"unetrpp_{variant}_keys.json")) as f:
        return {key: tuple(shape) for key, shape in json.load(f)}


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_parameter_names_and_shapes_equal_the_authors(variant):
    roi, classes = CONFIGS[variant]
    model = build_model("unetr++", 1, classes, roi, unetrpp_variant=variant)
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = expected_keys(variant)
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    # the paper's size: 42.96 M parameters on Synapse
    if variant == "synapse":
        assert sum(p.numel() for p in model.parameters()) == 42_952_850


def test_synapse_shares_the_spatial_projection_acdc_does_not():
    synapse = UNETRPlusPlus(1, 3, TINY_ROI, variant="synapse", feature_size=4, num_heads=2, depths=(1, 1, 1, 1))
    acdc = UNETRPlusPlus(1, 3, (32, 32, 8), variant="acdc", feature_size=4, num_heads=2, depths=(1, 1, 1, 1))
    epa = synapse.unetr_pp_encoder.stages[0][0].epa_block
    assert epa.E is epa.F
    epa = acdc.unetr_pp_encoder.stages[0][0].epa_block
    assert epa.E is not epa.F and hasattr(acdc.unetr_pp_encoder.stages[0][0], "conv52")


def nnunet_checkpoint(model: torch.nn.Module) -> dict:
    """A checkpoint in nnU-Net's (and so the UNETR++ release's) file layout."""
    return {
        "epoch": 1000,
        "state_dict": model.state_dict(),
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "params": [0]}]},
        "lr_scheduler_state_dict": None,
        "plot_stuff": ([0.9, 0.8], [0.85, 0.8], [0.1, 0.2], [0.5, 0.6]),
        "best_stuff": (999, 0.81, 0.82, 998),
        "amp_grad_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                            "_growth_tracker": 0},
    }


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_checkpoint_in_the_authors_layout_loads_strictly_and_round_trips(tmp_path, deep_supervision):
    torch.manual_seed(0)
    source = build_model("unetr++", 1, 3, TINY_ROI, **TINY, unetrpp_deep_supervision=True)
    with torch.no_grad():  # non-trivial values everywhere (gamma starts at 1e-6, pos_embed at 0)
        for name, param in source.named_parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = tmp_path / "model_final_checkpoint.model"
    torch.save(nnunet_checkpoint(source), path)

    torch.manual_seed(1)
    target = build_model("unetr++", 1, 3, TINY_ROI, **TINY, unetrpp_deep_supervision=deep_supervision)
    info = load_model_weights(target, str(path))  # weights_only, strict
    assert info["epoch"] == 1000 and info["dropped_keys"] == [] and info["filled_keys"] == []
    x = torch.rand(1, 1, *TINY_ROI)
    source.eval()
    target.eval()
    with torch.no_grad():
        expected = source(x)
        assert torch.equal(target(x), expected)  # eval mode: the full-resolution logits only

    # and through our own checkpoint format again
    path2 = tmp_path / "ours.pt"
    torch.save({"epoch": 0, "model_state_dict": target.state_dict()}, path2)
    again = build_model("unetr++", 1, 3, TINY_ROI, **TINY)
    load_model_weights(again, str(path2))
    with torch.no_grad():
        assert torch.equal(again.eval()(x), expected)


def test_a_checkpoint_of_other_flags_is_refused_by_name():
    source = build_model("unetr++", 1, 3, TINY_ROI, **TINY)
    other = build_model("unetr++", 1, 3, (64, 32, 16), **TINY)  # other ROI: other positional embeddings
    from utils.errors import UserError

    with pytest.raises(UserError, match="pos_embed"):
        load_model_weights(other, {"state_dict": source.state_dict()})


def test_deep_supervision_outputs_train_with_the_weighted_loss():
    torch.manual_seed(0)
    model = build_model("unetr++", 1, 3, TINY_ROI, **TINY, unetrpp_deep_supervision=True).train()
    x = torch.rand(2, 1, *TINY_ROI)
    outputs = model(x)
    # full, 1/patch and 1/(2 patch) resolution; patch (2, 4, 4) in (z, y, x) is (4, 4, 2) in (x, y, z)
    assert [tuple(o.shape[2:]) for o in outputs] == [TINY_ROI, (8, 8, 8), (4, 4, 4)]
    labels = torch.randint(0, 3, (2, 1, *TINY_ROI)).float()
    loss = DeepSupervisionLoss(build_dice_ce())
    value = loss(outputs, labels)
    value.backward()
    assert model.out3.conv.conv.weight.grad is not None  # the coarse heads learn
    # a single tensor goes to Dice-CE unchanged
    assert torch.equal(loss(outputs[0].detach(), labels), build_dice_ce()(outputs[0].detach(), labels))
    assert model.eval()(x).shape == (2, 3, *TINY_ROI)


def test_input_affine_maps_onto_the_authors_normalisation():
    torch.manual_seed(0)
    plain = build_model("unetr++", 1, 3, TINY_ROI, **TINY).eval()
    mapped = build_model("unetr++", 1, 3, TINY_ROI, **TINY, unetrpp_in_scale=2.0, unetrpp_in_shift=-1.0).eval()
    mapped.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, *TINY_ROI)
    with torch.no_grad():
        torch.testing.assert_close(mapped(x), plain(2 * x - 1))


def test_vaft_step_with_deep_supervision():
    """The training script's VAFT trainer on UNETR++ returning three resolutions: Dice-CE weighted over
    them, the frequency-consistency term on the full-resolution logits, the attack on eval-mode output."""
    from engine import jobs
    from training import run as training
    from run_normal_or_adv_training import parse_args
    from tests.networks.test_models import batch_for

    args = parse_args(["--data_dir", "unused", "--debugging", "--device", "cpu", "--out_channels", "3",
                       "--model_name", "unetr++", "--unetrpp_feature_size", "4", "--unetrpp_num_heads", "2",
                       "--unetrpp_depths", "1", "1", "1", "1", "--unetrpp_deep_supervision",
                       "--roi_x", "32", "--roi_y", "32", "--roi_z", "16", "--adv_training_mode", "--freq_reg_mode",
                       "--attack_name", "pgd", "--steps", "1", "--noamp", "--lrschedule", "constant"])
    job = jobs.training_job(args)
    torch.manual_seed(0)
    model = job.model.build()
    trainer = training.build_trainer(job, model, torch.device("cpu"))
    terms = trainer.train_step(batch_for(TINY_ROI))
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values()) and terms["loss_freq"] > 0
