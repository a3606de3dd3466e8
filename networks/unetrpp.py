"""UNETR++ (Shaker et al., "UNETR++: Delving into Efficient and Accurate 3D Medical Image Segmentation",
IEEE TMI 2024), written from the paper and the public architecture.

A hierarchical encoder of four stages (a strided patch embedding, then three 2x downsamplings), each stage a
stack of efficient paired-attention (EPA) blocks; a decoder of EPA stages with skip additions, a last
convolutional stage at full resolution, and three output heads (full resolution for prediction, two coarser
ones for deep supervision).

Parameter names and shapes equal the authors' Synapse and ACDC models (public code Amshaker/unetr_plus_plus),
so their nnU-Net-style checkpoints (a dict holding ``state_dict``) load with the strict loader of
:mod:`networks.checkpoint`. ``tests/networks/unetrpp_*_keys.json`` hold the expected names and shapes.

Axis order: our tensors are ``[B, C, H, W, D]`` (x, y, z after RAS orientation); the authors' network sees
nnU-Net arrays ``[B, C, z, y, x]`` (depth first). The module reverses the spatial axes on the way in and out,
so ``--roi_x 128 --roi_y 128 --roi_z 64`` is the authors' 64x128x128 Synapse crop and the (2, 4, 4) patch
spans 2 slices in depth.

Building blocks from MONAI (``UnetResBlock``, ``UnetOutBlock``, ``get_conv_layer``, as the authors use them).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, get_conv_layer

from utils.options import Option

VARIANTS = {
    # patch: the stem's kernel and stride (depth, height, width) = the decoder's last upsampling;
    # convs: UnetResBlocks after the attention in each block; shared_ef: keys and values share
    # the spatial projection (E = F); dropout: attention dropout of the EPA blocks
    "synapse": dict(patch=(2, 4, 4), convs=1, shared_ef=True, dropout=0.15),
    "acdc": dict(patch=(1, 4, 4), convs=2, shared_ef=False, dropout=0.1),
}
"""The authors' two published configurations (Synapse 64x128x128 crops, ACDC 16x160x160 crops)."""

ENCODER_PROJ = (64, 64, 64, 32)
"""EPA spatial projection size per encoder stage (the paper's p)."""

DECODER_PROJ = 64
"""EPA spatial projection size of the decoder stages."""

OPTIONS = (
    Option("unetrpp_variant", str, "synapse", "UNETR++ configuration: synapse (patch 2x4x4, E=F shared) or acdc "
           "(patch 1x4x4, two conv blocks per EPA block)", choices=tuple(VARIANTS)),
    Option("unetrpp_feature_size", int, 16, "UNETR++ feature size (stage widths 2, 4, 8, 16 times it)", minimum=1),
    Option("unetrpp_num_heads", int, 4, "UNETR++ attention heads per EPA block", minimum=1),
    Option("unetrpp_depths", int, (3, 3, 3, 3), "UNETR++ EPA blocks per encoder stage (four values)", nargs="+",
           minimum=1),
    Option("unetrpp_deep_supervision", bool, False,
           "UNETR++: in training mode return [full, 1/2, 1/4] resolution logits (the authors' do_ds) for a "
           "deep-supervised loss; eval mode always returns the full-resolution logits"),
    Option("unetrpp_in_scale", float, 1.0, "UNETR++ input map x -> x * scale + shift applied inside the model "
           "(maps our [0,1] images onto the authors' z-scored intensities; see README)"),
    Option("unetrpp_in_shift", float, 0.0, "UNETR++ input shift (see --unetrpp_in_scale)"),
)
"""UNETR++ flags; defaults are the authors' Synapse model."""


