import json
import os

import nibabel as nib
import numpy as np
import pytest

from utils.errors import UserError
from data.phantom import LABEL_NAMES, main, make_phantom_case, phantom_affine, write_phantom_dataset

SMALL = (32, 32, 16)


@pytest.fixture(scope="module")
def default_case():
    return make_phantom_case(rng=0)  # (96, 96, 64), the default size


def test_same_seed_same_case_other_seed_differs():
    a_img, a_lab = make_phantom_case(SMALL, rng=7)
    b_img, b_lab = make_phantom_case(SMALL, rng=np.random.default_rng(7))
    c_img, c_lab = make_phantom_case(SMALL, rng=8)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


def test_default_case_has_all_14_labels(default_case):
    image, label = default_case
    assert image.shape == label.shape == (96, 96, 64)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    np.testing.assert_array_equal(np.unique(label), np.arange(len(LABEL_NAMES)))


def test_intensities_are_hounsfield_units(default_case):
    image, label = default_case
    assert image.min() >= -1024 and image.max() <= 3071
    corner = image[:5, :5, :]  # air outside the body
    assert abs(float(corner.mean()) + 1000) < 20
    inside = (image > -175).mean()  # the default window keeps the body
    assert 0.35 < inside < 0.8

    def mean(organ):
        return float(image[label == LABEL_NAMES.index(organ)].mean())

    assert 40 < mean("liver") < 80
    assert 30 < mean("spleen") < 70
    assert mean("right kidney") > 100 and mean("left kidney") > 100
    assert mean("aorta") > 120 and mean("IVC") > 90
    assert mean("gallbladder") < 30
    fat = image[(label == 0) & (image > -200) & (image < -30)]
    assert fat.size > 1000 and -130 < float(np.median(fat)) < -60
    assert np.percentile(image, 99.9) > 300  # bone


def test_anatomy_is_in_ras_voxel_order(default_case):
    _, label = default_case

    def centroid(organ):
        return np.argwhere(label == LABEL_NAMES.index(organ)).mean(0)

    # axis 0 points to the patient's right, axis 1 anterior, axis 2 superior
    assert centroid("liver")[0] > 48 > centroid("spleen")[0]
    assert centroid("right kidney")[0] > 48 > centroid("left kidney")[0]
    assert centroid("stomach")[1] > centroid("aorta")[1]  # stomach in front of the aorta
    assert centroid("liver")[2] > centroid("right kidney")[2]  # liver above the kidney


def test_bad_geometry_is_refused():
    with pytest.raises(UserError, match="at least 8 voxels"):
        make_phantom_case((4, 32, 32), rng=0)
    with pytest.raises(UserError, match="positive"):
        make_phantom_case(SMALL, (1.0, 0.0, 1.0), rng=0)
    with pytest.raises(UserError, match="orientation"):
        phantom_affine(SMALL, (1, 1, 1), "XYZ")


def test_dataset_layout_json_and_affine(tmp_path):
    from data.loading import load_datalist

    out = tmp_path / "ds"
    json_path = write_phantom_dataset(str(out), n_train=2, n_val=1, shape=SMALL, spacing=(0.8, 0.9, 2.5), seed=1)
    assert json_path == str(out / "dataset.json")
    content = json.loads((out / "dataset.json").read_text())
    assert content["training"] == [
        {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"},
        {"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"},
    ]
    assert content["validation"] == [{"image": "imagesTr/img0003.nii.gz", "label": "labelsTr/label0003.nii.gz"}]
    assert content["labels"]["0"] == "background" and content["labels"]["13"] == "left adrenal"
    assert content["phantom"]["complete"] is True

    img = nib.load(out / "imagesTr" / "img0001.nii.gz")
    lab = nib.load(out / "labelsTr" / "label0001.nii.gz")
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.header.get_zooms(), (0.8, 0.9, 2.5))
    np.testing.assert_allclose(np.diag(img.affine)[:3], (-0.8, -0.9, 2.5))
    assert np.abs(img.affine[:3, 3]).min() > 1  # origin offset
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(img.affine, lab.affine)
    # stored LPS = the RAS case flipped along axes 0 and 1
    ras_image, ras_label = make_phantom_case(SMALL, (0.8, 0.9, 2.5), np.random.default_rng([1, 1]))
    np.testing.assert_array_equal(np.asarray(img.dataobj), ras_image[::-1, ::-1])
    np.testing.assert_array_equal(np.asarray(lab.dataobj), ras_label[::-1, ::-1])

    names = [i["name"] for i in load_datalist(str(out), "dataset.json", "training")]
    assert names == ["img0001.nii.gz", "img0002.nii.gz"]
    assert len(load_datalist(str(out), json_path, "validation")) == 1


def _read_all(folder):
    return {
        os.path.relpath(os.path.join(root, f), folder): open(os.path.join(root, f), "rb").read()
        for root, _, files in os.walk(folder)
        for f in files
    }


def test_same_settings_give_identical_files(tmp_path):
    write_phantom_dataset(str(tmp_path / "a"), 1, 1, SMALL, seed=3)
    write_phantom_dataset(str(tmp_path / "b"), 1, 1, SMALL, seed=3)
    write_phantom_dataset(str(tmp_path / "c"), 1, 1, SMALL, seed=4)
    a, b, c = (_read_all(str(tmp_path / n)) for n in "abc")
    assert a == b
    assert a["imagesTr/img0001.nii.gz"] != c["imagesTr/img0001.nii.gz"]


def test_rerun_skips_up_to_date_and_regenerates_other_settings(tmp_path):
    out = str(tmp_path)
    write_phantom_dataset(out, 2, 1, SMALL, seed=0)
    image = os.path.join(out, "imagesTr", "img0001.nii.gz")
    stamp = os.stat(image).st_mtime_ns
    write_phantom_dataset(out, 2, 1, SMALL, seed=0)
    assert os.stat(image).st_mtime_ns == stamp  # identical settings: nothing rewritten

    write_phantom_dataset(out, 1, 1, SMALL, seed=5)  # fewer cases, other seed
    assert sorted(os.listdir(os.path.join(out, "imagesTr"))) == ["img0001.nii.gz", "img0002.nii.gz"]
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == ["label0001.nii.gz", "label0002.nii.gz"]
    expected, _ = make_phantom_case(SMALL, rng=np.random.default_rng([5, 1]))
    np.testing.assert_array_equal(np.asarray(nib.load(image).dataobj), expected[::-1, ::-1])


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no phantom"):
        write_phantom_dataset(str(tmp_path), 1, 1, SMALL)
    (tmp_path / "dataset.json").write_text('{"training": []}')  # a real dataset's list
    with pytest.raises(UserError, match="not empty and holds no phantom"):
        write_phantom_dataset(str(tmp_path), 1, 1, SMALL)
    assert sorted(os.listdir(tmp_path)) == ["dataset.json", "notes.txt"]


def test_bad_counts_are_refused(tmp_path):
    with pytest.raises(UserError, match="at least one case"):
        write_phantom_dataset(str(tmp_path / "x"), 0, 0, SMALL)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--n_train", "1", "--n_val", "1", "--size", "24", "24", "12", "--seed", "2"]) == 0
    assert str(out / "dataset.json") in capsys.readouterr().out
    assert sorted(os.listdir(out / "imagesTr")) == ["img0001.nii.gz", "img0002.nii.gz"]
    assert nib.load(out / "imagesTr" / "img0001.nii.gz").shape == (24, 24, 12)
    assert main(["--out", str(out), "--size", "4", "24", "12"]) == 2
    assert "at least 8 voxels" in capsys.readouterr().err
