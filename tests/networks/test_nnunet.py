"""``--model_name nnunet``: our model and sliding window against nnU-Net v2's own predictor.

A tiny trained-model folder in nnU-Net's layout (random weights, :mod:`tests.networks.nnunet_folder`) is
read by ``nnUNetPredictor.initialize_from_trained_model_folder``; its logits of a preprocessed array are
the oracle for ours of the same image in [0, 1].

nnU-Net accumulates the window logits and Gaussian weights in float16, where the weights at a patch's
corners (below 1e-4 of the peak) underflow; we accumulate in float32. The logits are therefore compared
3 voxels away from the volume's faces (where every voxel has a well-resolved weight) to float16's
rounding, and the classes everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from networks.inference import WindowSettings, gaussian_importance, predict_logits, window_starts  # noqa: E402
from networks.nnunet import NnUNetFolder, build_nnunet, folder_defaults  # noqa: E402
from tests.networks.nnunet_folder import CT_PROPERTIES, write_nnunet_folder  # noqa: E402
from utils.errors import UserError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PATCH = (16, 16, 16)
WINDOW = WindowSettings(roi=PATCH, overlap=0.5, blend="nnunet")


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    return write_nnunet_folder(str(tmp_path_factory.mktemp("nnunet_ct")), folds=(0, 1))


@pytest.fixture(scope="module")
def two_channel_folder(tmp_path_factory):
    return write_nnunet_folder(str(tmp_path_factory.mktemp("nnunet_2ch")), channels=("CT", "T2"), folds=(0,), seed=7)


def nnunet_logits(folder: str, folds, mirror: bool, preprocessed: torch.Tensor) -> torch.Tensor:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, use_folds=tuple(int(f) for f in folds))
    return predictor.predict_logits_from_preprocessed_data(preprocessed).float()


def ct_case(shape, seed):
    """A CT ``[1, *shape]`` in HU, nnU-Net's preprocessed array of it, and our [0, 1] image ``[1, 1, *shape]``."""
    g = torch.Generator().manual_seed(seed)
    ct = torch.rand(1, *shape, generator=g) * 800 - 350
    lo, hi = CT_PROPERTIES["percentile_00_5"], CT_PROPERTIES["percentile_99_5"]
    preprocessed = (ct.clamp(lo, hi) - CT_PROPERTIES["mean"]) / CT_PROPERTIES["std"]  # nnU-Net's CTNormalization
    return preprocessed, ((ct.clamp(lo, hi) - lo) / (hi - lo))[None]


