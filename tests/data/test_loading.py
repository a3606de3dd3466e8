import json
import os

import numpy as np
import pytest

from engine.cli import data_settings
import torch

from data.loading import (
    build_dataset,
    build_loader,
    build_transforms,
    check_case,
    get_transforms,
    load_datalist,
    split_for_mode,
)
from utils.errors import UserError
from data.phantom import write_phantom_dataset

# --------------------------------------------------------------------------- load_datalist


def test_load_datalist_resolves_paths_and_names(tiny_dataset):
    train = load_datalist(tiny_dataset.data_dir, tiny_dataset.json_name, "training")
    val = load_datalist(tiny_dataset.data_dir, tiny_dataset.json_path, "validation")  # absolute JSON path
    assert [i["name"] for i in train] == ["img0001.nii.gz", "img0002.nii.gz", "img0003.nii.gz"]
    assert [i["name"] for i in val] == ["img0004.nii.gz", "img0005.nii.gz"]
    for item in train + val:
        assert os.path.isabs(item["image"]) and os.path.isfile(item["image"]) and os.path.isfile(item["label"])
        assert os.path.basename(item["label"]).startswith("label")


def test_absolute_entries_are_kept(tiny_dataset, tmp_path):
    item = tiny_dataset.validation[0]
    listing = tmp_path / "abs.json"
    listing.write_text(json.dumps({"validation": [{"image": item["image"], "label": item["label"]}]}))
    (got,) = load_datalist(str(tmp_path), "abs.json", "validation")
    assert got["image"] == item["image"] and got["label"] == item["label"]


@pytest.fixture
def listing(tiny_dataset, tmp_path):
    """Write a JSON list into a scratch dataset folder; returns (folder, file name)."""

    def write(content, name="list.json"):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(tmp_path), name

    return write


def test_missing_data_folder(tmp_path):
    with pytest.raises(UserError, match=r"dataset folder .*nowhere does not exist; check --data_dir"):
        load_datalist(str(tmp_path / "nowhere"), "dataset.json", "training")
    with pytest.raises(UserError, match="pass --data_dir"):
        load_datalist(None, "dataset.json", "training")


def test_missing_json(tiny_dataset):
    with pytest.raises(UserError, match=r"dataset list .*other\.json not found; pass --json_list"):
        load_datalist(tiny_dataset.data_dir, "other.json", "training")


def test_invalid_json(listing):
    folder, name = listing('{"training": [')
    with pytest.raises(UserError, match="is not valid JSON"):
        load_datalist(folder, name, "training")


def test_json_without_the_split_lists_its_splits(listing):
    folder, name = listing({"training": [], "test": ["a.nii.gz"], "name": "x"})
    with pytest.raises(UserError, match=r"has no 'validation' split \(it has: training, test\)"):
        load_datalist(folder, name, "validation")


def test_empty_split(listing):
    folder, name = listing({"training": []})
    with pytest.raises(UserError, match="'training' split of .* is empty"):
        load_datalist(folder, name, "training")


def test_listed_file_that_does_not_exist_is_named(listing, tiny_dataset):
    good = tiny_dataset.training[0]
    folder, name = listing({"training": [good_rel(good), {"image": "imagesTr/img0099.nii.gz", "label": good["label"]}]})
    with pytest.raises(UserError, match=r"img0099\.nii\.gz listed in the 'training' split .* does not exist"):
        load_datalist(folder, name, "training")


def good_rel(item):
    return {"image": item["image"], "label": item["label"]}


def test_malformed_entry(listing):
    folder, name = listing({"training": [{"image": "imagesTr/img0001.nii.gz"}]})
    with pytest.raises(UserError, match="entry 0 .* must be an object with 'image' and 'label'"):
        load_datalist(folder, name, "training")


def test_unknown_split(tiny_dataset):
    with pytest.raises(UserError, match="split must be one of training, validation"):
        load_datalist(tiny_dataset.data_dir, tiny_dataset.json_name, "test")


