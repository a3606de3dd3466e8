"""nnU-Net v2 trained-model folders as a registered model (``--model_name nnunet``).

nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021; public code MIC-DKFZ/nnUNet, v2) writes a trained model as a folder
``nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/`` holding ``plans.json``,
``dataset.json`` and ``fold_K/checkpoint_final.pth`` (or ``checkpoint_best.pth``). This module builds that
model the way nnU-Net's own predictor (``nnUNetPredictor``) does and wraps it so that our attacks, which work
on images in [0, 1], attack the function nnU-Net deploys:

- the network comes from the plans through nnU-Net's own code (the trainer's ``build_network_architecture``,
  which for the default trainers is ``get_network_from_plans`` of ``dynamic_network_architectures``), deep
  supervision off; each fold's ``network_weights`` load strictly, read with ``torch.load(weights_only=True)``;
- the input map (:class:`NnUNetInputMap`) takes [0, 1] to the intensities the network was trained on:
  ``CTNormalization`` is a fixed affine map (the [0, 1] image is the CT clipped to the foreground 0.5/99.5
  percentiles, so ``x * (p99.5 - p0.5) + p0.5`` is the clipped CT, then ``(ct - mean) / max(std, 1e-8)``);
  ``ZScoreNormalization`` is a differentiable per-image z-score (invariant to the [0, 1] scaling);
- :class:`MirrorEnsemble` averages the logits of the folds and, with ``--tta mirror``, of every flip over the
  axes the checkpoint allows (``inference_allowed_mirroring_axes``), as ``nnUNetPredictor`` does, so an
  attack's gradient goes through the test-time augmentation;
- whole volumes are predicted with nnU-Net's Gaussian-weighted sliding window (:mod:`networks.inference`,
  ``--sw_blend nnunet``; the model's defaults select it).

Tensors are in nnU-Net's axis order (its arrays after ``transpose_forward``): ``--roi_x/y/z`` are the
configuration's patch size in that order.

``nnunetv2`` is needed only here; without it the model is refused with one line naming the install command.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.nnunet_plans import INSTALL_HINT, NnUNetFolder, require_nnunetv2  # noqa: F401 - re-exported
from utils.options import Option

logger = logging.getLogger(__name__)

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
"""The checkpoints nnU-Net writes into each ``fold_K`` folder."""

TTA_MODES = ("none", "mirror")
"""``--tta`` values: no test-time augmentation, or nnU-Net's mirroring average."""

OPTIONS = (
    Option("nnunet_model_dir", str, None, "nnU-Net trained-model folder (<Trainer>__<Plans>__<configuration>, "
           "holding plans.json, dataset.json and fold_K/)"),
    Option("nnunet_fold", str, ("0",), "nnU-Net folds whose logits are averaged into one model (K ... or all)",
           nargs="+"),
    Option("nnunet_checkpoint", str, "checkpoint_final.pth", "nnU-Net checkpoint file of each fold",
           choices=CHECKPOINTS),
    Option("tta", str, "none", "test-time augmentation inside the attacked model: none, or mirror (nnU-Net's "
           "average over the flips its checkpoint allows; attacks then differentiate through it)",
           choices=TTA_MODES),
)
"""nnU-Net flags."""

EPS = 1e-8
"""nnU-Net's floor on a standard deviation in float32 normalisation."""


