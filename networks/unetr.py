"""UNETR (Hatamizadeh et al., WACV 2022) as the paper's release builds it, over MONAI's implementation."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from monai.networks.nets import UNETR

from utils.options import Option

OPTIONS = (
    Option("feature_size", int, 16, "UNETR feature size", minimum=1),
    Option("hidden_size", int, 768, "ViT hidden size", minimum=1),
    Option("mlp_dim", int, 3072, "ViT MLP size", minimum=1),
    Option("num_heads", int, 12, "ViT attention heads", minimum=1),
    Option("pos_embed", str, "perceptron", "patch embedding (MONAI proj_type)", choices=("perceptron", "conv")),
    Option("norm_name", str, "instance", "decoder normalisation", choices=("instance", "batch")),
    Option("dropout_rate", float, 0.0, "dropout rate", minimum=0.0),
)
"""The release's UNETR flags (``--feature_size`` ... ``--dropout_rate``) with its defaults."""

PATCH = 16
"""UNETR's ViT patch side: every ROI side must be a multiple of it."""


def build_unetr(
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int],
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    pos_embed: str = "perceptron",
    norm_name: str = "instance",
    dropout_rate: float = 0.0,
) -> nn.Module:
    """MONAI ``UNETR`` with conv and residual blocks, as the release builds it.

    Raises:
        ValueError: ``hidden_size`` not divisible by ``num_heads``, or an ROI side not a
            multiple of the patch size 16.
    """
    if hidden_size % num_heads != 0:
        raise ValueError(f"--hidden_size ({hidden_size}) must be divisible by --num_heads ({num_heads})")
    if any(size % PATCH for size in img_size):
        raise ValueError(f"UNETR needs every ROI side divisible by its patch size {PATCH}, got roi {tuple(img_size)}")
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(img_size),
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        proj_type=pos_embed,  # MONAI renamed pos_embed -> proj_type; its default is now "conv"
        norm_name=norm_name,
        conv_block=True,
        res_block=True,
        dropout_rate=dropout_rate,
    )
