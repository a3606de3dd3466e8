"""Registered segmentation networks: ``--model_name`` -> builder and the flags it takes.

Adding a model is one module with a builder
``build(in_channels, out_channels, img_size, **options) -> nn.Module`` and its tuple of
:class:`utils.options.Option`, plus one line in :data:`MODELS`. The command line adds the
declared flags and passes each model only the options it declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch.nn as nn

from utils.errors import UserError
from utils.options import Option, constructor_kwargs, lookup

from . import bundle, checkpoint, monai_zoo, nnunet, unetr, unetrpp


@dataclass(frozen=True)
class ModelEntry:
    """A registered network: its builder and the options (flags) the builder takes.

    ``defaults(options) -> {flag: value}``, when given, supplies values of model-independent flags
    (``in_channels``, ``roi_x``, ``space_x``, ``a_min``, ``sw_blend`` ...) that the user left unset, from
    what the model's own options point at (a trained-model folder). ``loads_weights``: the builder
    loads the trained weights itself (no ``--pretrained_path``). ``reference_roi``: the ROI (x, y, z)
    the model is usually trained at (its paper's or tutorial's crop), where benchmarks time it.
    """

    build: Callable[..., nn.Module]
    options: tuple = ()
    description: str = ""
    defaults: Optional[Callable[[Mapping[str, Any]], dict]] = None
    loads_weights: bool = False
    reference_roi: tuple = (96, 96, 96)


MODELS: dict[str, ModelEntry] = {
    "unet-r": ModelEntry(unetr.build_unetr, unetr.OPTIONS, "UNETR (the paper's release)"),
    "unetr++": ModelEntry(unetrpp.build_unetrpp, unetrpp.OPTIONS, "UNETR++ (Shaker et al., IEEE TMI 2024)",
                          reference_roi=(128, 128, 64)),  # the authors' Synapse crop 64x128x128 (depth first)
    "swin-unetr": ModelEntry(monai_zoo.build_swin_unetr, monai_zoo.SWIN_OPTIONS, "MONAI SwinUNETR"),
    "segresnet": ModelEntry(monai_zoo.build_segresnet, monai_zoo.SEGRESNET_OPTIONS, "MONAI SegResNet"),
    "unet": ModelEntry(monai_zoo.build_unet, monai_zoo.UNET_OPTIONS, "MONAI UNet (residual units)"),
    "nnunet": ModelEntry(nnunet.build_nnunet, nnunet.OPTIONS, "an nnU-Net v2 trained-model folder (--nnunet_model_dir)",
                         defaults=nnunet.folder_defaults, loads_weights=True),
    "bundle": ModelEntry(bundle.build_bundle, bundle.OPTIONS, "a MONAI bundle's network_def and weights (--bundle_dir)",
                         defaults=bundle.bundle_defaults, loads_weights=True),
}


def get_model_entry(name: str) -> ModelEntry:
    """The registered model ``name``.

    Raises:
        UserError: unknown name (the message lists the registered ones).
    """
    return lookup(MODELS, name, "--model_name", UserError)


@dataclass(frozen=True)
class ModelSettings:
    """Which network to build, typed: its name, channel counts, ROI and its own options
    (values as typed on the command line, only those the model declares)."""

    name: str = "unet-r"
    in_channels: int = 1
    out_channels: int = 14
    roi: tuple = (96, 96, 96)
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """Build the network (random weights).

        Raises:
            UserError: unknown model or inconsistent sizes.
        """
        return build_model(self.name, self.in_channels, self.out_channels, self.roi, **self.options)

    def flags(self) -> dict:
        """The command-line flags these settings came from (``model_name``, ``roi_x`` ... and the
        model's own options), as a training run records them in its checkpoints."""
        roi = dict(zip(("roi_x", "roi_y", "roi_z"), self.roi))
        return {"model_name": self.name, "in_channels": self.in_channels, "out_channels": self.out_channels,
                **roi, **self.options}


def build_model(name: str, in_channels: int, out_channels: int, img_size: Sequence[int], **options) -> nn.Module:
    """Build the network registered as ``name``; ``options`` are its declared options.

    Raises:
        UserError: unknown name, an option the model does not declare, or values its
            builder refuses.
    """
    entry = get_model_entry(name)
    declared = {option.name for option in entry.options}
    unknown = sorted(set(options) - declared)
    if unknown:
        raise UserError(f"model {name!r} takes options {sorted(declared)}, got unexpected {unknown}")
    kwargs = constructor_kwargs([o for o in entry.options if o.name in options], options)
    try:
        return entry.build(in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size), **kwargs)
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise UserError(str(err)) from None


def model_options() -> list[Option]:
    """Every registered model's options, each once (the command line's model flags)."""
    from utils.options import collect_options

    return collect_options(entry.options for entry in MODELS.values())


def model_flags_hint() -> str:
    """What to check when a checkpoint does not fit: each registered model's own flags, from the registry."""
    per_model = "; ".join(f"{name}: {'/'.join('--' + o.name for o in entry.options) or 'none'}"
                          for name, entry in MODELS.items())
    return ("the checkpoint looks like another architecture or other model flags; check "
            f"--model_name/--in_channels/--out_channels, the model's own flags ({per_model}) and "
            "--roi_x/--roi_y/--roi_z (some models' weights depend on the ROI) against the run that saved it")


def load_model_weights(model: nn.Module, path_or_ckpt, **kwargs) -> dict:
    """:func:`networks.checkpoint.load_model_weights`; when the weights do not fit, the message also names
    each registered model's own flags to check (:func:`model_flags_hint`).

    Raises:
        UserError: as :func:`networks.checkpoint.load_model_weights`.
    """
    try:
        return checkpoint.load_model_weights(model, path_or_ckpt, **kwargs)
    except checkpoint.WeightsMismatch as err:
        raise UserError(f"{err}; {model_flags_hint()}") from None