class NnUNetInputMap(nn.Module):
    """[0, 1] images -> the intensities an nnU-Net network was trained on, channel by channel.

    A ``CTNormalization`` channel is affine: ``x * scale + shift`` with ``scale = (p99.5 - p0.5) / std`` and
    ``shift = (p0.5 - mean) / std`` (std floored at 1e-8), exact for images that are the CT clipped to
    ``[p0.5, p99.5]`` and scaled to [0, 1]. A ``ZScoreNormalization`` channel is z-scored over each image's
    voxels (population std, floored at 1e-8), which no affine scaling of the input changes.

    Args:
        scale, shift: ``[C]`` affine maps (1 and 0 for z-scored channels).
        zscore: ``[C]`` booleans, the channels z-scored per image.
    """

    def __init__(self, scale: Sequence[float], shift: Sequence[float], zscore: Sequence[bool]):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("zscore", torch.tensor(zscore, dtype=torch.bool).view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W, D]`` in [0, 1] -> ``[B, C, H, W, D]`` normalised."""
        if x.shape[1] != self.scale.shape[1]:
            raise ValueError(f"the nnU-Net model takes {self.scale.shape[1]} channel(s), got input of shape "
                             f"{tuple(x.shape)}")
        out = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if bool(self.zscore.any()):
            mean = x.mean(dim=(2, 3, 4), keepdim=True)
            std = x.var(dim=(2, 3, 4), unbiased=False, keepdim=True).sqrt().clamp_min(EPS)
            out = torch.where(self.zscore, (x - mean) / std, out)
        return out

    @classmethod
    def from_folder(cls, folder: NnUNetFolder) -> "NnUNetInputMap":
        """The map of the folder's configuration (``normalization_schemes``, intensity properties).

        Raises:
            UserError: a scheme other than CT or z-score normalisation, or z-score inside a mask.
        """
        schemes = folder.config["normalization_schemes"]
        masked = folder.config.get("use_mask_for_norm", [False] * len(schemes))
        scale, shift, zscore = [], [], []
        for channel, scheme in enumerate(schemes):
            if scheme == "CTNormalization":
                props = folder.intensity_properties(channel)
                lo, hi = float(props["percentile_00_5"]), float(props["percentile_99_5"])
                std = max(float(props["std"]), EPS)
                scale.append((hi - lo) / std)
                shift.append((lo - float(props["mean"])) / std)
                zscore.append(False)
            elif scheme == "ZScoreNormalization":
                if masked[channel]:
                    raise UserError(f"{folder.path}: channel {channel} is z-scored inside the nonzero mask "
                                    "(use_mask_for_norm); that normalisation is not supported yet")
                scale.append(1.0)
                shift.append(0.0)
                zscore.append(True)
            else:
                raise UserError(f"{folder.path}: channel {channel} uses {scheme}; supported: CTNormalization, "
                                "ZScoreNormalization")
        return cls(scale, shift, zscore)


class MirrorEnsemble(nn.Module):
    """The mean logits of several networks (folds), each averaged over mirrored copies of its input.

    ``nnUNetPredictor`` sums ``net(x)`` and ``flip(net(flip(x, axes)), axes)`` over every non-empty
    combination of the allowed mirroring axes and divides by their count, per fold, then averages the
    folds; both are linear, so this module's mean is the same function.

    Args:
        networks: one network per fold, ``[B, C, *patch] -> [B, K, *patch]``.
        mirror_axes: spatial axes (0-based) to mirror over, or ``None``/``()`` for no mirroring.
    """

    def __init__(self, networks: Sequence[nn.Module], mirror_axes: Optional[Sequence[int]] = None):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        axes = [a + 2 for a in (mirror_axes or ())]
        self.flips = [()] + [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *patch]`` normalised -> ``[B, K, *patch]`` mean logits."""
        total = None
        for network in self.networks:
            for axes in self.flips:
                out = network(torch.flip(x, axes)) if axes else network(x)
                out = torch.flip(out, axes) if axes else out
                total = out if total is None else total + out
        return total / (len(self.networks) * len(self.flips))

    def extra_repr(self) -> str:
        return f"folds={len(self.networks)}, passes_per_fold={len(self.flips)}"


