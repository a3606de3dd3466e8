"""A tiny MONAI bundle written in MONAI's layout (tests)."""

from __future__ import annotations

import json
import os

import torch


def write_bundle(root: str, classes: int = 14, seed: int = 0) -> str:
    """A bundle in MONAI's layout: configs/inference.json (UNet, RAS, Spacingd, ScaleIntensityRanged, sliding
    window), configs/metadata.json, models/model.pt."""
    from monai.bundle import ConfigParser

    config = {
        "imports": ["$import torch"],
        "bundle_root": root,
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": classes,
                        "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1100, "a_max": 300, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "sw_batch_size": 2,
                    "overlap": 0.25},
    }
    os.makedirs(os.path.join(root, "configs"), exist_ok=True)
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    with open(os.path.join(root, "configs", "inference.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(root, "configs", "metadata.json"), "w") as f:
        json.dump({"version": "0.1.0", "name": "tiny test bundle"}, f)
    torch.manual_seed(seed)
    network = ConfigParser(config).get_parsed_content("network_def")
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    torch.save(network.state_dict(), os.path.join(root, "models", "model.pt"))
    return root
