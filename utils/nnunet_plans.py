"""What an nnU-Net v2 trained-model folder says: ``plans.json``, ``dataset.json``, its configuration.

Shared by the nnU-Net model (:mod:`networks.nnunet`) and nnU-Net's raw dataset layout
(:mod:`data.nnunet_raw`). ``nnunetv2`` is imported only where its own code is used
(:func:`require_nnunetv2` names the install command when it is missing).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from utils.errors import UserError

INSTALL_HINT = "pip install 'nnunetv2>=2.8,<2.9'"


def require_nnunetv2():
    """Import ``nnunetv2``.

    Raises:
        UserError: the package is missing (the message names the install command).
    """
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise UserError(f"--model_name nnunet needs the nnunetv2 package, which is not installed: {INSTALL_HINT}"
                        ) from None
    return nnunetv2


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; --nnunet_model_dir must be an nnU-Net trained-model folder "
                        "(<Trainer>__<Plans>__<configuration> holding plans.json, dataset.json, fold_K/)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err})") from None


@dataclass(frozen=True)
class NnUNetFolder:
    """What a trained-model folder says, read once: plans, dataset description, configuration.

    Args:
        path: the folder.
        plans: ``plans.json``.
        dataset: ``dataset.json``.
        configuration: the configuration's name (``3d_fullres`` ...).
        trainer: the trainer class name (from the folder name; a checkpoint's own name wins when read).
    """

    path: str
    plans: dict
    dataset: dict
    configuration: str
    trainer: str

    @classmethod
    def read(cls, path: Optional[str]) -> "NnUNetFolder":
        """Read ``plans.json`` and ``dataset.json`` of ``path``.

        Raises:
            UserError: no folder given, a file missing or unreadable, or a configuration the plans lack.
        """
        if not path:
            raise UserError("--model_name nnunet needs --nnunet_model_dir: the trained-model folder "
                            "(nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>)")
        path = os.path.abspath(path)
        plans = _read_json(os.path.join(path, "plans.json"))
        dataset = _read_json(os.path.join(path, "dataset.json"))
        parts = os.path.basename(os.path.normpath(path)).split("__")
        if len(parts) != 3:
            raise UserError(f"{path}: an nnU-Net trained-model folder is named <Trainer>__<Plans>__<configuration>, "
                            f"got {os.path.basename(path)!r}")
        trainer, _, configuration = parts
        if configuration not in plans.get("configurations", {}):
            raise UserError(f"{path}: configuration {configuration!r} is not in plans.json (has "
                            f"{sorted(plans.get('configurations', {}))})")
        return cls(path, plans, dataset, configuration, trainer)

    @property
    def config(self) -> dict:
        """The configuration's entry of the plans, with ``inherits_from`` resolved by nnU-Net's own code."""
        return self.plans_manager().get_configuration(self.configuration).configuration

    def plans_manager(self):
        require_nnunetv2()
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    @property
    def patch_size(self) -> tuple:
        return tuple(int(p) for p in self.config["patch_size"])

    @property
    def spacing(self) -> tuple:
        return tuple(float(s) for s in self.config["spacing"])

    @property
    def channel_names(self) -> list:
        names = self.dataset.get("channel_names", self.dataset.get("modality"))
        if not names:
            raise UserError(f"{self.path}/dataset.json has no channel_names")
        return [names[k] for k in sorted(names, key=int)]

    @property
    def class_names(self) -> list:
        """Class names by label value (``dataset.json``'s ``labels``: name -> consecutive integers from 0)."""
        labels = self.dataset.get("labels", {})
        if any(not isinstance(v, int) for v in labels.values()):
            raise UserError(f"{self.path}: region-based labels (a label mapped to several values) are not supported; "
                            "the attacks need one class per output channel")
        by_value = {v: k for k, v in labels.items() if k != "ignore"}
        if sorted(by_value) != list(range(len(by_value))):
            raise UserError(f"{self.path}/dataset.json: labels must be consecutive integers from 0, got "
                            f"{sorted(by_value)}")
        return [by_value[v] for v in range(len(by_value))]

    def intensity_properties(self, channel: int) -> dict:
        props = self.plans.get("foreground_intensity_properties_per_channel", {})
        if str(channel) not in props:
            raise UserError(f"{self.path}/plans.json has no foreground_intensity_properties_per_channel[{channel}]")
        return props[str(channel)]

    def intensity_window(self, channel: int = 0) -> Optional[tuple]:
        """``(a_min, a_max)`` of a CT-normalised channel (its foreground 0.5/99.5 percentiles), else ``None``."""
        if self.config["normalization_schemes"][channel] != "CTNormalization":
            return None
        props = self.intensity_properties(channel)
        return float(props["percentile_00_5"]), float(props["percentile_99_5"])

    def checkpoint_path(self, fold: str, checkpoint: str) -> str:
        return os.path.join(self.path, f"fold_{fold}", checkpoint)
