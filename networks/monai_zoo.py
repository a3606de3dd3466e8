"""MONAI's SwinUNETR, SegResNet and UNet as registered models.

The defaults are the reference hyper-parameters of MONAI's tutorials (Project-MONAI/tutorials):
SwinUNETR as in the BTCV tutorial (``feature_size=48``, depths ``2,2,2,2``, heads ``3,6,12,24``, 96^3 ROI),
SegResNet as in the BraTS tutorial (``init_filters=16``, blocks down ``1,2,2,4``, up ``1,1,1``, dropout 0.2),
UNet as in the spleen tutorial (channels ``16..256``, strides ``2,2,2,2``, two residual units, batch norm).
These are the models the volumetric robustness benchmark of Malik et al. (BMVC 2024) attacks.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch.nn as nn
from monai.networks.nets import UNet, SegResNet, SwinUNETR

from utils.options import Option


def _check_divisible(model: str, img_size: Sequence[int], multiple: int) -> None:
    if any(side % multiple for side in img_size):
        raise ValueError(f"{model} needs every ROI side divisible by {multiple}, got roi {tuple(img_size)}")


# --------------------------------------------------------------------------- SwinUNETR

SWIN_OPTIONS = (
    Option("swin_feature_size", int, 48, "SwinUNETR feature size (a multiple of 12)", minimum=12),
    Option("swin_depths", int, (2, 2, 2, 2), "SwinUNETR Swin blocks per stage (four values)", nargs="+", minimum=1),
    Option("swin_num_heads", int, (3, 6, 12, 24), "SwinUNETR attention heads per stage (four values)", nargs="+",
           minimum=1),
    Option("swin_drop_path", float, 0.0, "SwinUNETR stochastic depth rate", minimum=0.0),
    Option("swin_v2", bool, False, "SwinUNETR-V2 (a residual conv block before each stage)"),
)
"""SwinUNETR flags (MONAI BTCV tutorial defaults)."""


def build_swin_unetr(in_channels: int, out_channels: int, img_size: Sequence[int], swin_feature_size: int = 48,
                     swin_depths: Sequence[int] = (2, 2, 2, 2), swin_num_heads: Sequence[int] = (3, 6, 12, 24),
                     swin_drop_path: float = 0.0, swin_v2: bool = False) -> nn.Module:
    """MONAI ``SwinUNETR`` (Hatamizadeh et al., 2022) with instance norm and patch size 2.

    Raises:
        ValueError: an ROI side not divisible by 32 (five 2x downsamplings), an ROI of 32^3 (its
            bottleneck would be one voxel, which instance norm cannot normalise in training), a
            feature size not divisible by 12, or not four depths / heads.
    """
    _check_divisible("SwinUNETR", img_size, 32)
    if math.prod(side // 32 for side in img_size) < 2:
        raise ValueError(f"SwinUNETR needs an ROI with more than one bottleneck voxel (ROI / 32), got roi "
                         f"{tuple(img_size)}: instance norm on a 1x1x1 bottleneck fails in training and zeroes it "
                         "in inference; make one side 64 or more (e.g. --roi_x 64)")
    if swin_feature_size % 12:
        raise ValueError(f"--swin_feature_size must be a multiple of 12, got {swin_feature_size}")
    if len(swin_depths) != 4 or len(swin_num_heads) != 4:
        raise ValueError(f"--swin_depths and --swin_num_heads need four values each, got "
                         f"{list(swin_depths)} and {list(swin_num_heads)}")
    for stage, heads in enumerate(swin_num_heads):
        width = swin_feature_size * 2 ** stage
        if width % heads:
            raise ValueError(f"SwinUNETR stage {stage} width {width} is not divisible by its {heads} heads "
                             "(--swin_num_heads)")
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=swin_feature_size,
                     depths=tuple(swin_depths), num_heads=tuple(swin_num_heads), dropout_path_rate=swin_drop_path,
                     use_v2=swin_v2, spatial_dims=3)


# --------------------------------------------------------------------------- SegResNet

SEGRESNET_OPTIONS = (
    Option("segresnet_init_filters", int, 16, "SegResNet filters of the first stage (a multiple of 8)", minimum=8),
    Option("segresnet_blocks_down", int, (1, 2, 2, 4), "SegResNet residual blocks per encoder stage", nargs="+",
           minimum=1),
    Option("segresnet_blocks_up", int, (1, 1, 1), "SegResNet residual blocks per decoder stage", nargs="+",
           minimum=1),
    Option("segresnet_dropout", float, 0.2, "SegResNet dropout probability (training only)", minimum=0.0),
)
"""SegResNet flags (MONAI BraTS tutorial defaults)."""


def build_segresnet(in_channels: int, out_channels: int, img_size: Sequence[int], segresnet_init_filters: int = 16,
                    segresnet_blocks_down: Sequence[int] = (1, 2, 2, 4), segresnet_blocks_up: Sequence[int] = (1, 1, 1),
                    segresnet_dropout: float = 0.2) -> nn.Module:
    """MONAI ``SegResNet`` (Myronenko, 2018; without the VAE branch), group norm of 8 groups.

    Raises:
        ValueError: an ROI side not divisible by ``2 ** (stages - 1)``, filters not a multiple of 8, or
            one decoder stage fewer than encoder stages not given.
    """
    if len(segresnet_blocks_up) != len(segresnet_blocks_down) - 1:
        raise ValueError(f"--segresnet_blocks_up needs one value fewer than --segresnet_blocks_down, got "
                         f"{list(segresnet_blocks_up)} and {list(segresnet_blocks_down)}")
    if segresnet_init_filters % 8:
        raise ValueError(f"--segresnet_init_filters must be a multiple of 8 (group norm of 8 groups), "
                         f"got {segresnet_init_filters}")
    if not segresnet_dropout < 1:
        raise ValueError(f"--segresnet_dropout must be below 1, got {segresnet_dropout}")
    _check_divisible("SegResNet", img_size, 2 ** (len(segresnet_blocks_down) - 1))
    return SegResNet(spatial_dims=3, init_filters=segresnet_init_filters, in_channels=in_channels,
                     out_channels=out_channels, dropout_prob=segresnet_dropout or None,
                     blocks_down=tuple(segresnet_blocks_down), blocks_up=tuple(segresnet_blocks_up))


# --------------------------------------------------------------------------- UNet

UNET_OPTIONS = (
    Option("unet_channels", int, (16, 32, 64, 128, 256), "UNet channels per level", nargs="+", minimum=1),
    Option("unet_strides", int, (2, 2, 2, 2), "UNet down-sampling strides (one fewer than --unet_channels)",
           nargs="+", minimum=1),
    Option("unet_num_res_units", int, 2, "UNet residual units per block", minimum=0),
    Option("unet_norm", str, "batch", "UNet normalisation", choices=("batch", "instance")),
)
"""UNet flags (MONAI spleen tutorial defaults)."""


def build_unet(in_channels: int, out_channels: int, img_size: Sequence[int],
               unet_channels: Sequence[int] = (16, 32, 64, 128, 256), unet_strides: Sequence[int] = (2, 2, 2, 2),
               unet_num_res_units: int = 2, unet_norm: str = "batch") -> nn.Module:
    """MONAI ``UNet`` (residual units, Kerfoot et al., 2018).

    Raises:
        ValueError: strides not one fewer than channels, or an ROI side not divisible by their product.
    """
    if len(unet_strides) != len(unet_channels) - 1:
        raise ValueError(f"--unet_strides needs one value fewer than --unet_channels, got "
                         f"{list(unet_strides)} and {list(unet_channels)}")
    _check_divisible("UNet", img_size, math.prod(unet_strides))
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(unet_channels),
                strides=tuple(unet_strides), num_res_units=unet_num_res_units, norm=unet_norm.upper())