def test_split_for_mode():
    assert split_for_mode(True) == "training"
    assert split_for_mode(False) == "validation"


# --------------------------------------------------------------------------- transforms


def test_eval_transforms_keep_names_geometry_and_range(tiny_dataset, data_args):
    transform = build_transforms(data_settings(data_args), "eval")
    for item in tiny_dataset.validation:
        out = transform(item)
        image, label = out["image"], out["label"]
        assert out["name"] == os.path.basename(item["image"]) and isinstance(out["name"], str)
        assert out["label_name"] == os.path.basename(item["label"]) and isinstance(out["label_name"], str)
        assert image.shape[0] == label.shape[0] == 1 and image.shape == label.shape
        assert all(s >= r for s, r in zip(image.shape[1:], tiny_dataset.roi))  # the tiny ROI fits
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert set(np.unique(label.numpy())) <= set(range(14))
        affine = np.asarray(image.affine)
        np.testing.assert_allclose(np.diag(affine)[:3], tiny_dataset.spacing)  # RAS, resampled spacing
        assert not np.allclose(affine, np.eye(4)) and np.abs(affine[:3, 3]).min() > 1
        np.testing.assert_allclose(np.asarray(label.affine), affine)


def test_orientation_is_normalised_to_ras(tmp_path):
    """The same phantom stored LPS and RAS gives identical transformed volumes."""
    outs = []
    for orientation in ("LPS", "RAS"):
        folder = str(tmp_path / orientation)
        write_phantom_dataset(folder, 1, 1, (24, 24, 12), (1.5, 1.5, 2.0), seed=0, orientation=orientation)
        item = load_datalist(folder, "dataset.json", "validation")[0]
        outs.append(get_transforms("btcv", "eval")(item))
    np.testing.assert_array_equal(outs[0]["image"].numpy(), outs[1]["image"].numpy())
    np.testing.assert_array_equal(outs[0]["label"].numpy(), outs[1]["label"].numpy())
    np.testing.assert_allclose(np.asarray(outs[0]["image"].affine), np.asarray(outs[1]["image"].affine))


def test_train_transforms_yield_roi_crops(tiny_dataset, data_args):
    out = build_transforms(data_settings(data_args), "train")(tiny_dataset.training[0])
    assert isinstance(out, list) and len(out) == 4
    for sample in out:
        assert tuple(sample["image"].shape) == (1, *tiny_dataset.roi)
        assert tuple(sample["label"].shape) == (1, *tiny_dataset.roi)
        assert sample["name"] == "img0001.nii.gz" and sample["label_name"] == "label0001.nii.gz"


def test_train_transforms_pad_volumes_smaller_than_the_roi(tiny_dataset, data_args):
    data_args.roi_x, data_args.roi_y, data_args.roi_z = 64, 64, 32  # larger than the cropped volume
    out = build_transforms(data_settings(data_args), "train")(tiny_dataset.training[0])
    assert all(tuple(s["image"].shape) == (1, 64, 64, 32) for s in out)


def test_rotations_need_a_square_roi_in_plane(tiny_dataset, data_args):
    data_args.roi_x, data_args.roi_y, data_args.roi_z = 48, 32, 16
    with pytest.raises(UserError, match="--roi_x equal to --roi_y .*--RandRotate90d_prob 0"):
        build_transforms(data_settings(data_args), "train")
    data_args.RandRotate90d_prob = 0.0
    out = build_transforms(data_settings(data_args), "train")(tiny_dataset.training[0])
    assert all(tuple(s["image"].shape) == (1, 48, 32, 16) for s in out)
    build_transforms(data_settings(data_args), "eval")  # eval has no rotations


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_acdc_pads_or_crops_to_the_roi(tiny_dataset, data_args, mode):
    data_args.dataset = "acdc"
    data_args.roi_x, data_args.roi_y, data_args.roi_z = 40, 40, 16  # crops H, W; pads nothing
    out = build_transforms(data_settings(data_args), mode)(tiny_dataset.validation[0])
    shapes = [tuple(s["image"].shape[1:]) for s in (out if mode == "train" else [out])]
    if mode == "train":
        assert shapes == [(40, 40, 16)] * 4
    else:  # resized to the ROI before the window, then the foreground crop may shrink it
        assert all(s <= r for s, r in zip(shapes[0], (40, 40, 16)))


