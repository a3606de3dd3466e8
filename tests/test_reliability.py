"""Fault injection: bad inputs and ordinary faults end in one line (no traceback), never in a
number computed from wrong data, and never cost finished work.

Each case builds the fault on tiny phantom data and checks the exit status, that stderr
is one line without a traceback, and (where a finished run exists) that its files are
byte-identical afterwards. The count of cases is quoted in the README ("Reliability").
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

import generate_adv_samples as gen
import inference_on_saved_adv_samples as inf
import run_normal_or_adv_training as train_script
from tests.scripts.helpers import eval_flags, make_tiny_checkpoint, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

PGD = ["--attack_name", "pgd", "--steps", "1", "--eps", "8"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@pytest.fixture
def dataset(tiny_dataset, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset.data_dir, root)
    copy = type(tiny_dataset)(data_dir=str(root), json_name=tiny_dataset.json_name,
                              json_path=str(root / tiny_dataset.json_name))
    return copy


def one_line_error(code, err, expected_code=2, fragment=""):
    """Exit status, no traceback, and exactly one line saying what went wrong (log lines aside)."""
    lines = [line for line in err.splitlines() if ": error: " in line or "stopped by" in line]
    assert code == expected_code, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "log.out"}


# --------------------------------------------------------------------------- bad flags

BAD_EVAL_FLAGS = [
    (["--attack_name", "bim", "--alpha", "nan"], "--alpha must be a finite number"),
    (["--attack_name", "gn", "--std", "nan"], "--std must be a finite number"),
    (["--attack_name", "pgd", "--eps", "nan"], "--eps must be a finite number"),
    (["--attack_name", "pgd", "--eps", "inf"], "--eps must be a finite number"),
    (["--attack_name", "pgd", "--eps", "-1"], "--eps must be at least 0"),
    (["--attack_name", "vafa-3d", "--block_size", "8", "8", "8", "--q_min", "0"], "q_min must be > 0"),
    (["--attack_name", "vafa-3d", "--block_size", "8", "8", "8", "--q_min", "-1"], "--q_min must be at least 0"),
    (["--attack_name", "vafa-3d", "--block_size", "8", "8", "8", "--q_max", "nan"], "--q_max must be a finite"),
    (["--attack_name", "pgd", "--steps", "0"], "--steps must be at least 1"),
    (["--a_min", "300", "--a_max", "200"], "--a_min must be below --a_max"),
    (["--a_min", "nan", "--a_max", "200"], "--a_min must be below --a_max"),
    (["--a_min", "-100"], "--a_min and --a_max go together"),
    (["--b_min", "0", "--b_max", "2"], "0 <= b_min < b_max <= 1"),
    (["--max_cases", "-1"], "--max_cases must be at least 1"),
    (["--sw_batch_size", "0"], "--sw_batch_size must be at least 1"),
    (["--workers", "-1"], "--workers must not be negative"),
    (["--space_x", "0"], "--space_x must be a finite spacing"),
    (["--space_z", "nan"], "--space_z must be a finite spacing"),
    (["--infer_overlap", "nan"], "--infer_overlap must be in [0, 1)"),
    (["--RandFlipd_prob", "2"], "--RandFlipd_prob must be a probability"),
    (["--attack_batch_size", "0"], "--attack_batch_size must be at least 1"),
    (["--dropout_rate", "nan"], "--dropout_rate must be a finite number"),
]


@pytest.mark.parametrize("flags, fragment", BAD_EVAL_FLAGS)
def test_bad_flags_are_one_line(flags, fragment, tiny_dataset, checkpoint, tmp_path, capsys):
    code, err = run_main(gen.main, eval_flags(tiny_dataset, checkpoint, tmp_path, *PGD, *flags), capsys)
    one_line_error(code, err, 2, fragment)
    assert os.listdir(tmp_path) == []


BAD_TRAINING_FLAGS = [
    (["--optim_lr", "nan"], "--optim_lr must be a finite number"),
    (["--optim_lr", "inf"], "--optim_lr must be a finite number"),
    (["--reg_weight", "-1"], "--reg_weight must be a finite number"),
    (["--freq_reg_weight", "nan"], "--freq_reg_weight must be a finite number"),
]


@pytest.mark.parametrize("flags, fragment", BAD_TRAINING_FLAGS)
def test_bad_training_flags_are_one_line(flags, fragment, capsys):
    code, err = run_main(train_script.main, ["--data_dir", "x", "--debugging", *flags], capsys)
    one_line_error(code, err, 2, fragment)


# --------------------------------------------------------------------------- bad data


def _rewrite(path, transform):
    volume = nib.load(path)
    array, affine = transform(np.asanyarray(volume.dataobj).copy(), volume.affine.copy())
    nib.save(nib.Nifti1Image(array, affine), path)


def _first_val(dataset):
    with open(dataset.json_path) as f:
        entry = json.load(f)["validation"][0]
    return os.path.join(dataset.data_dir, entry["image"]), os.path.join(dataset.data_dir, entry["label"])


def _nan_voxels(a, affine):
    a = a.astype(np.float32)
    a[10:12, 10:12, 5] = np.nan
    return a, affine


def _shifted(a, affine):
    affine[0, 3] += 3.0
    return a, affine


def _other_spacing(a, affine):
    affine[2, 2] *= 1.5
    return a, affine


def _flipped(a, affine):
    affine[0, :] *= -1
    return a, affine


@pytest.mark.parametrize("which, transform, fragment", [
    ("image", _nan_voxels, "NaN or Inf voxels"),
    ("label", _shifted, "affines differ"),
    ("label", _other_spacing, "affines differ"),
    ("label", _flipped, "affines differ"),
])
def test_bad_volumes_are_refused(which, transform, fragment, dataset, checkpoint, tmp_path, capsys):
    image, label = _first_val(dataset)
    _rewrite(image if which == "image" else label, transform)
    argv = eval_flags(dataset, checkpoint, tmp_path / "out", *PGD)
    code, err = run_main(gen.main, argv, capsys)
    one_line_error(code, err, 2, fragment)


def test_truncated_2d_and_4d_files_are_refused(dataset, checkpoint, tmp_path, capsys):
    image, label = _first_val(dataset)
    original = open(image, "rb").read()
    with open(image, "wb") as f:
        f.write(original[: len(original) // 2])
    code, err = run_main(gen.main, eval_flags(dataset, checkpoint, tmp_path / "a", *PGD), capsys)
    one_line_error(code, err, 2, "cannot read image file")
    for shape in ((48, 48), (48, 48, 24, 2)):
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), image)
        code, err = run_main(gen.main, eval_flags(dataset, checkpoint, tmp_path / "b", *PGD), capsys)
        one_line_error(code, err, 2, "a 3D volume [H, W, D] is expected")


def test_a_corrupt_validation_file_is_found_before_training(dataset, tmp_path, capsys):
    image, _ = _first_val(dataset)
    raw = gzip.decompress(open(image, "rb").read())
    with open(image, "wb") as f:
        f.write(gzip.compress(raw[: len(raw) - 1000]))  # a whole gzip stream, too few voxels
    argv = ["--data_dir", dataset.data_dir, "--json_list", dataset.json_name, "--workers", "0", "--device", "cpu",
            "--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4",
            "--roi_x", "32", "--roi_y", "32", "--roi_z", "16", "--max_epochs", "1", "--warmup_epochs", "1",
            "--save_model_dir", str(tmp_path / "m")]
    code, err = run_main(train_script.main, argv, capsys)
    one_line_error(code, err, 2, "cannot read image file")
    assert not (tmp_path / "m" / "metrics.csv").exists()  # refused before any epoch ran


def test_nan_weights_are_refused(tiny_dataset, tmp_path, capsys):
    path = make_tiny_checkpoint(str(tmp_path / "nan.pt"))
    ckpt = torch.load(path)
    next(iter(ckpt["model_state_dict"].values()))[0] = float("nan")
    torch.save(ckpt, path)
    code, err = run_main(gen.main, eval_flags(tiny_dataset, path, tmp_path / "out", *PGD), capsys)
    one_line_error(code, err, 2, "non-finite weights")


def test_duplicate_case_names_are_refused(dataset, checkpoint, tmp_path, capsys):
    with open(dataset.json_path) as f:
        listing = json.load(f)
    first = listing["validation"][0]
    other_dir = os.path.join(dataset.data_dir, "other")
    os.makedirs(other_dir)
    shutil.copy(os.path.join(dataset.data_dir, first["image"]), other_dir)
    listing["validation"].append({"image": os.path.join("other", os.path.basename(first["image"])),
                                  "label": first["label"]})
    with open(dataset.json_path, "w") as f:
        json.dump(listing, f)
    code, err = run_main(gen.main, eval_flags(dataset, checkpoint, tmp_path / "out", *PGD), capsys)
    one_line_error(code, err, 2, "lists two images named")


# --------------------------------------------------------------------------- run folders


@pytest.fixture
def finished(tiny_dataset, checkpoint, tmp_path):
    """A finished 2-case PGD run; returns (argv, run folder)."""
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path / "out", *PGD, "--save_dtype", "float32")
    argv[argv.index("--max_cases") + 1] = "2"
    assert gen.main(argv) == 0
    return argv, tmp_path / "out" / "pgd_alpha_0.01_eps_8.0_i_1"


def test_disk_full_is_one_line_and_keeps_finished_work(finished, monkeypatch, capsys):
    argv, run_dir = finished
    before = snapshot(run_dir)
    (run_dir / "cases" / "img0005.nii.gz.json").unlink()  # one case to redo
    before.pop("cases/img0005.nii.gz.json")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))

    monkeypatch.setattr(nib, "save", full)
    code, err = run_main(gen.main, argv, capsys)
    one_line_error(code, err, 1, "No space left on device")
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if k in before} == before


def test_a_locked_folder_is_refused(finished, capsys):
    argv, run_dir = finished
    fd = os.open(run_dir / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it
    try:
        code, err = run_main(gen.main, argv, capsys)
    finally:
        os.close(fd)
    one_line_error(code, err, 2, "another run is writing to")


def test_a_corrupt_args_json_is_one_line(finished, capsys):
    argv, run_dir = finished
    (run_dir / "args.json").write_text("{")
    code, err = run_main(gen.main, argv, capsys)
    one_line_error(code, err, 2, "args.json is unreadable")


def test_other_settings_never_suggest_overwrite_first(finished, capsys):
    argv, run_dir = finished
    before = snapshot(run_dir)
    code, err = run_main(gen.main, argv + ["--seed", "5"], capsys)
    one_line_error(code, err, 2, "choose another output folder to keep it")
    assert snapshot(run_dir) == before


def test_resume_is_blind_to_trailing_slashes_and_relative_paths(finished, tiny_dataset, monkeypatch, capsys):
    argv, run_dir = finished
    before = snapshot(run_dir)
    moved = list(argv)
    moved[moved.index("--data_dir") + 1] = tiny_dataset.data_dir + "/"
    monkeypatch.chdir(os.path.dirname(tiny_dataset.data_dir))
    moved[moved.index("--data_dir") + 1] = os.path.basename(tiny_dataset.data_dir) + "/"
    assert gen.main(moved) == 0
    after = snapshot(run_dir)
    assert {k: after[k] for k in before if k.startswith(("cases", "images"))} == {
        k: v for k, v in before.items() if k.startswith(("cases", "images"))}


def test_a_smaller_max_cases_keeps_reporting_finished_cases(finished):
    argv, run_dir = finished
    fewer = list(argv)
    fewer[fewer.index("--max_cases") + 1] = "1"
    assert gen.main(fewer) == 0
    assert len(json.loads((run_dir / "results.json").read_text())["per_case"]) == 2


def test_corrupt_or_orphaned_markers_are_redone(finished, caplog):
    argv, run_dir = finished
    (run_dir / "cases" / "img0004.nii.gz.json").write_text("{")
    (run_dir / "imagesTsAdv" / "adv_img0005.nii.gz").unlink()
    assert gen.main(argv) == 0
    assert (run_dir / "imagesTsAdv" / "adv_img0005.nii.gz").exists()
    assert json.loads((run_dir / "cases" / "img0004.nii.gz.json").read_text())["dice_adv"] is not None
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "is unreadable" in messages and "is gone" in messages


def test_inference_refuses_other_data_flags(finished, capsys):
    argv, run_dir = finished
    argv = [a for a in argv]
    i = argv.index("--save_adv_images_dir")
    argv[i] = "--adv_images_dir"
    code, err = run_main(inf.main, argv + ["--space_x", "2.0", "--debugging"], capsys)
    one_line_error(code, err, 2, "were made with other data flags (space_x)")


def test_attack_batch_size_is_part_of_the_run(finished, capsys):
    argv, _ = finished
    code, err = run_main(gen.main, argv + ["--attack_batch_size", "1"], capsys)
    one_line_error(code, err, 2, "attack_batch_size")


# --------------------------------------------------------------------------- signals to the process group


def _start(argv, script):
    return subprocess.Popen([sys.executable, script, *argv], cwd=os.path.dirname(os.path.dirname(__file__)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signals_to_the_group_stop_generation_cleanly(signum, tiny_dataset, checkpoint, tmp_path):
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path / "out", "--attack_name", "pgd", "--steps", "30",
                      "--eps", "8", "--workers", "2", "--device", "cpu")
    argv[argv.index("--max_cases") + 1] = "2"
    proc = _start(argv, "generate_adv_samples.py")
    run_dir = tmp_path / "out" / "pgd_alpha_0.01_eps_8.0_i_30"
    deadline = time.time() + 180
    while not (run_dir / "args.json").exists() and time.time() < deadline:  # the run has started
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if "error" in line or "stopped" in line]
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and len(lines) == 1 and "run the same command again" in lines[0]
    assert gen.main(argv) == 0  # resumes


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signals_to_the_group_stop_training_with_workers(signum, tiny_dataset, tmp_path):
    argv = ["--data_dir", tiny_dataset.data_dir, "--json_list", tiny_dataset.json_name, "--workers", "2",
            "--device", "cpu", "--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4",
            "--roi_x", "32", "--roi_y", "32", "--roi_z", "16", "--max_epochs", "50", "--val_every", "50",
            "--save_checkpoint", "--save_model_dir", str(tmp_path / "m")]
    proc = _start(argv, "run_normal_or_adv_training.py")
    deadline = time.time() + 180
    while not (tmp_path / "m" / "model_latest.pt").exists() and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "DataLoader worker" not in err


# --------------------------------------------------------------------------- kill -9 and resume


def _wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_during_generation_then_resume_equals_an_unbroken_run(tiny_dataset, checkpoint, tmp_path):
    def argv(out):
        flags = eval_flags(tiny_dataset, checkpoint, out, "--attack_name", "pgd", "--steps", "3", "--eps", "8",
                           "--save_dtype", "float32", "--device", "cpu")
        flags[flags.index("--max_cases") + 1] = "2"
        return flags

    sub = "pgd_alpha_0.01_eps_8.0_i_3"
    unbroken = _start(argv(tmp_path / "a"), "generate_adv_samples.py")
    assert unbroken.wait(timeout=600) == 0
    for kill_after in ("args.json", "cases/img0004.nii.gz.json"):  # mid first case, then mid second case
        proc = _start(argv(tmp_path / "b"), "generate_adv_samples.py")
        _wait_for(tmp_path / "b" / sub / kill_after, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = _start(argv(tmp_path / "b"), "generate_adv_samples.py")
    assert resumed.wait(timeout=600) == 0
    a, b = snapshot(tmp_path / "a" / sub), snapshot(tmp_path / "b" / sub)
    volumes = [k for k in a if k.startswith(("images", "labels", "cases"))]
    assert volumes and all(a[k] == b[k] for k in volumes)
    assert json.loads(a["results.json"])["overall"] == json.loads(b["results.json"])["overall"]


@pytest.mark.slow
def test_kill_9_during_training_then_resume_equals_an_unbroken_run(tiny_dataset, tmp_path):
    def argv(out, *extra):
        return ["--data_dir", tiny_dataset.data_dir, "--json_list", tiny_dataset.json_name, "--workers", "0",
                "--device", "cpu", "--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads",
                "4", "--roi_x", "32", "--roi_y", "32", "--roi_z", "16", "--max_epochs", "4", "--val_every", "2",
                "--save_checkpoint", "--save_model_dir", str(out), "--lrschedule", "constant", *extra]

    assert _start(argv(tmp_path / "a"), "run_normal_or_adv_training.py").wait(timeout=600) == 0
    proc = _start(argv(tmp_path / "b"), "run_normal_or_adv_training.py")
    _wait_for(tmp_path / "b" / "model_latest.pt", proc)  # epoch 0 written; kill while epoch 1 (or its write) runs
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resume = argv(tmp_path / "b", "--resume", "--resume_latest", "--checkpoint_dir", str(tmp_path / "b"))
    assert _start(resume, "run_normal_or_adv_training.py").wait(timeout=600) == 0
    a = torch.load(tmp_path / "a" / "model_latest.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "model_latest.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".tmp_")]


def test_a_folder_from_before_a_new_flag_still_resumes(finished):
    argv, run_dir = finished
    record = json.loads((run_dir / "args.json").read_text())
    for key in ("vafa_normalise", "norm", "loss"):  # flags an older version did not record
        record.pop(key, None)
    (run_dir / "args.json").write_text(json.dumps(record))
    assert gen.main(argv) == 0


def test_a_new_training_run_never_replaces_another_runs_metrics(tiny_dataset, tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    (folder / "args.json").write_text("{}")
    before = snapshot(folder)
    argv = ["--data_dir", tiny_dataset.data_dir, "--json_list", tiny_dataset.json_name, "--workers", "0",
            "--device", "cpu", "--max_epochs", "1", "--warmup_epochs", "1", "--save_model_dir", str(folder)]  # no --save_checkpoint
    code, err = run_main(train_script.main, argv, capsys)
    one_line_error(code, err, 2, "already holds metrics.csv of another run")
    assert snapshot(folder) == before
