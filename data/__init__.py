"""Datasets: the registry of ``--dataset`` names, Decathlon lists, transforms, loaders, phantom data."""

from .datasets import DATASETS, DatasetSpec, get_dataset
from .loading import DataSettings, build_loader, build_transforms, class_names, load_datalist, plain_tensor

__all__ = [
    "DATASETS",
    "DataSettings",
    "DatasetSpec",
    "build_loader",
    "build_transforms",
    "class_names",
    "get_dataset",
    "load_datalist",
    "plain_tensor",
]
