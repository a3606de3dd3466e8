"""MONAI bundles as a registered model (``--model_name bundle --bundle_dir DIR``).

A MONAI bundle (Project-MONAI model zoo layout) holds ``configs/inference.json`` (or ``.yaml``) and
``models/model.pt``. The network is the config's ``network_def``, instantiated by MONAI's own
``monai.bundle.ConfigParser``; the weights load strictly from ``models/model.pt`` (a state dict, read with
``torch.load(weights_only=True)``). What the bundle's ``preprocessing`` and ``inferer`` say becomes the
defaults of the flags the user left unset:

- ``ScaleIntensityRanged``: the intensity window ``a_min``/``a_max`` (our loader maps it to [0, 1]; the
  model maps [0, 1] on to the bundle's ``[b_min, b_max]`` inside, so attacks keep their usual epsilon);
- ``Spacingd``: ``pixdim`` -> ``--space_x/y/z``; ``Orientationd``: only RAS (our loader's) is accepted;
- the inferer's ``roi_size`` and ``overlap`` -> ``--roi_x/y/z`` and ``--infer_overlap``;
- ``network_def``'s ``in_channels``/``out_channels`` -> ``--in_channels``/``--out_channels``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.options import Option

OPTIONS = (
    Option("bundle_dir", str, None, "MONAI bundle folder (configs/inference.json|yaml, models/model.pt)"),
)
"""MONAI bundle flags."""

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def _config_path(bundle_dir: Optional[str]) -> str:
    if not bundle_dir:
        raise UserError("--model_name bundle needs --bundle_dir: a MONAI bundle folder holding configs/inference.json")
    for name in CONFIG_NAMES:
        path = os.path.join(bundle_dir, "configs", name)
        if os.path.isfile(path):
            return path
    raise UserError(f"no configs/inference.json (or .yaml) in {bundle_dir}; --bundle_dir must be a MONAI bundle folder")


def read_config(bundle_dir: Optional[str]):
    """The bundle's inference config, parsed by MONAI's ``ConfigParser`` (nothing instantiated yet).

    Raises:
        UserError: no bundle folder or config, or an unreadable config.
    """
    from monai.bundle import ConfigParser

    path = _config_path(bundle_dir)
    parser = ConfigParser()
    try:
        parser.read_config(path)
        meta = os.path.join(bundle_dir, "configs", "metadata.json")
        if os.path.isfile(meta):
            parser.read_meta(meta)
    except Exception as err:  # noqa: BLE001 - json/yaml/MONAI parse errors
        raise UserError(f"{path} is unreadable ({' '.join(str(err).split())[:300]})") from None
    parser["bundle_root"] = os.path.abspath(bundle_dir)
    return parser


def _transforms(parser) -> list[dict]:
    """The ``preprocessing`` transforms' config entries (a ``Compose``'s list, or a list)."""
    pre = parser.get("preprocessing")
    if isinstance(pre, dict):
        pre = pre.get("transforms", [])
    return [t for t in (pre or []) if isinstance(t, dict)]


def _find(transforms: list[dict], name: str) -> Optional[dict]:
    for t in transforms:
        target = str(t.get("_target_", ""))
        if target.split(".")[-1] == name:
            return t
    return None


def _resolved(parser, value):
    """A config value with ``@``/``$`` references evaluated by the parser."""
    if isinstance(value, str) and value[:1] in ("@", "$", "%"):
        from monai.bundle import ConfigParser

        scratch = ConfigParser(parser.get())
        scratch["_probe_"] = value
        return scratch.get_parsed_content("_probe_")
    return value


def _window(parser) -> Optional[dict]:
    scale = _find(_transforms(parser), "ScaleIntensityRanged") or _find(_transforms(parser), "ScaleIntensityRange")
    if scale is None:
        return None
    return {k: float(_resolved(parser, scale[k])) for k in ("a_min", "a_max", "b_min", "b_max") if k in scale}


class BundleModel(nn.Module):
    """A bundle's network on [0, 1] images: ``network(x * (b_max - b_min) + b_min)``.

    Args:
        network: the bundle's ``network_def`` with its weights.
        b_min, b_max: the range the bundle's ``ScaleIntensityRanged`` maps its window to.
    """

    def __init__(self, network: nn.Module, b_min: float = 0.0, b_max: float = 1.0):
        super().__init__()
        self.network = network
        self.b_min, self.b_max = float(b_min), float(b_max)

    def forward(self, x: torch.Tensor):
        """``[B, C, *roi]`` in [0, 1] -> the network's output (logits ``[B, K, *roi]``)."""
        if (self.b_min, self.b_max) != (0.0, 1.0):
            x = x * (self.b_max - self.b_min) + self.b_min
        return self.network(x)

    def extra_repr(self) -> str:
        return f"input range [{self.b_min:g}, {self.b_max:g}]"


