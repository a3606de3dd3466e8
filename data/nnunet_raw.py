"""nnU-Net v2's raw dataset layout and geometry (``--dataset nnunet``).

A raw dataset ``nnUNet_raw/DatasetXXX_Name/`` holds ``imagesTr/<case>_<XXXX><file_ending>`` (one file per
input channel), ``labelsTr/<case><file_ending>`` and ``dataset.json`` (``channel_names``, ``labels``,
``file_ending``). The cases evaluated are one fold's validation cases (``--gen_train_adv_mode``: its training
cases) from ``splits_final.json``, found next to the trained-model folder, in its parent, or under
``$nnUNet_preprocessed/<DatasetXXX_Name>/``.

A case is loaded the way nnU-Net preprocesses it, by nnU-Net's own code (``DefaultPreprocessor.run_case_npy``
with its reader of the plans): images read as arrays in nnU-Net's axis order (no reorientation to RAS),
``transpose_forward``, cropped to the nonzero region, resampled to the configuration's spacing. Only the
intensity normalisation differs: each channel goes to [0, 1] instead of to the network's input, and the
model's input map (:class:`networks.nnunet.NnUNetInputMap`) does the rest:

- a ``CTNormalization`` channel is clipped to the foreground 0.5/99.5 percentiles and scaled to [0, 1]
  (resampling commutes with that affine map);
- a ``ZScoreNormalization`` channel is z-scored as nnU-Net does (before resampling) and then scaled to [0, 1]
  by its minimum and maximum; the model z-scores the resampled volume again, which equals nnU-Net's input
  where no resampling happens and is close to it elsewhere.

Cubic resampling overshoots a little at sharp edges; the resampled image is clamped to [0, 1].

Predictions go back to the case's file grid with nnU-Net's own export path
(``convert_predicted_logits_to_segmentation_with_correct_shape`` on the stitched logits: softmax, resampled
to the cropped shape, argmax, put into the uncropped volume, ``transpose_backward``) and are written by nnU-Net's reader/
writer class with the file's spacing, origin and direction.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from utils.errors import UserError
from utils.nnunet_plans import NnUNetFolder, require_nnunetv2


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err})") from None


def raw_dataset_json(data_dir: str) -> dict:
    path = os.path.join(data_dir or "", "dataset.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; --dataset nnunet needs --data_dir pointing at an nnU-Net raw dataset "
                        "(nnUNet_raw/DatasetXXX_Name with imagesTr/, labelsTr/, dataset.json)")
    return _read_json(path)


def find_splits(model_dir: Optional[str], dataset_name: str) -> str:
    """``splits_final.json`` next to the model folder, in its parent, or under ``$nnUNet_preprocessed``.

    Raises:
        UserError: none found (the message lists where it was looked for).
    """
    places = []
    if model_dir:
        places += [os.path.join(model_dir, "splits_final.json"),
                   os.path.join(os.path.dirname(os.path.normpath(model_dir)), "splits_final.json")]
    if os.environ.get("nnUNet_preprocessed"):
        places.append(os.path.join(os.environ["nnUNet_preprocessed"], dataset_name, "splits_final.json"))
    for place in places:
        if os.path.isfile(place):
            return place
    raise UserError(f"splits_final.json not found (looked in {', '.join(places) or 'nowhere'}); copy it next to "
                    "the model folder or set $nnUNet_preprocessed (--dataset nnunet evaluates a fold's cases)")


def _test_cases(data_dir: str, ending: str) -> list[str]:
    """The case ids of ``imagesTs/`` (``<case>_<XXXX><ending>``, one file per channel), sorted."""
    folder = os.path.join(data_dir, "imagesTs")
    if not os.path.isdir(folder):
        raise UserError(f"--nnunet_cases test: {folder} not found; the raw dataset keeps its test images in imagesTs/ "
                        "(with their labels in labelsTs/)")
    cases = sorted({name[: -len(ending)].rsplit("_", 1)[0] for name in os.listdir(folder) if name.endswith(ending)})
    if not cases:
        raise UserError(f"--nnunet_cases test: no *{ending} image in {folder}")
    return cases


def nnunet_items(settings, split: str) -> list[dict]:
    """The cases evaluated: ``{"image": first channel file, "channels": [files], "label": file, "case": id}``;
    the fold's (``splits_final.json``), or with ``nnunet_cases="test"`` every case of ``imagesTs/``
    (labels in ``labelsTs/``).

    Raises:
        UserError: no model folder, splits or files missing, a fold the splits lack.
    """
    data_dir = settings.data_dir
    dataset = raw_dataset_json(data_dir)
    if getattr(settings, "nnunet_cases", "fold") == "test":
        ending = dataset.get("file_ending", ".nii.gz")
        return _case_items(data_dir, "Ts", _test_cases(data_dir, ending), dataset, "imagesTs/")
    folder = NnUNetFolder.read(settings.nnunet_model_dir)
    splits = _read_json(find_splits(folder.path, os.path.basename(os.path.normpath(data_dir))))
    fold = settings.nnunet_fold
    if fold == "all" or not fold.isdigit() or int(fold) >= len(splits):
        raise UserError(f"--nnunet_fold {fold}: splits_final.json has folds 0..{len(splits) - 1}; the cases "
                        "evaluated are the first --nnunet_fold's validation cases")
    cases = splits[int(fold)]["train" if split == "training" else "val"]
    return _case_items(data_dir, "Tr", cases, dataset, f"fold {fold} in splits_final.json")


def _case_items(data_dir: str, tag: str, cases: list, dataset: dict, source: str) -> list[dict]:
    """Each case's channel files of ``images<tag>/`` and label of ``labels<tag>/``, checked to exist."""
    ending = dataset.get("file_ending", ".nii.gz")
    channels = len(dataset.get("channel_names", dataset.get("modality", {})))
    items = []
    for case in cases:
        files = [os.path.join(data_dir, f"images{tag}", f"{case}_{c:04d}{ending}") for c in range(channels)]
        label = os.path.join(data_dir, f"labels{tag}", f"{case}{ending}")
        for path in files + [label]:
            if not os.path.isfile(path):
                raise UserError(f"{path} not found: case {case} of {source} has no such file in {data_dir}")
        items.append({"image": files[0], "channels": files, "label": label, "case": case})
    return items


