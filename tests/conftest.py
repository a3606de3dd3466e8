"""Shared fixtures: a tiny synthetic Synapse-layout dataset and the data flags for it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from data.loading import load_datalist
from data.phantom import write_phantom_dataset

#: Geometry of the tiny dataset. The spacing equals the flags' spacing below, so
#: ``Spacingd`` keeps the grid; after ``CropForegroundd`` every case is still at
#: least as large as ``TINY_ROI`` (the body fills > 70% of each in-plane side).
TINY_SHAPE = (48, 48, 24)
TINY_SPACING = (1.5, 1.5, 2.0)
TINY_ROI = (32, 32, 16)


@dataclass(frozen=True)
class TinyDataset:
    """A phantom dataset on disk (3 training + 2 validation cases).

    ``data_dir`` and ``json_name`` are what ``--data_dir`` and ``--json_list`` take.
    """

    data_dir: str
    json_name: str
    json_path: str
    shape: tuple = TINY_SHAPE
    spacing: tuple = TINY_SPACING
    roi: tuple = TINY_ROI
    n_train: int = 3
    n_val: int = 2
    out_channels: int = 14

    @property
    def json_list(self) -> str:
        """Same as ``json_name`` (the flag's name)."""
        return self.json_name

    @property
    def training(self) -> list[dict]:
        """``load_datalist`` items of the training split (absolute paths, ``name``)."""
        return load_datalist(self.data_dir, self.json_name, "training")

    @property
    def validation(self) -> list[dict]:
        """``load_datalist`` items of the validation split."""
        return load_datalist(self.data_dir, self.json_name, "validation")

    @property
    def flags(self) -> list[str]:
        """Command-line flags that point a script at this dataset with a small ROI."""
        return [
            "--data_dir", self.data_dir, "--json_list", self.json_name, "--dataset", "btcv",
            "--roi_x", str(self.roi[0]), "--roi_y", str(self.roi[1]), "--roi_z", str(self.roi[2]),
            "--space_x", str(self.spacing[0]), "--space_y", str(self.spacing[1]), "--space_z", str(self.spacing[2]),
            "--workers", "0",
        ]

    def args(self, **overrides) -> argparse.Namespace:
        """Namespace with every data flag ``data.loading`` reads (the release's defaults, small ROI)."""
        values = dict(
            dataset="btcv", data_dir=self.data_dir, json_list=self.json_name,
            a_min=-175.0, a_max=250.0, b_min=0.0, b_max=1.0,
            space_x=self.spacing[0], space_y=self.spacing[1], space_z=self.spacing[2],
            roi_x=self.roi[0], roi_y=self.roi[1], roi_z=self.roi[2],
            RandFlipd_prob=0.2, RandRotate90d_prob=0.2, RandScaleIntensityd_prob=0.1, RandShiftIntensityd_prob=0.1,
            workers=0, batch_size=1, use_normal_dataset=False, crop_sampling="posneg", gen_train_adv_mode=False, out_channels=14,
            nnunet_model_dir=None, nnunet_fold=("0",), nnunet_cases="fold",
        )
        values.update(overrides)
        return argparse.Namespace(**values)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> TinyDataset:
    """Phantom CT dataset: ``data_dir/imagesTr``, ``labelsTr``, ``dataset.json``; shape 48x48x24.

    Session-scoped and shared: treat it as read-only.
    """
    root = str(tmp_path_factory.mktemp("tiny_synapse"))
    json_path = write_phantom_dataset(root, n_train=3, n_val=2, shape=TINY_SHAPE, spacing=TINY_SPACING, seed=0)
    return TinyDataset(data_dir=root, json_name="dataset.json", json_path=json_path)


@pytest.fixture
def data_args(tiny_dataset) -> argparse.Namespace:
    """Fresh data-flag namespace for the tiny dataset (safe to modify)."""
    return tiny_dataset.args()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: several times faster on a shared CPU, and
    bit-reproducible (sums in one fixed order)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