class EPA(nn.Module):
    """Efficient paired attention: a channel and a spatial attention branch sharing query and key.

    The channel branch attends over channels (``d x d`` per head); the spatial branch projects keys and
    values from ``N`` tokens to ``p`` (``E``, ``F``) and attends over those. Each branch is projected to
    half the width and the two halves are concatenated.

    Args:
        input_size: tokens ``N`` (voxels of the stage).
        hidden_size: channels ``C``.
        proj_size: spatial projection size ``p``.
        num_heads: attention heads (must divide ``C``).
        dropout: attention dropout of both branches.
        shared_ef: one projection for keys and values (``E is F``), as in the authors' Synapse model.
    """

    def __init__(self, input_size: int, hidden_size: int, proj_size: int, num_heads: int = 4,
                 dropout: float = 0.1, shared_ef: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))  # channel branch
        self.temperature2 = nn.Parameter(torch.ones(num_heads, 1, 1))  # spatial branch
        self.qkvv = nn.Linear(hidden_size, 4 * hidden_size, bias=False)  # query, key, value (channel), value (spatial)
        self.E = nn.Linear(input_size, proj_size)
        self.F = self.E if shared_ef else nn.Linear(input_size, proj_size)
        self.attn_drop = nn.Dropout(dropout)
        self.attn_drop_2 = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, hidden_size // 2)  # spatial branch
        self.out_proj2 = nn.Linear(hidden_size, hidden_size // 2)  # channel branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C] -> [B, N, C]``."""
        b, n, c = x.shape
        heads = self.num_heads
        qkvv = self.qkvv(x).reshape(b, n, 4, heads, c // heads)  # [B, N, 4, h, d]
        qkvv = qkvv.permute(2, 0, 3, 4, 1)  # [4, B, h, d, N]
        query, key, value_c, value_s = qkvv.unbind(0)  # each [B, h, d, N]

        key_proj = self.E(key)  # [B, h, d, p]
        value_proj = self.F(value_s)  # [B, h, d, p]
        query = F.normalize(query, dim=-1)
        key = F.normalize(key, dim=-1)

        attn_c = (query @ key.transpose(-2, -1)) * self.temperature  # [B, h, d, d]
        attn_c = self.attn_drop(attn_c.softmax(dim=-1))
        x_c = (attn_c @ value_c)  # [B, h, d, N]
        x_c = x_c.permute(0, 3, 1, 2).reshape(b, n, c)  # [B, N, C]

        attn_s = (query.transpose(-2, -1) @ key_proj) * self.temperature2  # [B, h, N, p]
        attn_s = self.attn_drop_2(attn_s.softmax(dim=-1))
        x_s = attn_s @ value_proj.transpose(-2, -1)  # [B, h, N, d]
        x_s = x_s.permute(0, 3, 1, 2).reshape(b, n, c)  # [B, d, h, N] read as [B, N, C], as the authors' weights expect

        return torch.cat((self.out_proj(x_s), self.out_proj2(x_c)), dim=-1)  # [B, N, C]


class EPABlock(nn.Module):
    """Pre-norm EPA with a learned residual scale and positional embedding, then conv blocks.

    ``x + gamma * EPA(norm(x + pos))`` on tokens, then ``y + conv8(conv5x(y))`` on the volume.

    Args:
        input_size: tokens ``N`` of the stage (fixes the positional embedding and ``E``/``F``).
        hidden_size: channels.
        proj_size: EPA spatial projection size.
        num_heads: attention heads.
        dropout: EPA attention dropout.
        convs: 3x3x3 residual conv blocks after the attention (Synapse 1, ACDC 2).
        shared_ef: see :class:`EPA`.
    """

    def __init__(self, input_size: int, hidden_size: int, proj_size: int, num_heads: int, dropout: float,
                 convs: int = 1, shared_ef: bool = True):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"UNETR++ stage width {hidden_size} is not divisible by --unetrpp_num_heads {num_heads}")
        self.norm = nn.LayerNorm(hidden_size)
        self.gamma = nn.Parameter(1e-6 * torch.ones(hidden_size))
        self.epa_block = EPA(input_size, hidden_size, proj_size, num_heads, dropout, shared_ef)
        self.conv51 = UnetResBlock(3, hidden_size, hidden_size, kernel_size=3, stride=1, norm_name="batch")
        if convs == 2:
            self.conv52 = UnetResBlock(3, hidden_size, hidden_size, kernel_size=3, stride=1, norm_name="batch")
        self.conv8 = nn.Sequential(nn.Dropout3d(0.1), nn.Conv3d(hidden_size, hidden_size, 1))
        self.pos_embed = nn.Parameter(torch.zeros(1, input_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, S1, S2, S3] -> [B, C, S1, S2, S3]``."""
        b, c, s1, s2, s3 = x.shape
        tokens = x.reshape(b, c, s1 * s2 * s3).transpose(1, 2) + self.pos_embed  # [B, N, C]
        tokens = tokens + self.gamma * self.epa_block(self.norm(tokens))  # [B, N, C]
        skip = tokens.reshape(b, s1, s2, s3, c).permute(0, 4, 1, 2, 3)  # [B, C, S1, S2, S3]
        y = self.conv51(skip)
        if hasattr(self, "conv52"):
            y = self.conv52(y)
        return skip + self.conv8(y)


class UnetrPPEncoder(nn.Module):
    """Four stages: patch-embedding stem then three 2x downsamplings, each followed by EPA blocks.

    Returns the list of the four stages' outputs ``[B, dims[i], *grid_i]``.
    """

    def __init__(self, in_channels: int, dims: Sequence[int], depths: Sequence[int], grid_sizes: Sequence[int],
                 num_heads: int, patch: Sequence[int], convs: int, shared_ef: bool, dropout: float):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        for i in range(4):
            cin, kernel = (in_channels, patch) if i == 0 else (dims[i - 1], (2, 2, 2))
            groups = in_channels if i == 0 else dims[i - 1]
            self.downsample_layers.append(nn.Sequential(
                get_conv_layer(3, cin, dims[i], kernel_size=kernel, stride=kernel, conv_only=True),
                nn.GroupNorm(groups, dims[i]),
            ))
        self.stages = nn.ModuleList(
            nn.Sequential(*(EPABlock(grid_sizes[i], dims[i], ENCODER_PROJ[i], num_heads, dropout, convs, shared_ef)
                            for _ in range(depths[i])))
            for i in range(4)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        states = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            states.append(x)
        return states


class UnetrUpBlock(nn.Module):
    """Transposed-conv upsampling, skip addition, then EPA blocks (or one residual conv block, last stage)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: Sequence[int] | int, grid_size: int,
                 num_heads: int, convs: int, shared_ef: bool, dropout: float, depth: int = 3,
                 conv_decoder: bool = False, norm_name: str = "instance"):
        super().__init__()
        self.transp_conv = get_conv_layer(3, in_channels, out_channels, kernel_size=upsample, stride=upsample,
                                          conv_only=True, is_transposed=True)
        if conv_decoder:
            block: nn.Module = UnetResBlock(3, out_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name)
        else:
            block = nn.Sequential(*(EPABlock(grid_size, out_channels, DECODER_PROJ, num_heads, dropout, convs, shared_ef)
                                    for _ in range(depth)))
        self.decoder_block = nn.ModuleList([block])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.decoder_block[0](self.transp_conv(x) + skip)


class UNETRPlusPlus(nn.Module):
    """UNETR++ on ``[B, C, H, W, D]`` volumes.

    Args:
        in_channels: input channels.
        out_channels: classes (background included).
        img_size: ROI ``(H, W, D)`` in our axis order; internally ``(D, W, H)``, which must be divisible by
            ``8 * patch`` (Synapse: D by 16, W and H by 32).
        variant: ``"synapse"`` or ``"acdc"`` (:data:`VARIANTS`).
        feature_size: decoder width at full resolution; stage widths are ``2, 4, 8, 16`` times it.
        num_heads: attention heads of every EPA block.
        depths: EPA blocks per encoder stage.
        deep_supervision: in training mode return ``[full, 1/2, 1/4]`` resolution logits.
        in_scale, in_shift: the input is mapped to ``x * in_scale + in_shift`` first.

    Raises:
        ValueError: an ROI side not divisible as above, a width not divisible by the heads, or not four depths.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: Sequence[int], variant: str = "synapse",
                 feature_size: int = 16, num_heads: int = 4, depths: Sequence[int] = (3, 3, 3, 3),
                 deep_supervision: bool = False, in_scale: float = 1.0, in_shift: float = 0.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown UNETR++ variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if len(depths) != 4:
            raise ValueError(f"--unetrpp_depths needs four values (one per encoder stage), got {list(depths)}")
        cfg = VARIANTS[variant]
        patch = cfg["patch"]
        size = tuple(img_size)[::-1]  # (D, W, H): the authors' depth-first order
        multiple = tuple(8 * p for p in patch)
        if len(size) != 3 or any(s % m for s, m in zip(size, multiple)):
            need = multiple[::-1]
            raise ValueError(f"UNETR++ ({variant}) needs ROI sides (x, y, z) divisible by {need}, "
                             f"got roi {tuple(img_size)}")
        self.deep_supervision = deep_supervision
        self.in_scale, self.in_shift = float(in_scale), float(in_shift)
        dims = [feature_size * 2 ** (i + 1) for i in range(4)]
        grids = [tuple(s // p // 2 ** i for s, p in zip(size, patch)) for i in range(4)]
        tokens = [g[0] * g[1] * g[2] for g in grids]
        self.grid = grids[3]
        common = dict(num_heads=num_heads, convs=cfg["convs"], shared_ef=cfg["shared_ef"], dropout=cfg["dropout"])

        self.unetr_pp_encoder = UnetrPPEncoder(in_channels, dims, depths, tokens, patch=patch, **common)
        self.encoder1 = UnetResBlock(3, in_channels, feature_size, kernel_size=3, stride=1, norm_name="instance")
        self.decoder5 = UnetrUpBlock(dims[3], dims[2], 2, tokens[2], **common)
        self.decoder4 = UnetrUpBlock(dims[2], dims[1], 2, tokens[1], **common)
        self.decoder3 = UnetrUpBlock(dims[1], dims[0], 2, tokens[0], **common)
        self.decoder2 = UnetrUpBlock(dims[0], feature_size, patch, 0, conv_decoder=True, **common)
        self.out1 = UnetOutBlock(3, feature_size, out_channels)
        self.out2 = UnetOutBlock(3, dims[0], out_channels)  # deep supervision, 1/patch resolution
        self.out3 = UnetOutBlock(3, dims[1], out_channels)  # deep supervision, 1/(2 patch) resolution
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``[B, C, H, W, D]`` -> logits ``[B, K, H, W, D]``; with deep supervision in training mode a list
        ``[full, 1/2, 1/4]`` (coarser outputs at the decoder's resolutions)."""
        x = x.permute(0, 1, 4, 3, 2)  # [B, C, D, W, H]
        if self.in_scale != 1.0 or self.in_shift != 0.0:
            x = x * self.in_scale + self.in_shift
        enc1, enc2, enc3, enc4 = self.unetr_pp_encoder(x)
        conv = self.encoder1(x)
        dec3 = self.decoder5(enc4, enc3)
        dec2 = self.decoder4(dec3, enc2)
        dec1 = self.decoder3(dec2, enc1)
        out = self.out1(self.decoder2(dec1, conv)).permute(0, 1, 4, 3, 2)  # back to [B, K, H, W, D]
        if self.training and self.deep_supervision:
            return [out, self.out2(dec1).permute(0, 1, 4, 3, 2), self.out3(dec2).permute(0, 1, 4, 3, 2)]
        return out


def _init_weights(module: nn.Module) -> None:
    """The authors' initialisation: truncated normal (std 0.02) linear weights, zero biases, unit layer norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_unetrpp(in_channels: int, out_channels: int, img_size: Sequence[int], unetrpp_variant: str = "synapse",
                  unetrpp_feature_size: int = 16, unetrpp_num_heads: int = 4,
                  unetrpp_depths: Sequence[int] = (3, 3, 3, 3), unetrpp_deep_supervision: bool = False,
                  unetrpp_in_scale: float = 1.0, unetrpp_in_shift: float = 0.0) -> nn.Module:
    """:class:`UNETRPlusPlus` from the ``--unetrpp_*`` flags.

    Raises:
        ValueError: see :class:`UNETRPlusPlus`.
    """
    return UNETRPlusPlus(in_channels, out_channels, img_size, variant=unetrpp_variant,
                         feature_size=unetrpp_feature_size, num_heads=unetrpp_num_heads, depths=tuple(unetrpp_depths),
                         deep_supervision=unetrpp_deep_supervision, in_scale=unetrpp_in_scale,
                         in_shift=unetrpp_in_shift)