class NnUNetModel(nn.Module):
    """An nnU-Net trained model on [0, 1] images: ``network(input_map(x))``.

    The two parts are attributes so that whole-volume prediction can normalise the whole volume first
    and slide only ``network``, as nnU-Net does (:func:`networks.inference.nnunet_sliding_window`).

    Args:
        input_map: [0, 1] -> normalised intensities.
        network: normalised patches -> logits (folds and mirroring averaged).
        folder: what the model folder says (class names, spacing ...), kept for reference.
    """

    def __init__(self, input_map: NnUNetInputMap, network: MirrorEnsemble, folder: Optional[NnUNetFolder] = None):
        super().__init__()
        self.input_map = input_map
        self.network = network
        self.folder = folder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *roi]`` in [0, 1] -> ``[B, K, *roi]`` logits."""
        return self.network(self.input_map(x))


def _on_meta_device() -> bool:
    return torch.empty(0).device.type == "meta"


def _read_fold(folder: NnUNetFolder, fold: str, checkpoint: str) -> dict:
    from .checkpoint import read_checkpoint

    path = folder.checkpoint_path(fold, checkpoint)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; check --nnunet_fold and --nnunet_checkpoint (folds present: "
                        f"{sorted(d[5:] for d in os.listdir(folder.path) if d.startswith('fold_'))})")
    with torch.device("cpu"):
        ckpt = read_checkpoint(path)
    if "network_weights" not in ckpt:
        raise UserError(f"{path} holds no network_weights; expected a checkpoint written by an nnU-Net trainer")
    return ckpt


def build_network(folder: NnUNetFolder, trainer_name: str, in_channels: int, out_channels: int) -> nn.Module:
    """The network of the folder's configuration, built by nnU-Net's own code, deep supervision off.

    The trainer class ``trainer_name`` builds it when ``nnunetv2`` knows that class (custom trainers may
    change the architecture); otherwise the plans' architecture through ``get_network_from_plans``.
    """
    require_nnunetv2()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans_manager = folder.plans_manager()
    config = plans_manager.get_configuration(folder.configuration)
    try:
        trainer = recursive_find_trainer_class_by_name(trainer_name)
    except Exception:  # noqa: BLE001 - nnunetv2 raises RuntimeError for an unknown trainer
        trainer = None
    if trainer is not None:
        return trainer.build_network_architecture(plans_manager, config, in_channels, out_channels,
                                                  enable_deep_supervision=False)
    logger.warning("trainer %s is not known to nnunetv2; building the plans' architecture", trainer_name)
    return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                  config.network_arch_init_kwargs_req_import, in_channels, out_channels,
                                  allow_init=False, deep_supervision=False)


def build_nnunet(in_channels: int, out_channels: int, img_size: Sequence[int], nnunet_model_dir: Optional[str] = None,
                 nnunet_fold: Sequence[str] = ("0",), nnunet_checkpoint: str = "checkpoint_final.pth",
                 tta: str = "none") -> NnUNetModel:
    """The trained nnU-Net model of ``nnunet_model_dir`` (folds averaged, weights loaded).

    On the meta device (the command line's parse-time check) the checkpoints are not read.

    Raises:
        UserError: missing ``nnunetv2``, folder or checkpoint; channel or class counts other than the
            folder's; a ROI other than the patch size; weights that do not fit the network (strict load).
    """
    folder = NnUNetFolder.read(nnunet_model_dir)
    expected_in, expected_out = len(folder.channel_names), len(folder.class_names)
    if (in_channels, out_channels) != (expected_in, expected_out):
        raise UserError(f"the nnU-Net model in {folder.path} takes {expected_in} channel(s) and predicts "
                        f"{expected_out} classes, got --in_channels {in_channels} --out_channels {out_channels} "
                        "(leave both unset to take the folder's)")
    if tuple(img_size) != folder.patch_size:
        raise UserError(f"the nnU-Net configuration's patch size is {folder.patch_size}, got ROI {tuple(img_size)}; "
                        "leave --roi_x/--roi_y/--roi_z unset to take it")
    folds = [str(f) for f in nnunet_fold]
    if len(set(folds)) != len(folds):
        raise UserError(f"--nnunet_fold lists a fold twice: {folds}")
    meta = _on_meta_device()
    checkpoints = [] if meta else [_read_fold(folder, fold, nnunet_checkpoint) for fold in folds]
    trainer_name = checkpoints[0].get("trainer_name", folder.trainer) if checkpoints else folder.trainer
    networks = []
    for fold, ckpt in itertools.zip_longest(folds, checkpoints):
        network = build_network(folder, trainer_name, in_channels, out_channels)
        if ckpt is not None:
            try:
                network.load_state_dict(ckpt["network_weights"], strict=True)
            except RuntimeError as err:
                raise UserError(f"{folder.checkpoint_path(fold, nnunet_checkpoint)} does not fit the network of "
                                f"plans.json: {' '.join(str(err).split())[:400]}") from None
        networks.append(network)
    mirror_axes = None
    if tta == "mirror":
        mirror_axes = checkpoints[0].get("inference_allowed_mirroring_axes") if checkpoints else None
        if mirror_axes is None:
            mirror_axes = tuple(range(len(folder.patch_size)))  # nnU-Net's default: every spatial axis
    return NnUNetModel(NnUNetInputMap.from_folder(folder), MirrorEnsemble(networks, mirror_axes), folder)


def folder_defaults(options: dict) -> dict[str, Any]:
    """Command-line values the folder decides, for flags the user left unset.

    Channels, classes, ROI (the patch size), spacing, the intensity window of a CT model (its foreground
    0.5/99.5 percentiles; for z-scored channels the data's own scaling, since the z-score ignores it),
    nnU-Net's sliding window (Gaussian blending, step 0.5).

    Raises:
        UserError: the folder cannot be read.
    """
    folder = NnUNetFolder.read(options.get("nnunet_model_dir"))
    roi, spacing = folder.patch_size, folder.spacing
    if len(roi) != 3:
        raise UserError(f"{folder.path}: configuration {folder.configuration!r} is {len(roi)}D; only 3D "
                        "configurations are supported")
    defaults: dict[str, Any] = dict(in_channels=len(folder.channel_names), out_channels=len(folder.class_names),
                                    roi_x=roi[0], roi_y=roi[1], roi_z=roi[2], space_x=spacing[0],
                                    space_y=spacing[1], space_z=spacing[2], infer_overlap=0.5, sw_blend="nnunet")
    window = folder.intensity_window(0)
    if window is not None:
        defaults["a_min"], defaults["a_max"] = window
    return defaults