def assert_logits_agree(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    inner = (slice(None),) + tuple(slice(3, s - 3) for s in ours.shape[1:])
    scale = reference.abs().max().item()
    assert scale > 1  # not a degenerate comparison
    assert (ours - reference)[inner].abs().max().item() < 2e-3 * scale  # float16 rounding of the reference
    assert (ours.argmax(0) == reference.argmax(0)).float().mean().item() > 0.99


@pytest.mark.parametrize("folds", [("0",), ("0", "1")], ids=["1fold", "2folds"])
@pytest.mark.parametrize("tta", ["none", "mirror"])
@pytest.mark.parametrize("shape", [(24, 30, 20), (21, 30, 13)], ids=["tiled", "padded"])
def test_logits_match_nnunet_predictor(ct_folder, folds, tta, shape):
    preprocessed, image = ct_case(shape, seed=len(folds) + shape[2])
    reference = nnunet_logits(ct_folder, folds, tta == "mirror", preprocessed)
    model = build_nnunet(1, 3, PATCH, ct_folder, folds, "checkpoint_final.pth", tta).eval()
    with torch.no_grad():
        ours = predict_logits(model, image, WINDOW)[0]
    assert_logits_agree(ours, reference)


def test_two_channel_ct_and_zscore_match_nnunet_predictor(two_channel_folder):
    """Channel 0 CT-normalised, channel 1 z-scored over the whole volume (as nnU-Net preprocesses a case)."""
    shape = (20, 24, 18)
    ct_pre, ct01 = ct_case(shape, seed=3)
    mri = torch.rand(1, *shape, generator=torch.Generator().manual_seed(4)) * 500 + 20
    mri_pre = (mri - mri.mean()) / mri.std(unbiased=False)
    mri01 = (mri - mri.min()) / (mri.max() - mri.min())  # any affine scaling: the z-score ignores it
    reference = nnunet_logits(two_channel_folder, ("0",), True, torch.cat([ct_pre, mri_pre]))
    model = build_nnunet(2, 3, PATCH, two_channel_folder, ("0",), "checkpoint_final.pth", "mirror").eval()
    with torch.no_grad():
        ours = predict_logits(model, torch.cat([ct01, mri01[None]], dim=1), WINDOW)[0]
    assert_logits_agree(ours, reference)


def test_gaussian_and_window_placement_equal_nnunet_helpers():
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    for patch in [(16, 16, 16), (12, 20, 9)]:
        theirs = compute_gaussian(patch, 1.0 / 8, 1, dtype=torch.float64, device=torch.device("cpu")).numpy()
        np.testing.assert_allclose(gaussian_importance(patch), theirs, rtol=1e-12)
    for size, patch in [((16, 40, 97), (16, 16, 32)), ((110, 64, 65), (64, 64, 16))]:
        assert [window_starts(s, p, 0.5) for s, p in zip(size, patch)] == compute_steps_for_sliding_window(size, patch, 0.5)


def test_mirroring_makes_the_model_flip_equivariant(ct_folder):
    model = build_nnunet(1, 3, PATCH, ct_folder, ("0",), "checkpoint_final.pth", "mirror").eval()
    x = torch.rand(1, 1, *PATCH, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, flipped = model(x), model(torch.flip(x, (2, 4)))
    torch.testing.assert_close(torch.flip(flipped, (2, 4)), out, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_every_input_channel_through_mirroring(two_channel_folder):
    model = build_nnunet(2, 3, PATCH, two_channel_folder, ("0",), "checkpoint_final.pth", "mirror").eval()
    x = torch.rand(2, 2, *PATCH, requires_grad=True)
    model(x).logsumexp(1).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(dim=(0, 2, 3, 4)) > 0).all()


def test_folder_defaults(ct_folder):
    defaults = folder_defaults({"nnunet_model_dir": ct_folder})
    assert (defaults["roi_x"], defaults["roi_y"], defaults["roi_z"]) == PATCH
    assert (defaults["space_x"], defaults["space_y"], defaults["space_z"]) == (2.0, 1.5, 1.5)
    assert (defaults["a_min"], defaults["a_max"]) == (-160.0, 260.0)
    assert defaults["in_channels"] == 1 and defaults["out_channels"] == 3 and defaults["sw_blend"] == "nnunet"
    assert NnUNetFolder.read(ct_folder).class_names == ["background", "a", "b"]


def test_weights_load_strictly(ct_folder, tmp_path):
    import shutil

    bad = str(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    shutil.copytree(ct_folder, bad)
    path = f"{bad}/fold_0/checkpoint_final.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["network_weights"].pop(next(iter(ckpt["network_weights"])))
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="does not fit the network of plans.json"):
        build_nnunet(1, 3, PATCH, bad, ("0",))


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=2), r"takes 1 channel\(s\) and predicts 3 classes"),
    (dict(img_size=(32, 32, 32)), "patch size is"),
    (dict(nnunet_fold=("3",)), "fold_3/checkpoint_final.pth not found"),
    (dict(nnunet_model_dir=None), "needs --nnunet_model_dir"),
])
def test_wrong_settings_are_user_errors(ct_folder, kwargs, match):
    settings = dict(in_channels=1, out_channels=3, img_size=PATCH, nnunet_model_dir=ct_folder)
    settings.update(kwargs)
    with pytest.raises(UserError, match=match):
        build_nnunet(**settings)


def test_missing_nnunetv2_is_one_line_naming_the_install(monkeypatch):
    import builtins

    import networks.nnunet as module

    real_import = builtins.__import__

    def no_nnunetv2(name, *args, **kwargs):
        if name.startswith("nnunetv2"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nnunetv2)
    with pytest.raises(UserError, match=r"pip install 'nnunetv2>=2.8,<2.9'"):
        module.require_nnunetv2()
