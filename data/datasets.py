"""Registered datasets: what a ``--dataset`` name means.

A dataset entry holds its class names (index = label value), its default intensity
normalisation and the one structural difference between the paper's two datasets (ACDC
pads or crops to the ROI). Adding a dataset is one :class:`DatasetSpec` and one line in
:data:`DATASETS`; the command line takes its ``--dataset`` choices from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from utils.errors import UserError
from utils.options import lookup


@dataclass(frozen=True)
class DatasetSpec:
    """What the tool needs to know about a dataset.

    Args:
        name: the ``--dataset`` value.
        description: one line for ``--help``.
        class_names: class name per label value, background first; its length is the
            default ``--out_channels``.
        window: default ``(a_min, a_max)`` intensity window mapped to ``[b_min, b_max]``
            (CT in Hounsfield units), or ``None`` to scale each volume between its 0.5th
            and 99.5th intensity percentiles (MRI, whose intensities have no fixed unit).
        pad_to_roi: pad or crop every volume to the ROI (``ResizeWithPadOrCropd``), as the
            paper's release does for ACDC.
        layout: a dataset with its own file layout and geometry: an object with
            ``items(settings, split)``, ``transforms(settings, mode)`` and ``class_names(settings)``
            (:mod:`data.nnunet_raw`); ``None``: the Decathlon JSON list and MONAI's transforms.
    """

    name: str
    description: str
    class_names: tuple
    window: Optional[tuple] = None
    pad_to_roi: bool = False
    layout: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


SYNAPSE = DatasetSpec(
    name="btcv",
    description="Synapse multi-organ abdominal CT (nnFormer preprocessing), 13 organs",
    class_names=("background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver",
                 "stomach", "aorta", "IVC", "portal and splenic veins", "pancreas", "right adrenal",
                 "left adrenal"),
    window=(-175.0, 250.0),
)

ACDC = DatasetSpec(
    name="acdc",
    description="ACDC cardiac cine MRI: right ventricle, myocardium, left ventricle",
    class_names=("background", "RV", "myocardium", "LV"),
    window=None,
    pad_to_roi=True,
)

class _NnUNetLayout:
    """nnU-Net's raw layout (imported when used: it needs ``nnunetv2``)."""

    @staticmethod
    def items(settings, split):
        from data.nnunet_raw import nnunet_items

        return nnunet_items(settings, split)

    @staticmethod
    def transforms(settings, mode):
        from data.nnunet_raw import nnunet_transforms

        return nnunet_transforms(settings, mode)

    @staticmethod
    def class_names(settings):
        from data.nnunet_raw import nnunet_class_names

        return nnunet_class_names(settings)


NNUNET = DatasetSpec(
    name="nnunet",
    description="an nnU-Net v2 raw dataset (--data_dir nnUNet_raw/DatasetXXX_Name) in nnU-Net's geometry, the "
                "--nnunet_fold's validation cases of splits_final.json, with --nnunet_model_dir's plans",
    class_names=(),
    layout=_NnUNetLayout(),
)

DATASETS: dict[str, DatasetSpec] = {"btcv": SYNAPSE, "acdc": ACDC, "nnunet": NNUNET}


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``.

    Raises:
        UserError: unknown name (the message lists the registered ones).
    """
    return lookup(DATASETS, name, "--dataset", UserError)
