"""Tiny configurations of every registered model, as command-line flags (fast CPU tests)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

from networks import MODELS


@functools.lru_cache(maxsize=None)
def tiny_nnunet_dir() -> str:
    """A tiny nnU-Net trained-model folder (1 CT channel, 3 classes, patch 16^3), written once per session."""
    from tests.networks.nnunet_folder import write_nnunet_folder

    root = tempfile.mkdtemp(prefix="tiny_nnunet_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write_nnunet_folder(root)


@functools.lru_cache(maxsize=None)
def tiny_bundle_dir() -> str:
    """A tiny MONAI bundle (UNet, 3 classes, ROI 32x32x16), written once per session."""
    from tests.networks.bundle_folder import write_bundle

    root = tempfile.mkdtemp(prefix="tiny_bundle_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write_bundle(os.path.join(root, "bundle"), classes=3)


# name -> (model flags, ROI (x, y, z)); each ROI meets the model's divisibility rule
TINY_MODELS: dict[str, tuple[list[str], tuple[int, int, int]]] = {
    "unet-r": (["--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4"], (32, 32, 16)),
    "unetr++": (["--unetrpp_feature_size", "4", "--unetrpp_num_heads", "2", "--unetrpp_depths", "1", "1", "1", "1"],
                (32, 32, 16)),
    # SwinUNETR: sides divisible by 32, and more than one voxel at the bottleneck for instance norm in training
    "swin-unetr": (["--swin_feature_size", "12", "--swin_depths", "1", "1", "1", "1",
                    "--swin_num_heads", "1", "1", "1", "1"], (64, 32, 32)),
    "segresnet": (["--segresnet_init_filters", "8", "--segresnet_blocks_down", "1", "1", "1",
                   "--segresnet_blocks_up", "1", "1"], (32, 32, 16)),
    "unet": (["--unet_channels", "4", "8", "16", "--unet_strides", "2", "2", "--unet_num_res_units", "1"], (32, 32, 16)),
    # the folder (written on first use) decides channels (1), classes (3) and the ROI (its patch)
    "nnunet": (["--nnunet_model_dir", "<tiny nnU-Net folder>"], (16, 16, 16)),
    "bundle": (["--bundle_dir", "<tiny bundle>"], (32, 32, 16)),
}


def tiny_flags(name: str) -> list[str]:
    """``--model_name`` with the model's tiny flags and its ROI."""
    flags, roi = TINY_MODELS[name]
    folders = {"<tiny nnU-Net folder>": tiny_nnunet_dir, "<tiny bundle>": tiny_bundle_dir}
    flags = [folders[f]() if f in folders else f for f in flags]
    return ["--model_name", name, *flags, *(f for axis, size in zip("xyz", roi) for f in (f"--roi_{axis}", str(size)))]


assert set(TINY_MODELS) == set(MODELS), "every registered model needs a tiny configuration here"
