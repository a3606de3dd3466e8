"""A tiny nnU-Net v2 trained-model folder written in nnU-Net's layout, with random weights (fast tests).

The plans follow the format ``nnUNetv2_plan_and_preprocess`` writes (a ``PlainConvUNet`` of three stages
here); the checkpoints hold what ``nnUNetTrainer.save_checkpoint`` saves that inference reads
(``network_weights``, ``init_args``, ``trainer_name``, ``inference_allowed_mirroring_axes``).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch

CT_PROPERTIES = {"max": 900.0, "mean": 40.0, "median": 35.0, "min": -1000.0, "percentile_00_5": -160.0,
                 "percentile_99_5": 260.0, "std": 75.0}
"""Foreground intensity properties of a CT channel (Hounsfield units)."""


def tiny_plans(patch: Sequence[int] = (16, 16, 16), spacing: Sequence[float] = (2.0, 1.5, 1.5),
               schemes: Sequence[str] = ("CTNormalization",), features: Sequence[int] = (4, 8, 16)) -> dict:
    n = len(features)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": [2 * p for p in patch], "spacing": list(spacing),
        "normalization_schemes": list(schemes), "use_mask_for_norm": [False] * len(schemes),
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [2 * p for p in patch],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): dict(CT_PROPERTIES) for c in range(len(schemes))},
    }


def write_nnunet_folder(root: str, channels: Sequence[str] = ("CT",), labels: Sequence[str] = ("background", "a", "b"),
                        folds: Sequence[int] = (0,), patch: Sequence[int] = (16, 16, 16), seed: int = 0,
                        mirror_axes: Sequence[int] = (0, 1, 2), checkpoint: str = "checkpoint_final.pth") -> str:
    """Write ``root/Dataset999_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres`` and return its path.

    Channels named ``CT`` are CT-normalised, others z-scored; each fold gets other random weights
    (``seed + fold``), the biases too, so that no output is constant.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    schemes = ["CTNormalization" if c == "CT" else "ZScoreNormalization" for c in channels]
    plans = tiny_plans(patch=patch, schemes=schemes)
    dataset = {"channel_names": {str(i): c for i, c in enumerate(channels)},
               "labels": {name: i for i, name in enumerate(labels)}, "numTraining": 4, "file_ending": ".nii.gz"}
    folder = os.path.join(root, "Dataset999_Tiny", "nnUNetTrainer__nnUNetPlans__3d_fullres")
    os.makedirs(folder, exist_ok=True)
    for name, content in (("plans.json", plans), ("dataset.json", dataset)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f, indent=2)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    for fold in folds:
        torch.manual_seed(seed + fold)
        network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                         len(channels), len(labels), allow_init=True, deep_supervision=True)
        with torch.no_grad():
            for name, p in network.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
        os.makedirs(os.path.join(folder, f"fold_{fold}"), exist_ok=True)
        torch.save({"network_weights": network.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
                    "logging": {}, "_best_ema": None, "current_epoch": 1,
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold,
                                  "dataset_json": dataset, "device": torch.device("cpu")},
                    "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": tuple(mirror_axes)},
                   os.path.join(folder, f"fold_{fold}", checkpoint))
    return folder
