"""The attack registry and the typed settings of one configured attack.

Each attack class carries its identity (``name``, ``options``, run-folder and summary
formats; see :class:`attacks.base.Attack`). Registering an attack is one line in
:data:`ATTACKS`; the command line takes its ``--attack_name`` choices, flags, folder
names and summaries from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Type

import torch
import torch.nn as nn

from utils.options import Option, collect_options, lookup

from .base import Attack, LossFn, attack_labels
from .apgd import APGD
from .cospgd import CosPGD
from .ensemble import WorstCase
from .segpgd import SegPGD
from .tiling import attack_volume
from .vafa import VAFA2D, VAFA3D
from .voxel import BIM, FGSM, PGD, GaussianNoise

ATTACKS: Dict[str, Type[Attack]] = {
    cls.name: cls for cls in (VAFA3D, VAFA2D, PGD, FGSM, BIM, GaussianNoise, SegPGD, CosPGD, APGD, WorstCase)
}


def get_attack_class(name: str) -> Type[Attack]:
    """The attack class registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    return lookup(ATTACKS, name, "attack")


def attack_options(name: str) -> tuple:
    """Names of the keyword arguments (after ``model`` and ``loss_fn``) attack ``name`` takes."""
    return tuple(option.keyword or option.name for option in get_attack_class(name).options)


def all_attack_options() -> list[Option]:
    """Every registered attack's options, each once (the command line's attack flags)."""
    return collect_options(cls.options for cls in ATTACKS.values())


def preset_values(name: str) -> dict:
    """Flag values of attack ``name`` at its paper setting, ``attack_name`` included (:attr:`Attack.presets`):
    ``preset_values("vafa-2d") == {"attack_name": "vafa-2d", "q_max": 20, "block_size": (8, 8)}``."""
    return {"attack_name": name, **get_attack_class(name).presets}


def preset_flags(name: str) -> tuple:
    """The command-line flags of attack ``name`` at its paper setting (:attr:`Attack.presets`).

    ``preset_flags("vafa-2d") == ("--attack_name", "vafa-2d", "--q_max", "20", "--block_size", "8", "8")``;
    a switch is present when true and left out when false.
    """
    flags: tuple = ("--attack_name", name)
    for key, value in get_attack_class(name).presets.items():
        if isinstance(value, bool):
            flags += (f"--{key}",) if value else ()
        elif isinstance(value, (tuple, list)):
            flags += (f"--{key}", *(str(v) for v in value))
        else:
            flags += (f"--{key}", str(value))
    return flags


def build_attack(name: str, model: Optional[nn.Module], loss_fn: Optional[LossFn], **cfg) -> Attack:
    """Build the attack registered as ``name`` from constructor values (``eps`` in [0, 1] units).

    Args:
        name: a key of ``ATTACKS``.
        model: segmentation network.
        loss_fn: ``loss_fn(logits, labels) -> scalar`` (ignored by ``gn``).
        **cfg: exactly that attack's keyword arguments (see :func:`attack_options`).

    Raises:
        ValueError: unknown name, or invalid argument values.
        TypeError: a keyword the attack does not take.
    """
    cls = get_attack_class(name)
    options = attack_options(name)
    unknown = sorted(set(cfg) - set(options))
    if unknown:
        raise TypeError(f"attack {name!r} takes keyword arguments {list(options)}, got unexpected {unknown}")
    return cls(model, loss_fn, **cfg)


@dataclass(frozen=True)
class AttackSettings:
    """One configured attack, typed: what the scripts hand to generation and training.

    Args:
        name: registry name.
        values: the attack's option values as typed (``eps=4.0`` on the [0, 255] scale);
            folder names print them as the release did.
        target_class: with a targeted attack, the class every voxel is pushed to.
        batch_size: ROI tiles attacked together on whole volumes.
    """

    name: str
    values: Mapping[str, Any] = field(default_factory=dict)
    target_class: int = 0
    batch_size: int = 6

    @property
    def attack_class(self) -> Type[Attack]:
        return get_attack_class(self.name)

    @property
    def targeted(self) -> bool:
        return bool(self.values.get("targeted", False))

    def build(self, model: Optional[nn.Module], loss_fn: Optional[LossFn]) -> Attack:
        """The attack object.

        Raises:
            ValueError: a value the attack refuses.
        """
        return self.attack_class.from_values(model, loss_fn, self.values)

    def validate(self, roi: Sequence[int]) -> None:
        """Check the values (and that the attack can work on ``roi`` tiles) without a model.

        Raises:
            ValueError: names the offending value.
        """
        self.build(None, None).check_tile(roi)

    def folder_name(self) -> str:
        """The run folder's name: the release's names, one spelling per value, and
        ``_targeted_<class>`` for a targeted attack (the release named it as the untargeted one)."""
        return self.folder_names()[0]

    def folder_names(self) -> list:
        """:meth:`folder_name` first, then the other spellings older runs used for the same settings."""
        suffix = f"_targeted_{self.target_class}" if self.targeted else ""
        return [name + suffix for name in self.attack_class.folder_names(self.values)]

    def summary(self) -> str:
        return self.attack_class.summary(self.values)

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """What the attack is given as labels: true labels, or the target class when targeted."""
        return attack_labels(labels, self.target_class if self.targeted else None)

    def attack_volume(self, attack: Attack, image: torch.Tensor, label: torch.Tensor, roi: Sequence[int],
                      progress: bool = False, candidates: Optional[dict] = None,
                      offered: Optional[Callable] = None) -> torch.Tensor:
        """Attack a whole volume ``[1, C, H, W, D]`` tile by tile (:func:`attacks.tiling.attack_volume`);
        ``offered`` defaults to ``attack.call_candidates`` (pass it when ``attack`` wraps an ``Attack``)."""
        if offered is None:
            offered = getattr(attack, "call_candidates", None)
        return attack_volume(image, self.labels(label), attack, roi, self.batch_size, progress=progress,
                             candidates=candidates, offered=offered)