def test_flags_reach_the_transforms(data_args):
    from monai import transforms as mt

    data_args.RandFlipd_prob, data_args.RandRotate90d_prob = 0.7, 0.3
    data_args.RandScaleIntensityd_prob, data_args.RandShiftIntensityd_prob = 0.6, 0.4
    data_args.a_min, data_args.a_max = -100.0, 200.0
    transforms = build_transforms(data_settings(data_args), "train").transforms
    by_type = {}
    for t in transforms:
        by_type.setdefault(type(t).__name__, []).append(t)
    assert [t.prob for t in by_type["RandFlipd"]] == [0.7, 0.7, 0.7]
    assert [t.flipper.spatial_axis for t in by_type["RandFlipd"]] == [0, 1, 2]
    assert by_type["RandRotate90d"][0].prob == 0.3 and by_type["RandRotate90d"][0].max_k == 3
    assert by_type["RandScaleIntensityd"][0].prob == 0.6
    assert by_type["RandShiftIntensityd"][0].prob == 0.4
    window = by_type["ScaleIntensityRanged"][0].scaler
    assert (window.a_min, window.a_max, window.b_min, window.b_max, window.clip) == (-100.0, 200.0, 0.0, 1.0, True)
    crop = by_type["RandCropByPosNegLabeld"][0].cropper
    assert (crop.spatial_size, crop.pos_ratio, crop.num_samples, crop.image_threshold) == ((32, 32, 16), 0.5, 4, 0)
    assert isinstance(transforms[2], mt.Orientationd) and transforms[2].ornt_transform.axcodes == "RAS"
    spacing = by_type["Spacingd"][0]
    assert tuple(spacing.spacing_transform.pixdim) == (1.5, 1.5, 2.0)


def test_bad_transform_arguments():
    with pytest.raises(UserError, match="unknown --dataset .brats.; valid names: btcv, acdc"):
        get_transforms("brats")
    with pytest.raises(UserError, match="mode must be one of train, eval"):
        get_transforms("btcv", "test")
    with pytest.raises(UserError, match="ROI size"):
        get_transforms("btcv", "train", roi_size=(32, 0, 16))


# --------------------------------------------------------------------------- datasets and loaders


def test_dataset_kind_follows_use_normal_dataset(data_args):
    from monai.data import CacheDataset

    assert isinstance(build_dataset(data_settings(data_args), "training", "train"), CacheDataset)
    data_args.use_normal_dataset = True
    assert not isinstance(build_dataset(data_settings(data_args), "training", "train"), CacheDataset)
    data_args.use_normal_dataset = False
    assert not isinstance(build_dataset(data_settings(data_args), "validation", "eval"), CacheDataset)


def test_eval_loader_batches_names_and_affines(data_args):
    batches = list(build_loader(data_settings(data_args), "validation", "eval"))
    assert [b["name"] for b in batches] == [["img0004.nii.gz"], ["img0005.nii.gz"]]
    assert [b["label_name"] for b in batches] == [["label0004.nii.gz"], ["label0005.nii.gz"]]
    for b in batches:
        assert b["image"].shape[:2] == (1, 1) and b["image"].shape == b["label"].shape
        assert tuple(b["image"].affine.shape) == (1, 4, 4)
        check_case(b["image"][0], b["label"][0], 14, b["name"][0])


