"""Datasets on disk: Decathlon JSON lists, the release's transforms, loaders, case checks.

The transforms follow the paper's release (the paper's code release) written with today's MONAI
dictionary transforms:

eval (both datasets)
    ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Orientationd("RAS")`` ->
    ``Spacingd`` (bilinear image, nearest label) -> ``ScaleIntensityRanged`` (clipped;
    datasets registered without a window, and no ``--a_min/--a_max`` given: per-volume
    0.5-99.5 percentiles instead) -> ``CropForegroundd`` (bounding box of ``image > 0``).
    Datasets with ``pad_to_roi`` (ACDC) insert ``ResizeWithPadOrCropd`` to the ROI (constant 0) right after
    ``Spacingd``, i.e. *before* the intensity window, as the release does.
train
    The same deterministic chain (ACDC: with ``ResizeWithPadOrCropd`` after the
    foreground crop, as the release does), then ``SpatialPadd`` to the ROI (ours:
    a no-op for volumes at least as large as the ROI, it lets tiny volumes work),
    ``RandCropByPosNegLabeld`` (pos 1, neg 1, 4 samples, image threshold 0) — or, with
    ``--crop_sampling classes`` (ours), ``RandCropByLabelClassesd`` centring the crops on
    each class (background included) equally often, so small organs are seen as often as
    the liver —
    ``RandFlipd`` on each axis, ``RandRotate90d(max_k=3)``,
    ``RandScaleIntensityd(0.1)`` and ``RandShiftIntensityd(0.1)``.

Images and labels stay ``MetaTensor`` s, so ``item["image"].affine`` is the affine of
the transformed volume. Each transformed item also carries ``"name"`` (file name of
the image, e.g. ``img0035.nii.gz``) and ``"label_name"`` as plain strings, which
survive collation as lists of strings.

Loaders differ from the release only where it tied itself to CUDA: memory is pinned
only when CUDA is available, and workers persist only when there are workers.

MONAI is imported inside the builders so that ``import data.loading`` stays cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from data.datasets import DatasetSpec, get_dataset
from utils.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

__all__ = [
    "AddFileNamesd",
    "DataSettings",
    "SPLITS",
    "TRANSFORM_MODES",
    "load_datalist",
    "get_transforms",
    "build_transforms",
    "build_dataset",
    "build_loader",
    "check_case",
    "check_files",
    "class_names",
    "split_for_mode",
]

SPLITS = ("training", "validation")
TRANSFORM_MODES = ("train", "eval")
KEYS = ("image", "label")
#: The release caches at most this many training cases in its CacheDataset.
CACHE_NUM = 24
#: ROI crops ``RandCropByPosNegLabeld`` takes from each training volume (the release's 4).
CROPS_PER_VOLUME = 4
#: ``--crop_sampling`` values: the release's foreground/background crops, or one class per crop in turn.
CROP_SAMPLINGS = ("posneg", "classes")


@dataclass(frozen=True)
class DataSettings:
    """Where a dataset is and how its volumes are prepared (the data flags, typed).

    ``a_min``/``a_max`` ``None`` take the dataset's default window (:mod:`data.datasets`).
    """

    dataset: str = "btcv"
    data_dir: Optional[str] = None
    json_list: str = "dataset_synapse_18_12.json"
    a_min: Optional[float] = None
    a_max: Optional[float] = None
    b_min: float = 0.0
    b_max: float = 1.0
    spacing: tuple = (1.5, 1.5, 2.0)
    roi: tuple = (96, 96, 96)
    workers: int = 8
    flip_prob: float = 0.2
    rotate90_prob: float = 0.2
    scale_intensity_prob: float = 0.1
    shift_intensity_prob: float = 0.1
    use_normal_dataset: bool = False
    crop_sampling: str = "posneg"
    nnunet_model_dir: Optional[str] = None
    nnunet_fold: str = "0"
    nnunet_cases: str = "fold"

    @property
    def spec(self) -> DatasetSpec:
        return get_dataset(self.dataset)

    def items(self, split: str) -> list[dict]:
        """:func:`load_datalist` of one split (or the dataset layout's own cases)."""
        if self.spec.layout is not None:
            return self.spec.layout.items(self, split)
        return load_datalist(self.data_dir, self.json_list, split)


# --------------------------------------------------------------------------- datalist


def load_datalist(data_dir: str, json_list: str, split: str) -> list[dict]:
    """Read one split of a Decathlon-style JSON list and check that its files exist.

    Args:
        data_dir: dataset folder; relative paths in the JSON are resolved against it.
        json_list: JSON file name relative to ``data_dir``, or an absolute path.
        split: ``"training"`` or ``"validation"``.

    Returns:
        One dict per case: ``{"image": abs path, "label": abs path, "name": image
        file name}`` (other keys of the entry kept). ``"label_name"`` is added by the
        transforms (:class:`AddFileNamesd`), not here: MONAI's ``Spacingd`` treats
        every key that starts with ``"label_"`` as the label's metadata dict.

    Raises:
        UserError: missing data folder or JSON, invalid JSON, a split the JSON lacks,
            an empty split, a malformed entry, or a listed file that does not exist.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not data_dir or data_dir == "None":
        raise UserError("no dataset folder given; pass --data_dir pointing at the folder with imagesTr/ and labelsTr/")
    if not os.path.isdir(data_dir):
        raise UserError(f"dataset folder {data_dir} does not exist; check --data_dir")
    if not json_list or json_list == "None":
        raise UserError("no dataset list given; pass --json_list (a JSON file in --data_dir or an absolute path)")
    json_path = _json_path(data_dir, json_list)
    if not os.path.isfile(json_path):
        raise UserError(
            f"dataset list {json_path} not found; pass --json_list as a file name inside --data_dir or an absolute path"
        )
    try:
        with open(json_path) as f:
            content = json.load(f)
    except ValueError as err:
        raise UserError(f"dataset list {json_path} is not valid JSON ({err}); fix or regenerate the file") from None
    if not isinstance(content, dict):
        raise UserError(f"dataset list {json_path} must hold a JSON object with 'training'/'validation' lists")
    if split not in content:
        splits = [k for k, v in content.items() if isinstance(v, list)]
        raise UserError(
            f"dataset list {json_path} has no '{split}' split (it has: {', '.join(splits) or 'none'}); "
            f"add a '{split}' list or pass another --json_list"
        )
    entries = content[split]
    if not isinstance(entries, list) or not entries:
        raise UserError(f"the '{split}' split of {json_path} is empty; list at least one image/label pair")

    items, missing = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in KEYS):
            raise UserError(
                f"entry {index} of the '{split}' split in {json_path} must be an object with 'image' and 'label' "
                f"paths, got {entry!r}"
            )
        item = dict(entry)
        for key in KEYS:
            path = os.path.normpath(os.path.join(data_dir, os.path.expanduser(entry[key])))
            item[key] = path
            if not os.path.isfile(path):
                missing.append(path)
        item["name"] = os.path.basename(item["image"])
        items.append(item)
    names: dict[str, str] = {}
    for item in items:  # outputs are named after the image file: two equal names would overwrite each other
        if item["name"] in names:
            raise UserError(f"the '{split}' split of {json_path} lists two images named {item['name']} "
                            f"({names[item['name']]} and {item['image']}); output files are named after the image "
                            "file, so give each case a distinct file name")
        names[item["name"]] = item["image"]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"file {missing[0]}{more} listed in the '{split}' split of {json_path} does not exist; "
            "check --data_dir and the paths in the JSON"
        )
    return items


def split_for_mode(gen_train_adv_mode: bool) -> str:
    """Datalist split a generation/inference run uses: ``"training"`` with
    ``--gen_train_adv_mode``, else ``"validation"`` (the release's test mode)."""
    return "training" if gen_train_adv_mode else "validation"


# --------------------------------------------------------------------------- transforms


class AddFileNamesd:
    """Store the loaded files' names as plain strings: ``d["name"]`` (image) and
    ``d["label_name"]`` (label), taken from the MetaTensors' ``filename_or_obj``.

    Runs last in the chain (see :func:`load_datalist` for why), so the names travel
    through collation as lists of strings.
    """

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key, out in (("image", "name"), ("label", "label_name")):
            meta = getattr(d.get(key), "meta", None) or {}
            source = meta.get("filename_or_obj")
            if source is not None:
                d[out] = os.path.basename(str(source))
        return d


def get_transforms(
    dataset: str | DatasetSpec = "btcv",
    mode: str = "eval",
    *,
    a_min: Optional[float] = None,
    a_max: Optional[float] = None,
    b_min: float = 0.0,
    b_max: float = 1.0,
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    roi_size: Sequence[int] = (96, 96, 96),
    flip_prob: float = 0.2,
    rotate90_prob: float = 0.2,
    scale_intensity_prob: float = 0.1,
    shift_intensity_prob: float = 0.1,
    num_samples: int = CROPS_PER_VOLUME,
    crop_sampling: str = "posneg",
) -> "Compose":
    """The release's dictionary transforms for ``image``/``label`` (see the module docstring).

    Args:
        dataset: a registered dataset name (``"btcv"``, ``"acdc"``) or its :class:`DatasetSpec`.
        mode: ``"eval"`` (whole volumes) or ``"train"`` (``num_samples`` random ROI crops
            per volume, augmented).
        a_min, a_max, b_min, b_max: intensity window ``[a_min, a_max]`` mapped to
            ``[b_min, b_max]`` and clipped; ``None`` takes the dataset's window (or, for
            a dataset without one, each volume's 0.5-99.5 percentiles).
        spacing: target voxel size ``(x, y, z)`` in mm.
        roi_size: crop size ``(H, W, D)`` for training (and ACDC's pad/crop).
        flip_prob, rotate90_prob, scale_intensity_prob, shift_intensity_prob:
            augmentation probabilities (train only).
        num_samples: crops per volume (train only).
        crop_sampling: ``"posneg"`` (the release: crop centres on foreground and background
            alike) or ``"classes"`` (centres on each of the dataset's classes alike).

    Returns:
        A ``monai.transforms.Compose``. Eval outputs ``image`` ``[C, H, W, D]`` and
        ``label`` ``[1, H, W, D]`` as MetaTensors; train outputs a list of
        ``num_samples`` such dicts of spatial size ``roi_size``.

    Raises:
        UserError: unknown dataset or mode, a non-positive ROI/spacing, or (train)
            ``roi_size[0] != roi_size[1]`` with ``rotate90_prob > 0``: the rotations act
            in the (H, W) plane, so crops of one batch would differ in shape.
    """
    from monai import transforms as mt

    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    if mode not in TRANSFORM_MODES:
        raise UserError(f"transform mode must be one of {', '.join(TRANSFORM_MODES)}, got {mode!r}")
    roi_size = tuple(int(r) for r in roi_size)
    spacing = tuple(float(s) for s in spacing)
    if len(roi_size) != 3 or min(roi_size) < 1:
        raise UserError(f"ROI size must be 3 positive integers (--roi_x/--roi_y/--roi_z), got {roi_size}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise UserError(f"spacing must be 3 positive numbers (--space_x/--space_y/--space_z), got {spacing}")
    if mode == "train" and rotate90_prob > 0 and roi_size[0] != roi_size[1]:
        raise UserError(
            f"random 90-degree rotations swap H and W, so training needs --roi_x equal to --roi_y "
            f"(got {roi_size[0]} and {roi_size[1]}); use a square ROI in-plane or set --RandRotate90d_prob 0"
        )
    if crop_sampling not in CROP_SAMPLINGS:
        raise UserError(f"--crop_sampling must be one of {', '.join(CROP_SAMPLINGS)}, got {crop_sampling!r}")
    keys = list(KEYS)

    deterministic = [
        mt.LoadImaged(keys=keys, image_only=True),
        mt.EnsureChannelFirstd(keys=keys),
        mt.Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys=keys, pixdim=spacing, mode=("bilinear", "nearest")),
    ]
    pad_or_crop = mt.ResizeWithPadOrCropd(keys=keys, spatial_size=roi_size, mode="constant", value=0)
    if a_min is None and a_max is None and spec.window is not None:
        a_min, a_max = spec.window
    if a_min is None or a_max is None:
        window = mt.ScaleIntensityRangePercentilesd(keys=["image"], lower=0.5, upper=99.5, b_min=b_min, b_max=b_max,
                                                    clip=True)
    else:
        window = mt.ScaleIntensityRanged(keys=["image"], a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True)
    # margin 0: the box never leaves the volume, so allow_smaller only silences MONAI's default change.
    crop_foreground = mt.CropForegroundd(keys=keys, source_key="image", allow_smaller=True)
    if spec.pad_to_roi and mode == "eval":
        deterministic += [pad_or_crop, window, crop_foreground]
    elif spec.pad_to_roi:
        deterministic += [window, crop_foreground, pad_or_crop]
    else:
        deterministic += [window, crop_foreground]
    if mode == "eval":
        return mt.Compose(deterministic + [AddFileNamesd()])

    if crop_sampling == "classes":
        crop = mt.RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=roi_size,
                                          num_classes=spec.num_classes, num_samples=num_samples, image_key="image",
                                          image_threshold=0, warn=False)
    else:
        crop = mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=roi_size, pos=1, neg=1,
                                         num_samples=num_samples, image_key="image", image_threshold=0)
    random = [
        mt.SpatialPadd(keys=keys, spatial_size=roi_size, mode="constant", value=0),
        crop,
        mt.RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0),
        mt.RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1),
        mt.RandFlipd(keys=keys, prob=flip_prob, spatial_axis=2),
        mt.RandRotate90d(keys=keys, prob=rotate90_prob, max_k=3),
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=scale_intensity_prob),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=shift_intensity_prob),
        AddFileNamesd(),
    ]
    return mt.Compose(deterministic + random)


