import os
import re
import zipfile

import numpy as np
import pytest
import torch

from networks import build_model, load_model_weights  # the registry's: a misfit names each model's flags
from networks.checkpoint import (
    LEGACY_DROPPED_KEYS,
    adapt_legacy_state_dict,
    extract_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from utils.errors import UserError

TINY = dict(
    in_channels=1,
    out_channels=3,
    img_size=(32, 32, 32),
    feature_size=8,
    hidden_size=48,
    mlp_dim=96,
    num_heads=4,
)


def tiny_unetr(seed: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet-r", **{**TINY, **overrides}).eval()


@pytest.fixture(scope="module")
def source_model():
    return tiny_unetr(0)


@pytest.fixture(scope="module")
def volume():
    return torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))


def legacy_state_dict(model: torch.nn.Module) -> dict:
    """The model's weights in the layout of a MONAI-0.7-era UNETR checkpoint."""
    old = {k: v.clone() for k, v in model.state_dict().items() if ".norm_cross_attn." not in k}
    hidden, feat = TINY["hidden_size"], TINY["feature_size"]
    old["vit.patch_embedding.cls_token"] = torch.zeros(1, 1, hidden)
    old["encoder2.blocks.0.1.conv3.conv.weight"] = torch.randn(2 * feat, 2 * feat, 1, 1, 1)
    old["encoder2.blocks.1.1.conv3.conv.weight"] = torch.randn(2 * feat, 2 * feat, 1, 1, 1)
    old["encoder3.blocks.0.1.conv3.conv.weight"] = torch.randn(4 * feat, 4 * feat, 1, 1, 1)
    return old


def rename_numpy_core(path, out_path):
    """Rewrite a checkpoint so its numpy scalars pickle as numpy 1.x does (numpy.core...)."""
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out_path, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            zout.writestr(name, data)


def outputs(model, volume):
    with torch.no_grad():
        return model(volume)


def test_numpy_scalars_load_with_weights_only(tmp_path):
    path = tmp_path / "scalars.pt"
    torch.save({"best_acc": np.float64(0.5), "epoch_acc": np.float32(0.25), "epoch": 3, "w": torch.ones(2)}, path)
    ckpt = read_checkpoint(path)
    assert ckpt["best_acc"] == 0.5 and ckpt["best_acc"].dtype == np.float64
    assert ckpt["epoch_acc"] == np.float32(0.25) and ckpt["epoch_acc"].dtype == np.float32
    assert torch.equal(ckpt["w"], torch.ones(2))


def test_numpy1_scalar_module_name_is_allowed(tmp_path):
    torch.save({"best_acc": np.float64(0.75)}, tmp_path / "new.pt")
    rename_numpy_core(tmp_path / "new.pt", tmp_path / "old.pt")
    with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
        torch.load(tmp_path / "old.pt", weights_only=True)  # plain weights_only rejects it
    assert read_checkpoint(tmp_path / "old.pt")["best_acc"] == 0.75


class _NotAllowed:
    pass


