"""The phantom's cases in nnU-Net v2's raw layout, for nnU-Net's own planning, training and predictor
(the tests' and ``scripts/nnunet_oracle.py``'s reference runs)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from utils.io import save_nifti, write_json

from .phantom import DEFAULT_SHAPE, DEFAULT_SPACING, LABEL_NAMES, check_spacing, make_phantom_case, phantom_affine


def write_nnunet_raw_dataset(out_dir: str, n_cases: int = 4, shape: Sequence[int] = DEFAULT_SHAPE,
                             spacings: Sequence[Sequence[float]] = (DEFAULT_SPACING,), seed: int = 0,
                             organs: Sequence[int] | None = None, channels: int = 1) -> str:
    """Phantom CT cases in nnU-Net v2's raw layout: ``imagesTr/case_XXXX_0000.nii.gz``, ``labelsTr/``,
    ``dataset.json`` (``channel_names``, ``labels`` name -> value, ``file_ending``).

    With ``channels=2`` each case also gets ``case_XXXX_0001.nii.gz``, an MR-like second channel (the CT
    through a square root on another scale, plus noise), named ``T1`` so that nnU-Net z-scores it per image
    while it normalises channel 0 as CT.

    Args:
        out_dir: the dataset folder (``nnUNet_raw/DatasetXXX_Name``); created if missing.
        n_cases: cases written.
        shape: volume size ``(H, W, D)`` in voxels.
        spacings: voxel sizes, used in turn (case ``i`` gets ``spacings[i % len(spacings)]``).
        seed: random seed (case ``i`` is drawn as in :func:`write_phantom_dataset`).
        organs: phantom label values kept, relabelled 1, 2, ... in this order (others become
            background); ``None`` keeps all 13 organs.
        channels: 1 (CT) or 2 (CT and the MR-like channel).

    Returns:
        ``out_dir``.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    organs = list(range(1, len(LABEL_NAMES))) if organs is None else list(organs)
    lookup = np.zeros(len(LABEL_NAMES), np.uint8)
    lookup[organs] = np.arange(1, len(organs) + 1)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    for index in range(n_cases):
        spacing = check_spacing(spacings[index % len(spacings)])
        image, label = make_phantom_case(shape, spacing, np.random.default_rng([int(seed), index + 1]))
        affine = phantom_affine(shape, spacing, "RAS")
        save_nifti(os.path.join(out_dir, "imagesTr", f"case_{index:04d}_0000.nii.gz"), image, affine, scanner=True)
        if channels == 2:
            noise = np.random.default_rng([int(seed), index + 1, 2]).normal(0.0, 4.0, image.shape)
            second = (np.sqrt(np.clip(image.astype(np.float64) + 1024.0, 0.0, None)) * 12.0 + noise).astype(np.float32)
            save_nifti(os.path.join(out_dir, "imagesTr", f"case_{index:04d}_0001.nii.gz"), second, affine,
                       scanner=True)
        save_nifti(os.path.join(out_dir, "labelsTr", f"case_{index:04d}.nii.gz"), lookup[label], affine, scanner=True)
    write_json(os.path.join(out_dir, "dataset.json"), {
        "channel_names": {"0": "CT", **({"1": "T1"} if channels == 2 else {})},
        "labels": {"background": 0, **{LABEL_NAMES[o]: i for i, o in enumerate(organs, start=1)}},
        "numTraining": n_cases, "file_ending": ".nii.gz",
        "name": "Synthetic abdominal CT phantom (nnU-Net raw layout); not patient data",
    })
    return out_dir