class NnUNetCaseLoader:
    """``item -> {"image": [C, *S] in [0, 1], "label": [1, *S]}`` on the configuration's grid (see module).

    Used as the dataset's transform; :meth:`save_prediction` writes a label map back on the file's grid.

    Args:
        model_dir: the trained-model folder (its plans and configuration).
        data_dir: the raw dataset (its ``dataset.json``).
    """

    def __init__(self, model_dir: str, data_dir: str):
        require_nnunetv2()
        self.folder = NnUNetFolder.read(model_dir)
        self.dataset_json = raw_dataset_json(data_dir)
        self.windows = [self.folder.intensity_window(c) for c in range(len(self.folder.channel_names))]

    def _managers(self):
        plans_manager = self.folder.plans_manager()
        return plans_manager, plans_manager.get_configuration(self.folder.configuration)

    def __call__(self, item: dict) -> dict:
        import torch
        from monai.data import MetaTensor
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        loader = self

        class UnitPreprocessor(DefaultPreprocessor):
            def _normalize(self, data, seg, configuration_manager, properties_per_channel):
                return loader.to_unit(data, seg, configuration_manager, properties_per_channel)

        plans_manager, config = self._managers()
        reader = plans_manager.image_reader_writer_class()
        data, properties = reader.read_images(list(item["channels"]))
        seg, _ = reader.read_seg(item["label"])
        data, seg, properties = UnitPreprocessor(verbose=False).run_case_npy(
            data, seg, properties, plans_manager, config, self.dataset_json)
        image = torch.from_numpy(np.clip(data, 0.0, 1.0).astype(np.float32))
        label = torch.from_numpy(np.asarray(seg, dtype=np.float32))
        label[label < 0] = 0  # nnU-Net marks voxels outside the nonzero mask -1 in its training data only
        spacing = list(config.spacing)
        affine = torch.diag(torch.tensor(spacing + [1.0], dtype=torch.float64))
        meta = {"nnunet_properties": properties, "case": item["case"]}
        return {"image": MetaTensor(image, affine=affine, meta=meta), "label": MetaTensor(label, affine=affine),
                "image_meta_dict": {"filename_or_obj": item["image"]}}

    def to_unit(self, data: np.ndarray, seg, configuration_manager, properties_per_channel) -> np.ndarray:
        """Each channel of ``data`` ``[C, *S]`` (cropped, before resampling) to [0, 1] (see module)."""
        from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

        for c, window in enumerate(self.windows):
            if window is not None:
                lo, hi = window
                data[c] = (np.clip(data[c], lo, hi) - lo) / (hi - lo)
            else:
                z = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(data[c], seg[0])
                low, high = float(z.min()), float(z.max())
                data[c] = (z - low) / max(high - low, 1e-8)
        return data

    def save_prediction(self, path: str, logits, loaded) -> None:
        """Write the class map of ``logits`` ``[K, *S]`` (configuration grid) on the case file's grid, as
        nnU-Net exports a prediction (softmax, resampled linearly, argmax)."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        plans_manager, config = self._managers()
        properties = loaded.meta["nnunet_properties"]
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.float().cpu(), plans_manager, config, plans_manager.get_label_manager(self.dataset_json),
            properties)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        plans_manager.image_reader_writer_class().write_seg(np.asarray(segmentation), path, properties)


def nnunet_transforms(settings, mode: str):
    if mode != "eval":
        raise UserError("--dataset nnunet is for evaluation (attacks and inference), not for training")
    return NnUNetCaseLoader(settings.nnunet_model_dir, settings.data_dir)


def nnunet_class_names(settings) -> list:
    labels = raw_dataset_json(settings.data_dir).get("labels", {})
    by_value = {v: k for k, v in labels.items() if isinstance(v, int)}
    return [by_value.get(i, f"class_{i}") for i in range(len(by_value))]