def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "extra": _NotAllowed()}, path)
    with pytest.raises(UserError, match=re.escape(str(path))):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found: .*nope.pt; pass --pretrained_path"):
        read_checkpoint(tmp_path / "nope.pt")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        read_checkpoint(tmp_path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save({"w": torch.ones(10)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UserError, match=f"cannot read checkpoint {re.escape(str(path))}"):
        read_checkpoint(path)


def test_non_dict_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(UserError, match="holds a Tensor"):
        read_checkpoint(path)


def test_legacy_checkpoint_gives_identical_outputs(tmp_path, source_model, volume):
    path = tmp_path / "model_best.pt"
    ckpt = {
        "epoch": 4999,
        "best_acc": np.float64(0.81),
        "epoch_acc": np.float32(0.8),
        "model_state_dict": legacy_state_dict(source_model),
    }
    torch.save(ckpt, path)

    fresh = tiny_unetr(seed=1)
    assert not torch.equal(outputs(fresh, volume), outputs(source_model, volume))
    info = load_model_weights(fresh, path)

    assert torch.equal(outputs(fresh, volume), outputs(source_model, volume))
    assert sorted(info["dropped_keys"]) == sorted(LEGACY_DROPPED_KEYS)
    n_norm_cross = sum(".norm_cross_attn." in k for k in source_model.state_dict())
    assert n_norm_cross > 0 and len(info["filled_keys"]) == n_norm_cross
    assert info["epoch"] == 4999 and info["best_acc"] == pytest.approx(0.81)
    assert isinstance(info["best_acc"], float)


@pytest.mark.parametrize("layout", ["state_dict", "module_prefix", "bare"])
def test_checkpoint_layouts(layout, source_model, volume):
    weights = dict(source_model.state_dict())
    if layout == "state_dict":
        ckpt = {"state_dict": weights, "epoch": 1}
    elif layout == "module_prefix":
        ckpt = {"model_state_dict": {f"module.{k}": v for k, v in weights.items()}}
    else:
        ckpt = weights
    fresh = tiny_unetr(seed=2)
    info = load_model_weights(fresh, ckpt)
    assert info["source"] == "<in-memory>"
    assert info["dropped_keys"] == [] and info["filled_keys"] == []
    assert torch.equal(outputs(fresh, volume), outputs(source_model, volume))


def test_monai_1_4_cross_attn_keys_are_dropped(source_model):
    weights = dict(source_model.state_dict())
    weights["vit.blocks.0.cross_attn.qkv.weight"] = torch.zeros(3 * 48, 48)
    weights["vit.blocks.11.cross_attn.out_proj.bias"] = torch.zeros(48)
    adapted = adapt_legacy_state_dict(weights, source_model)
    assert not any(".cross_attn." in k for k in adapted)
    assert set(adapted) == set(source_model.state_dict())


def test_extract_state_dict_requires_weights():
    with pytest.raises(UserError, match=r"no model weights.*'epoch'"):
        extract_state_dict({"epoch": 3, "optimizer_state_dict": {}})


def test_unrelated_keys_are_named(source_model):
    weights = dict(source_model.state_dict())
    weights["decoder9.conv.weight"] = torch.zeros(1)
    weights["head.bias"] = torch.zeros(1)
    del weights["out.conv.conv.bias"]
    with pytest.raises(UserError) as excinfo:
        load_model_weights(tiny_unetr(seed=3), {"model_state_dict": weights})
    message = str(excinfo.value)
    assert "2 unexpected keys [decoder9.conv.weight, head.bias]" in message
    assert "1 missing keys [out.conv.conv.bias]" in message
    assert "--feature_size" in message


def test_architecture_mismatch_is_clear(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save({"model_state_dict": tiny_unetr(0, feature_size=16).state_dict()}, path)
    with pytest.raises(UserError, match=r"does not fit the model: \d+ shape mismatches .*--feature_size/--hidden_size"):
        load_model_weights(tiny_unetr(seed=0), path)


def test_read_checkpoint_returns_everything_and_loads_weights(tmp_path, source_model):
    path = tmp_path / "model_latest.pt"
    save_checkpoint({"epoch": 7, "model_state_dict": source_model.state_dict(), "optimizer_state_dict": {}}, path)
    fresh = tiny_unetr(seed=4)
    ckpt = read_checkpoint(path)  # what a resume does: read once, then load the weights from it
    load_model_weights(fresh, ckpt)
    assert ckpt["epoch"] == 7 and "optimizer_state_dict" in ckpt
    for key, value in source_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_save_checkpoint_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "model_best.pt"
    save_checkpoint({"epoch": 1, "w": torch.arange(4)}, path)
    assert read_checkpoint(path)["epoch"] == 1
    assert os.listdir(path.parent) == ["model_best.pt"]


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model_latest.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def partial_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()

    assert read_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["model_latest.pt"]
