"""Registered datasets: what a ``--dataset`` name means.

A dataset entry holds its class names (index = label value), its default intensity
normalisation and the one structural difference between the paper's two datasets (ACDC
pads or crops to the ROI). Adding a dataset is one :class:`DatasetSpec` and one line in
:data:`DATASETS`; the command line takes its ``--dataset`` choices from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    """

    name: str
    description: str
    class_names: tuple
    window: Optional[tuple] = None
    pad_to_roi: bool = False

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

DATASETS: dict[str, DatasetSpec] = {"btcv": SYNAPSE, "acdc": ACDC}


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``.

    Raises:
        UserError: unknown name (the message lists the registered ones).
    """
    return lookup(DATASETS, name, "--dataset", UserError)
