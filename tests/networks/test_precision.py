"""``--precision``: autocast reaches the model's passes and nothing else; float16 input gradients keep their value."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import generate_adv_samples as gen
from attacks import VAFA
from attacks import vafa as vafa_module
from training.losses import build_dice_ce
from networks import MODELS, MixedPrecision, ModelEntry, with_precision
from networks import precision as precision_module
from tests.scripts.helpers import eval_flags, run_main
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


class Probe(nn.Module):
    """Two convolutions; records the dtype its first layer computed in, and whether gradients were on."""

    seen: list = []

    def __init__(self, in_channels=1, out_channels=3):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.head = nn.Conv3d(4, out_channels, 1)

    def forward(self, x):
        hidden = self.conv(x)
        Probe.seen.append((hidden.dtype, torch.is_grad_enabled()))
        return self.head(torch.relu(hidden))


def build_probe(in_channels, out_channels, img_size):
    return Probe(in_channels, out_channels)


@pytest.mark.parametrize("flag, dtype", [(None, torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_the_flag_reaches_every_model_pass_of_a_run(monkeypatch, tiny_dataset, tmp_path, capsys, flag, dtype):
    monkeypatch.setitem(MODELS, "probe", ModelEntry(build_probe))
    torch.manual_seed(0)
    checkpoint = str(tmp_path / "probe.pt")
    torch.save({"state_dict": Probe(1, 14).state_dict()}, checkpoint)
    Probe.seen = []
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path / "out", "--model_name", "probe", "--attack_name", "pgd",
                      "--steps", "2", "--eps", "8") + (["--precision", flag] if flag else [])
    assert gen.main(argv) == 0
    attack_passes = [d for d, grad in Probe.seen if grad]
    prediction_passes = [d for d, grad in Probe.seen if not grad]
    assert attack_passes and prediction_passes
    assert set(attack_passes) == {dtype} and set(prediction_passes) == {dtype}
    (path,) = (tmp_path / "out").glob("*/results.json")
    results = json.loads(path.read_text())
    assert results["args"]["precision"] == flag
    if flag:
        assert f"[{flag} model passes]" in capsys.readouterr().out
        # the folder name says the precision: the same run in fp32 gets its own folder, nothing is mixed
        assert path.parent.name.endswith(f"_{flag}")
        code, err = run_main(gen.main, [a for a in argv if a not in ("--precision", flag)], capsys)
        assert code == 0, err
        assert (tmp_path / "out" / path.parent.name[: -len(f"_{flag}")] / "results.json").exists()


def test_fp32_is_the_network_itself():
    model = Probe()
    assert with_precision(model, "fp32") is model
    assert isinstance(with_precision(model, "bf16"), MixedPrecision)


def test_outputs_are_float32_and_deep_supervision_lists_too():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 1)

        def forward(self, x):
            return [self.conv(x), self.conv(x[..., ::2, ::2, ::2])]

    x = torch.rand(1, 1, 4, 4, 4)
    assert MixedPrecision(Probe(), "bf16")(x).dtype == torch.float32
    assert [o.dtype for o in MixedPrecision(TwoHeads(), "fp16")(x)] == [torch.float32, torch.float32]


def test_vafa_transforms_stay_float32_while_the_model_runs_in_bf16(monkeypatch):
    """The DCT, the quantisation and the SSIM term see float32 tensors with autocast off."""
    calls = []

    def recording(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls.append((name, out.dtype, torch.is_autocast_enabled("cpu")))
            return out
        return wrapped

    for name in ("block_dct", "block_idct", "quantize_dequantize"):
        monkeypatch.setattr(vafa_module, name, recording(name, getattr(vafa_module, name)))
    torch.manual_seed(0)
    images = torch.rand(1, 1, 16, 16, 16)
    labels = torch.randint(0, 3, (1, 1, 16, 16, 16)).float()
    Probe.seen = []
    model = MixedPrecision(Probe(), "bf16")
    adv = VAFA(model, build_dice_ce(), steps=2, block_size=(8, 8, 8), use_ssim_loss=True)(images, labels)
    assert adv.dtype == torch.float32
    assert {d for d, _ in Probe.seen} == {torch.bfloat16}
    assert {name for name, _, _ in calls} == {"block_dct", "block_idct", "quantize_dequantize"}
    assert all(dtype == torch.float32 and not autocast_on for _, dtype, autocast_on in calls)


def _input_gradient(model, x, labels, weight=1.0):
    x = x.clone().requires_grad_(True)
    loss = weight * build_dice_ce()(model(x), labels)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def test_fp16_input_gradients_keep_their_value(monkeypatch):
    """The paper's setting averages the loss over 6 tiles x 96^3 voxels x 14 classes (7e7 logits):
    ~1e-8 per logit, under float16's smallest subnormal (6e-8). Emulated here by weighting a
    small tile's loss by 1e-4. With the wrapper's power-of-two scale the fp16 gradient has the
    fp32 gradient's signs and size; without it (scale pinned to 1) it flushes to zero."""
    torch.manual_seed(0)
    net = Probe(1, 3)
    x = torch.rand(1, 1, 32, 32, 32)
    labels = torch.randint(0, 3, (1, 1, 32, 32, 32)).float()
    reference = _input_gradient(net, x, labels, 1e-4)
    scaled = _input_gradient(MixedPrecision(net, "fp16"), x, labels, 1e-4)
    nonzero = reference != 0
    agree = (scaled.sign() == reference.sign())[nonzero].float().mean().item()
    assert agree > 0.97
    rel = ((scaled - reference).norm() / reference.norm()).item()
    assert rel < 0.05
    monkeypatch.setattr(precision_module, "_scale_for", lambda peak: 1.0)
    unscaled = _input_gradient(MixedPrecision(net, "fp16"), x, labels, 1e-4)
    unscaled_agree = (unscaled.sign() == reference.sign())[nonzero].float().mean().item()
    assert unscaled_agree < agree - 0.1


def test_an_fp16_overflow_is_one_error_not_a_silent_inf(monkeypatch):
    monkeypatch.setattr(precision_module, "GRAD_PEAK", 2.0 ** 40)  # far past float16's 65504
    x = torch.rand(1, 1, 8, 8, 8)
    labels = torch.randint(0, 3, (1, 1, 8, 8, 8)).float()
    with pytest.raises(UserError, match="overflowed float16"):
        _input_gradient(MixedPrecision(Probe(1, 3), "fp16"), x, labels)


def test_compile_wraps_the_same_weights():
    from networks import compiled

    model = Probe()
    assert compiled(model, False) is model
    wrapped = compiled(model, True)  # compiles lazily, at the first call
    assert wrapped is not model and wrapped._orig_mod is model