def build_transforms(settings: DataSettings, mode: str) -> "Compose":
    """:func:`get_transforms` of the data settings (or the dataset layout's own loader)."""
    if settings.spec.layout is not None:
        return settings.spec.layout.transforms(settings, mode)
    return get_transforms(
        settings.dataset,
        mode,
        a_min=settings.a_min,
        a_max=settings.a_max,
        b_min=settings.b_min,
        b_max=settings.b_max,
        spacing=settings.spacing,
        roi_size=settings.roi,
        flip_prob=settings.flip_prob,
        rotate90_prob=settings.rotate90_prob,
        scale_intensity_prob=settings.scale_intensity_prob,
        shift_intensity_prob=settings.shift_intensity_prob,
        crop_sampling=settings.crop_sampling,
    )


def class_names(settings: DataSettings, num_classes: int) -> list[str]:
    """Class names for reports and figures, index = label value.

    The Decathlon JSON's ``labels`` field when it names ``num_classes`` classes, else the
    registered dataset's names when their count fits, else ``class_0, class_1, ...``.
    """
    if settings.spec.layout is not None:
        names = settings.spec.layout.class_names(settings)
        return names if len(names) == num_classes else [f"class_{i}" for i in range(num_classes)]
    json_path = _json_path(settings.data_dir, settings.json_list)
    try:
        with open(json_path) as f:
            labels = json.load(f).get("labels")
    except (OSError, ValueError, AttributeError):
        labels = None
    if isinstance(labels, dict):
        try:
            by_value = {int(k): str(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            by_value = {}
        if sorted(by_value) == list(range(num_classes)):
            return [by_value[i] for i in range(num_classes)]
    names = list(get_dataset(settings.dataset).class_names)
    return names if len(names) == num_classes else [f"class_{i}" for i in range(num_classes)]


SHIPPED_SPLITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
"""Public split files shipped with the tool (``dataset_synapse_18_12.json``: the 18/12 Synapse split)."""


def _json_path(data_dir: str, json_list: str) -> str:
    """``json_list`` as a path: absolute, else inside ``data_dir``, else a shipped split of that name
    (its entries are relative to ``data_dir`` like any other list's)."""
    if os.path.isabs(json_list):
        return json_list
    path = os.path.join(data_dir, json_list)
    shipped = os.path.join(SHIPPED_SPLITS, json_list)
    return shipped if not os.path.isfile(path) and os.path.isfile(shipped) else path


# --------------------------------------------------------------------------- datasets and loaders


def build_dataset(settings: DataSettings, split: str, mode: str, items: Optional[list] = None) -> "Dataset":
    """MONAI dataset of one split with the ``mode`` transforms.

    Training-mode datasets are a ``CacheDataset`` (deterministic transforms cached,
    at most 24 cases, as the release) unless ``--use_normal_dataset``; eval datasets
    are a plain ``Dataset``, as in the release. ``items`` (default: the whole split)
    narrows it to some cases of the split.
    """
    from monai.data import CacheDataset, Dataset

    items = settings.items(split) if items is None else items
    transform = build_transforms(settings, mode)
    if mode == "train" and not settings.use_normal_dataset:
        return CacheDataset(
            data=items,
            transform=transform,
            cache_num=CACHE_NUM,
            cache_rate=1.0,
            num_workers=max(1, settings.workers),
            progress=False,
        )
    return Dataset(data=items, transform=transform)


def build_loader(
    settings: DataSettings,
    split: str,
    mode: str,
    *,
    shuffle: bool | None = None,
    sampler: Any = None,
    batch_size: int | None = None,
) -> "DataLoader":
    """MONAI ``DataLoader`` over :func:`build_dataset`.

    Args:
        settings: the data settings.
        split: ``"training"`` or ``"validation"``.
        mode: ``"train"`` or ``"eval"``.
        shuffle: default: shuffle in train mode when no ``sampler`` is given.
        sampler: e.g. a distributed sampler (then ``shuffle`` must not be True).
        batch_size: volumes per batch (default 1; in train mode each volume yields 4
            crops, so a batch holds ``4 * batch_size`` crops).

    Raises:
        ValueError: ``shuffle=True`` together with a ``sampler``.
    """
    import torch
    from monai.data import DataLoader

    if shuffle is None:
        shuffle = mode == "train" and sampler is None
    if shuffle and sampler is not None:
        raise ValueError("shuffle=True cannot be combined with a sampler; let the sampler shuffle")
    from utils.distributed import ignore_stop_signals

    workers = settings.workers
    return DataLoader(
        build_dataset(settings, split, mode),
        worker_init_fn=ignore_stop_signals,
        batch_size=batch_size or 1,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


# --------------------------------------------------------------------------- checks


class EmptyCase(UserError):
    """A case with nothing to segment (see :func:`check_case`); ``--skip_empty_cases`` records it as skipped."""


def check_case(image, label, num_classes: int, name: str) -> None:
    """Refuse a case whose label does not fit the image or the model.

    Args:
        image: ``[C, H, W, D]`` (or with a batch dimension), tensor or array.
        label: ``[1, H, W, D]`` (or with a batch dimension), tensor or array.
        num_classes: ``--out_channels``.
        name: case name for the message.

    Raises:
        EmptyCase: nothing is left to segment (an empty volume after the foreground crop,
            or one thinner than two voxels along two axes).
        UserError: spatial shapes differ, the image holds NaN or Inf, label values are
            not whole numbers, or lie outside ``0 .. num_classes - 1``.
    """
    image_shape, label_shape = tuple(image.shape), tuple(label.shape)
    finite = bool(image.isfinite().all()) if hasattr(image, "isfinite") else bool(np.isfinite(image).all())
    if not finite:
        raise UserError(f"case {name}: the image holds NaN or Inf voxels; fix or drop the file (no metric is "
                        "computed from non-finite data)")
    if image_shape[-3:] != label_shape[-3:]:
        raise UserError(
            f"case {name}: image shape {image_shape} and label shape {label_shape} differ; "
            "image and label files must cover the same voxel grid"
        )
    spatial = tuple(int(n) for n in image_shape[-3:])
    if min(spatial) == 0:
        raise EmptyCase(f"case {name}: nothing to segment: no voxel is above the intensity window's lower end "
                        "(--a_min), so the foreground crop leaves an empty volume; the image is all air or on "
                        "another intensity scale: fix its window (--a_min/--a_max) or drop the case")
    if sum(n > 1 for n in spatial) < 2:
        raise EmptyCase(f"case {name}: the volume is {spatial} voxels after the foreground crop; the metrics "
                        "(SSIM, HD95) need more than one voxel along at least two axes: drop the case")
    if hasattr(label, "detach"):  # torch: reduce where the tensor lives
        low, high = float(label.min()), float(label.max())
        whole = bool((label == label.round()).all()) if label.is_floating_point() else True
    else:
        values = np.asarray(label)
        low, high = float(values.min()), float(values.max())
        whole = bool(np.array_equal(values, np.round(values)))
    if not whole:
        raise UserError(f"case {name}: label values are not whole numbers; the label file must hold class indices")
    if low < 0:
        raise UserError(f"case {name}: label values go down to {low:g}; class indices must be 0 or more")
    if high >= num_classes:
        raise UserError(
            f"case {name}: max label {high:g} does not fit --out_channels {num_classes} "
            f"(classes 0..{num_classes - 1}); "
            f"set --out_channels to at least {int(high) + 1} or fix the labels"
        )


AFFINE_TOLERANCE = 1e-3
"""Largest difference (mm, or direction-cosine units) between an image's and its label's affine."""


def check_files(item: dict, read_data: bool = False) -> None:
    """Refuse a datalist entry whose image and label files do not describe one voxel grid.

    Reads the NIfTI headers (and, with ``read_data``, every voxel, which finds a
    truncated or corrupt file and NaN/Inf image voxels before the intensity window could
    clip them). Run before the transforms: resampling and the foreground crop would
    otherwise silently bring a mismatched label onto the image grid.

    Raises:
        UserError: a file cannot be read, is not a 3D volume, the image holds NaN/Inf
            (``read_data``), or the two files differ in shape or affine (origin, spacing or
            axis directions).
    """
    import nibabel as nib

    shapes, affines = [], []
    for key in KEYS:
        data = None
        try:
            volume = nib.load(item[key])
            if read_data:
                data = np.asanyarray(volume.dataobj)
        except Exception as err:  # nibabel, gzip and zlib raise several types for unreadable files
            raise UserError(f"cannot read {key} file {item[key]}: {' '.join(str(err).split())}; the file is "
                            "damaged or cut short: restore it or drop the case") from None
        if key == "image" and data is not None and np.issubdtype(data.dtype, np.floating):
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            if bad:  # before the intensity window, which would clip an Inf into range
                raise UserError(f"image file {item[key]} holds {bad} NaN or Inf voxels; fix or drop the file (no "
                                "metric is computed from non-finite data)")
        shape = tuple(volume.shape)
        if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
            raise UserError(f"{key} file {item[key]} has shape {shape}; a 3D volume [H, W, D] is expected")
        shapes.append(shape[:3])
        affines.append(np.asarray(volume.affine, dtype=np.float64))
    name, label_file = os.path.basename(str(item["image"])), os.path.basename(str(item["label"]))
    if shapes[0] != shapes[1]:
        raise UserError(
            f"case {name}: image shape {shapes[0]} and label shape {shapes[1]} "
            f"({label_file}) differ; image and label files must cover the same voxel grid"
        )
    gap = float(np.abs(affines[0] - affines[1]).max())
    if not np.isfinite(gap) or gap > AFFINE_TOLERANCE:
        raise UserError(
            f"case {name}: image and label ({label_file}) affines differ by up to {gap:.4g} (origin, spacing or "
            "axis direction); the label would be scored on another grid: re-export the label on the image's grid"
        )


def plain_tensor(x) -> "torch.Tensor":
    """A transform's output (``MetaTensor``, array or tensor) as a plain ``torch.Tensor``.

    MONAI's per-operation metadata bookkeeping costs more than a small model's forward
    pass, so everything past the transforms works on plain tensors (no copy is made).
    """
    import torch

    if isinstance(x, torch.Tensor):
        return x.as_subclass(torch.Tensor)
    return torch.as_tensor(x)
