"""Segmentation networks built from the command-line model flags."""

from __future__ import annotations

from typing import Callable, Sequence

import torch.nn as nn
from monai.networks.nets import UNETR

from utils.errors import UserError


def _build_unetr(
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
    if hidden_size % num_heads != 0:
        raise UserError(
            f"--hidden_size ({hidden_size}) must be divisible by --num_heads ({num_heads})"
        )
    for size in img_size:
        if size % 16 != 0:
            raise UserError(
                f"UNETR needs every ROI side divisible by its patch size 16, got roi {tuple(img_size)}"
            )
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


MODELS: dict[str, Callable[..., nn.Module]] = {"unet-r": _build_unetr}


def build_model(model_name: str = "unet-r", **kwargs) -> nn.Module:
    """Build a segmentation network by its CLI name.

    Args:
        model_name: key of ``MODELS`` (``unet-r``).
        **kwargs: ``in_channels``, ``out_channels``, ``img_size`` and the model flags of DESIGN §2.

    Raises:
        UserError: unknown model name or inconsistent sizes.
    """
    if model_name not in MODELS:
        raise UserError(f"unknown --model_name {model_name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[model_name](**kwargs)


def build_model_from_args(args) -> nn.Module:
    """``build_model`` from an argparse namespace carrying the model flags of ``utils.cli``."""
    return build_model(
        args.model_name,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        img_size=(args.roi_x, args.roi_y, args.roi_z),
        feature_size=args.feature_size,
        hidden_size=args.hidden_size,
        mlp_dim=args.mlp_dim,
        num_heads=args.num_heads,
        pos_embed=args.pos_embed,
        norm_name=args.norm_name,
        dropout_rate=args.dropout_rate,
    )
