"""Tiny configurations of every registered model, as command-line flags (fast CPU tests)."""

from __future__ import annotations

from networks import MODELS

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
}


def tiny_flags(name: str) -> list[str]:
    """``--model_name`` with the model's tiny flags and its ROI."""
    flags, roi = TINY_MODELS[name]
    return ["--model_name", name, *flags, *(f for axis, size in zip("xyz", roi) for f in (f"--roi_{axis}", str(size)))]


assert set(TINY_MODELS) == set(MODELS), "every registered model needs a tiny configuration here"