def build_bundle(in_channels: int, out_channels: int, img_size: Sequence[int],
                 bundle_dir: Optional[str] = None) -> BundleModel:
    """The bundle's network with its weights (not read on the meta device, the parse-time check).

    Raises:
        UserError: no bundle, a config without ``network_def``, missing or unfitting weights.
    """
    parser = read_config(bundle_dir)
    if "network_def" not in parser.get():
        raise UserError(f"{_config_path(bundle_dir)} has no network_def")
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # noqa: BLE001 - MONAI raises several types for a bad component
        raise UserError(f"{bundle_dir}: network_def cannot be built ({' '.join(str(err).split())[:300]})") from None
    if not isinstance(network, nn.Module):
        raise UserError(f"{bundle_dir}: network_def is not a torch module ({type(network).__name__})")
    if torch.empty(0).device.type != "meta":
        path = os.path.join(bundle_dir, "models", "model.pt")
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: the bundle's weights (a TorchScript models/model.ts is not supported)")
        from .checkpoint import read_checkpoint

        with torch.device("cpu"):
            state = read_checkpoint(path)
        state = state.get("model", state) if isinstance(state.get("model"), dict) else state
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"{path} does not fit the bundle's network_def: {' '.join(str(err).split())[:400]}"
                            ) from None
    window = _window(parser) or {}
    return BundleModel(network, window.get("b_min", 0.0), window.get("b_max", 1.0))


def bundle_defaults(options: dict) -> dict[str, Any]:
    """Flag values the bundle's config decides (see the module docstring).

    Raises:
        UserError: no bundle or config, or an orientation other than RAS.
    """
    parser = read_config(options.get("bundle_dir"))
    defaults: dict[str, Any] = {}
    net = parser.get("network_def") or {}
    for key in ("in_channels", "out_channels"):
        if key in net:
            defaults[key] = int(_resolved(parser, net[key]))
    transforms = _transforms(parser)
    window = _window(parser)
    if window and "a_min" in window and "a_max" in window:
        defaults["a_min"], defaults["a_max"] = window["a_min"], window["a_max"]
    spacing = _find(transforms, "Spacingd")
    if spacing is not None and "pixdim" in spacing:
        pixdim = [float(v) for v in _resolved(parser, spacing["pixdim"])]
        defaults["space_x"], defaults["space_y"], defaults["space_z"] = pixdim[:3]
    orientation = _find(transforms, "Orientationd")
    if orientation is not None and str(_resolved(parser, orientation.get("axcodes", "RAS"))).upper() != "RAS":
        raise UserError(f"the bundle orients images to {orientation.get('axcodes')}; only RAS (the loader's) is "
                        "supported")
    inferer = parser.get("inferer") or {}
    if "roi_size" in inferer:
        roi = [int(v) for v in _resolved(parser, inferer["roi_size"])]
        defaults["roi_x"], defaults["roi_y"], defaults["roi_z"] = roi[:3]
    if "overlap" in inferer:
        defaults["infer_overlap"] = float(_resolved(parser, inferer["overlap"]))
    return defaults