def test_train_loader_batches_four_crops_per_volume(data_args):
    data_args.batch_size = 2
    loader = build_loader(data_settings(data_args), "training", "train", batch_size=data_args.batch_size)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (8, 1, 32, 32, 16)
    assert tuple(batch["label"].shape) == (8, 1, 32, 32, 16)
    with pytest.raises(ValueError, match="sampler"):
        build_loader(data_settings(data_args), "training", "train", shuffle=True, sampler=[0, 1, 2])


# --------------------------------------------------------------------------- check_case


@pytest.mark.parametrize("as_tensor", [False, True])
def test_check_case(as_tensor):
    wrap = torch.as_tensor if as_tensor else np.asarray
    image = wrap(np.zeros((1, 8, 8, 4), np.float32))
    label = wrap(np.zeros((1, 8, 8, 4), np.float32))
    check_case(image, label, 14, "ok.nii.gz")
    label[0, 0, 0, 0] = 13
    check_case(image, label, 14, "ok.nii.gz")

    with pytest.raises(UserError, match=r"case a\.nii\.gz: image shape \(1, 8, 8, 4\) and label shape \(1, 8, 8, 3\)"):
        check_case(image, wrap(np.zeros((1, 8, 8, 3), np.float32)), 14, "a.nii.gz")
    label[0, 1, 1, 1] = 15
    with pytest.raises(UserError, match=r"case b: max label 15 does not fit --out_channels 14 .*at least 16"):
        check_case(image, label, 14, "b")
    label[0, 1, 1, 1] = -1
    with pytest.raises(UserError, match="case c: label values go down to -1"):
        check_case(image, label, 14, "c")
    label[0, 1, 1, 1] = 0.5
    with pytest.raises(UserError, match="case d: label values are not whole numbers"):
        check_case(image, label, 14, "d")


def test_class_crop_sampling_centres_crops_on_small_organs(tiny_dataset, data_args):
    """--crop_sampling classes: each of the 14 classes is a crop centre equally often, so the
    smallest organ is in a crop far more often than under the release's pos/neg sampling."""
    data_args.roi_x, data_args.roi_y, data_args.roi_z = 8, 8, 8
    item = tiny_dataset.training[0]
    volume = build_transforms(data_settings(data_args), "eval")(item)["label"]
    counts = torch.bincount(volume.flatten().long(), minlength=14)
    smallest = int(torch.where(counts > 0, counts, counts.max() + 1).argmin())

    def share_with_smallest(sampling: str) -> float:
        data_args.crop_sampling = sampling
        transform = build_transforms(data_settings(data_args), "train")
        transform.set_random_state(seed=0)
        crops = [crop["label"] for _ in range(40) for crop in transform(item)]
        return sum(bool((c == smallest).any()) for c in crops) / len(crops)

    share_classes, share_posneg = share_with_smallest("classes"), share_with_smallest("posneg")
    # a centre on the organ itself: at least 1/14 of the crops (its own turn), plus the neighbours'
    assert share_classes >= 1 / 14
    assert share_classes > 2 * share_posneg


def test_the_shipped_synapse_split_is_found_without_a_copy_in_the_data_folder(tmp_path):
    import json

    from data.loading import SHIPPED_SPLITS, load_datalist

    split = json.load(open(os.path.join(SHIPPED_SPLITS, "dataset_synapse_18_12.json")))
    train = {e["image"] for e in split["training"]}
    val = {e["image"] for e in split["validation"]}
    assert len(train) == 18 and len(val) == 12 and not train & val  # the 18 / 12 split, disjoint
    for entry in split["training"] + split["validation"]:
        for key in ("image", "label"):
            (tmp_path / entry[key]).parent.mkdir(exist_ok=True)
            (tmp_path / entry[key]).write_bytes(b"")
    items = load_datalist(str(tmp_path), "dataset_synapse_18_12.json", "validation")
    assert [os.path.basename(i["image"]) for i in items][:2] == ["img0001.nii.gz", "img0002.nii.gz"]
    assert all(i["image"].startswith(str(tmp_path)) for i in items)
