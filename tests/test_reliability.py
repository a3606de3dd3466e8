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
from tests.scripts.helpers import eval_flags, load_script, make_tiny_checkpoint, run_main

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


# --------------------------------------------------------------------------- round 3: drivers and studies


import studies.sweep as sweep_engine  # noqa: E402
import studies.transfer as transfer_engine  # noqa: E402
from tests.scripts.helpers import data_flags, tiny_model_flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    return load_script(name, f"reliability_{name}")


def _sweep_argv(tiny_dataset, checkpoint, out, *extra):
    # Gaussian noise: no gradients, a cell is one prediction pair on the tiny model
    return ["--attack", "gn", "--grid", "std=4,8", "--out", str(out), *tiny_model_flags(),
            *data_flags(tiny_dataset.data_dir, tiny_dataset.json_name), "--pretrained_path", checkpoint,
            "--max_cases", "1", "--infer_overlap", "0", *extra]


def _cell_overall(out):
    return {p.parent.parent.name: json.loads(p.read_text())["overall"] for p in sorted((out / "runs").rglob("results.json"))}


def test_a_stop_as_a_sweep_cell_ends_starts_no_other_cell_and_a_rerun_equals_an_unbroken_sweep(
        tiny_dataset, checkpoint, tmp_path, monkeypatch, capsys):
    main = _script("sweep").main
    assert main(_sweep_argv(tiny_dataset, checkpoint, tmp_path / "unbroken")) == 0
    capsys.readouterr()
    real, ran = sweep_engine.run_cell, []

    def stopped_as_it_ends(args):  # SIGTERM arrives after the cell's last safe point
        ran.append(args.std)
        code = real(args)
        os.kill(os.getpid(), signal.SIGTERM)
        return code

    monkeypatch.setattr(sweep_engine, "run_cell", stopped_as_it_ends)
    code = main(_sweep_argv(tiny_dataset, checkpoint, tmp_path / "b"))
    captured = capsys.readouterr()
    one_line_error(code, captured.err, 143, "sweep.py: stopped by SIGTERM")
    assert ran == [4.0] and "|" not in captured.out and not (tmp_path / "b" / "tables.md").exists()
    finished = snapshot(tmp_path / "b" / "runs")
    monkeypatch.setattr(sweep_engine, "run_cell", real)
    assert main(_sweep_argv(tiny_dataset, checkpoint, tmp_path / "b")) == 0
    assert _cell_overall(tmp_path / "b") == _cell_overall(tmp_path / "unbroken")
    after = snapshot(tmp_path / "b" / "runs")
    assert {k: after[k] for k in finished} == finished  # the finished cell was reused, not redone


@pytest.mark.parametrize("outcome, status, line", [(143, 143, "stopped by SIGTERM"), (138, 138, "stopped by SIGUSR1"),
                                                   ("ctrl-c", 130, "interrupted"), (1, 2, "failed with exit status 1")])
def test_a_cell_that_stops_ends_the_sweep_with_its_status(outcome, status, line, tiny_dataset, checkpoint, tmp_path,
                                                         monkeypatch, capsys):
    def cell(args):  # a runner in another process reports its exit status; Ctrl-C lands in this one
        if outcome == "ctrl-c":
            raise KeyboardInterrupt
        return outcome

    monkeypatch.setattr(sweep_engine, "run_cell", cell)
    code, err = run_main(_script("sweep").main, _sweep_argv(tiny_dataset, checkpoint, tmp_path), capsys)
    lines = [x for x in err.splitlines() if x.startswith("sweep.py:")]
    assert code == status and len(lines) == 1 and line in lines[0] and "Traceback" not in err, err
    assert "log.out" not in err


def test_a_sweep_cell_refuses_a_checkpoint_whose_weights_changed(tiny_dataset, tmp_path, capsys):
    path = make_tiny_checkpoint(str(tmp_path / "ckpt" / "model.pt"), seed=0)
    main = _script("sweep").main
    assert main(_sweep_argv(tiny_dataset, path, tmp_path / "out")) == 0
    before = snapshot(tmp_path / "out" / "runs")
    time.sleep(0.01)
    make_tiny_checkpoint(path, seed=1)  # retrained weights saved over the old file
    code, err = run_main(main, _sweep_argv(tiny_dataset, path, tmp_path / "out"), capsys)
    one_line_error(code, err, 2, "other contents of checkpoint")
    assert "cell 'std=4'" in err and snapshot(tmp_path / "out" / "runs") == before
    code, err = run_main(main, _sweep_argv(tiny_dataset, path, tmp_path / "out", "--overwrite"), capsys)
    assert code == 0, err


def test_a_touched_but_equal_checkpoint_is_still_the_same(tiny_dataset, checkpoint, tmp_path, monkeypatch, capsys):
    local = tmp_path / "model.pt"
    shutil.copy(checkpoint, local)
    main = _script("sweep").main
    assert main(_sweep_argv(tiny_dataset, str(local), tmp_path / "out")) == 0
    os.utime(local, ns=(1, 1))  # same bytes, another modification time: the hash decides
    monkeypatch.setattr(sweep_engine, "run_cell", lambda args: pytest.fail("a finished cell ran again"))
    code, err = run_main(main, _sweep_argv(tiny_dataset, str(local), tmp_path / "out"), capsys)
    assert code == 0, err


@pytest.mark.parametrize("damage", ["{", '{"overall": {}}'])
def test_a_damaged_results_json_of_a_sweep_cell_is_redone_with_a_warning(damage, tiny_dataset, checkpoint, tmp_path,
                                                                          caplog):
    main = _script("sweep").main
    assert main(_sweep_argv(tiny_dataset, checkpoint, tmp_path)) == 0
    results = next((tmp_path / "runs").rglob("results.json"))
    good = json.loads(results.read_text())["overall"]
    results.write_text(damage)
    assert main(_sweep_argv(tiny_dataset, checkpoint, tmp_path)) == 0
    assert json.loads(results.read_text())["overall"] == good
    assert "is unreadable or incomplete" in caplog.text


def _read_only(monkeypatch, under):
    """Every write of this tool under the folder ``under`` fails as on a read-only mount (tests
    run as root here, where a folder's mode does not stop a write)."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir).startswith(os.path.abspath(under)):
            raise OSError(errno.EROFS, "Read-only file system", dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_sweep_report_only_on_a_read_only_out_is_one_line(tiny_dataset, checkpoint, tmp_path, monkeypatch, capsys):
    main = _script("sweep").main
    assert main(_sweep_argv(tiny_dataset, checkpoint, tmp_path)) == 0
    before = snapshot(tmp_path)
    _read_only(monkeypatch, tmp_path)
    code, err = run_main(main, _sweep_argv(tiny_dataset, checkpoint, tmp_path, "--report_only"), capsys)
    one_line_error(code, err, 1, "Read-only file system")
    assert snapshot(tmp_path) == before


def _transfer_argv(finished_argv, run_dir, out, checkpoint, *extra):
    return ["--out_dir", str(out), "--model", "A", checkpoint, " ".join(tiny_model_flags()), "--adv", "A",
            str(run_dir), *data_flags(*_data_of(finished_argv)), "--max_cases", "2", "--infer_overlap", "0", *extra]


def _data_of(argv):
    return argv[argv.index("--data_dir") + 1], argv[argv.index("--json_list") + 1]


def test_a_transfer_cell_never_reuses_a_result_of_other_weights(finished, tmp_path, capsys):
    argv, run_dir = finished
    path = str(tmp_path / "target.pt")
    shutil.copy(argv[argv.index("--pretrained_path") + 1], path)
    main = _script("transfer_matrix").main
    assert main(_transfer_argv(argv, run_dir, tmp_path / "t", path)) == 0
    first = json.loads((tmp_path / "t" / "transfer.json").read_text())["dice_clean"]["A"]["A"]
    before = snapshot(tmp_path / "t")
    capsys.readouterr()
    time.sleep(0.01)
    make_tiny_checkpoint(path, seed=3)  # the same path now holds other weights
    code, err = run_main(main, _transfer_argv(argv, run_dir, tmp_path / "t", path), capsys)
    one_line_error(code, err, 2, "other contents of checkpoint")
    assert "A -> A" in err and snapshot(tmp_path / "t") == before
    code, err = run_main(main, _transfer_argv(argv, run_dir, tmp_path / "t", path, "--overwrite"), capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "transfer.json").read_text())["dice_clean"]["A"]["A"] != first


def test_a_transfer_cell_with_other_data_flags_is_not_reused(finished, tmp_path, capsys):
    argv, run_dir = finished
    checkpoint = argv[argv.index("--pretrained_path") + 1]
    main = _script("transfer_matrix").main
    assert main(_transfer_argv(argv, run_dir, tmp_path / "t", checkpoint)) == 0
    before = snapshot(tmp_path / "t")
    code, err = run_main(main, _transfer_argv(argv, run_dir, tmp_path / "t", checkpoint, "--infer_overlap", "0.5"),
                         capsys)
    one_line_error(code, err, 2, "infer_overlap")
    assert snapshot(tmp_path / "t") == before


def test_a_damaged_transfer_cell_is_redone_and_a_stop_ends_the_matrix(finished, tmp_path, monkeypatch, capsys,
                                                                       caplog):
    argv, run_dir = finished
    checkpoint = argv[argv.index("--pretrained_path") + 1]
    main = _script("transfer_matrix").main
    real = transfer_engine.run_cell

    def stopped_as_it_ends(*args):
        found = real(*args)
        os.kill(os.getpid(), signal.SIGTERM)
        return found

    monkeypatch.setattr(transfer_engine, "run_cell", stopped_as_it_ends)
    code = main(_transfer_argv(argv, run_dir, tmp_path / "t", checkpoint))
    captured = capsys.readouterr()
    one_line_error(code, captured.err, 143, "transfer_matrix.py: stopped by SIGTERM")
    assert "dice_adv (rows" not in captured.out
    monkeypatch.setattr(transfer_engine, "run_cell", real)
    results = tmp_path / "t" / "cells" / "A__on__A" / "results.json"
    good = json.loads(results.read_text())["overall"]
    results.write_text("{")
    assert main(_transfer_argv(argv, run_dir, tmp_path / "t", checkpoint)) == 0
    assert "is unreadable or incomplete" in caplog.text
    assert json.loads(results.read_text())["overall"] == good


def test_frequency_bands_faults_are_one_line(finished, tmp_path, monkeypatch, capsys):
    argv, run_dir = finished
    main = _script("frequency_bands").main
    with monkeypatch.context() as patch:
        _read_only(patch, tmp_path / "bands")
        code, err = run_main(main, [str(run_dir), "--out", str(tmp_path / "bands")], capsys)
    one_line_error(code, err, 1, "Read-only file system")
    before = snapshot(run_dir)
    (run_dir / "results.json").write_text('{"args": {}}')
    code, err = run_main(main, [str(run_dir), "--out", str(tmp_path / "bands")], capsys)
    one_line_error(code, err, 2, "results.json is unreadable or incomplete")
    assert {k: v for k, v in snapshot(run_dir).items() if k != "results.json"} == {
        k: v for k, v in before.items() if k != "results.json"}


def _tiny_training(dataset, folder, *extra):
    return ["--data_dir", dataset.data_dir, "--json_list", dataset.json_name, "--workers", "0", "--device", "cpu",
            "--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4",
            "--roi_x", "32", "--roi_y", "32", "--roi_z", "16", "--max_epochs", "1", "--val_every", "1", "--warmup_epochs", "0",
            "--save_checkpoint", "--save_model_dir", str(folder), *extra]


def test_a_second_training_into_a_locked_folder_is_refused(tiny_dataset, tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "log.out").write_text("the first run's log\n")
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first run holds it
    try:
        before = snapshot(folder)
        code, err = run_main(train_script.main, _tiny_training(tiny_dataset, folder), capsys)
    finally:
        os.close(fd)
    one_line_error(code, err, 2, "another run is writing to")
    assert "--save_model_dir" in err and snapshot(folder) == before
    assert (folder / "log.out").read_text() == "the first run's log\n"


def test_training_faults_name_a_command_that_works(tiny_dataset, tmp_path, monkeypatch, capsys):
    import training.trainer as trainer

    folder = tmp_path / "m"
    argv = _tiny_training(tiny_dataset, folder, "--max_epochs", "2", "--precision", "fp32")
    real, saves = trainer.save_checkpoint, []

    def full_at_the_second_epoch(ckpt, path):
        saves.append(ckpt["epoch"])
        if ckpt["epoch"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(ckpt, path)

    monkeypatch.setattr(trainer, "save_checkpoint", full_at_the_second_epoch)
    code, err = run_main(train_script.main, argv, capsys)
    one_line_error(code, err, 1, "No space left on device")
    resume = err.split("run the same command plus ")[1].split(")")[0].split()
    assert resume[:2] == ["--resume", "--resume_latest"], err
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    code, err = run_main(train_script.main, argv[:-2] + ["--precision", "bf16"] + resume, capsys)
    one_line_error(code, err, 2, "was trained with --precision fp32, this resume asks for --precision bf16")
    code, err = run_main(train_script.main, argv + resume, capsys)
    assert code == 0, err
    assert torch.load(folder / "model_latest.pt", weights_only=False)["epoch"] == 1


def _air(a, affine):
    return np.full(a.shape, -1000.0, np.float32), affine


def _all_nan(a, affine):
    return np.full(a.shape, np.nan, np.float32), affine


def _int16_below_window(a, affine):
    return np.full(a.shape, -2000, np.int16), affine


def _plus_inf(a, affine):
    a = a.astype(np.float32)
    a[5, 5, 5] = np.inf  # the window would clip it to 1 without a word
    return a, affine


@pytest.mark.parametrize("transform, fragment", [
    (_air, "nothing to segment"), (_int16_below_window, "nothing to segment"),
    (_all_nan, "NaN or Inf voxels"), (_plus_inf, "1 NaN or Inf voxels"),
])
def test_cases_with_nothing_to_segment_are_refused_before_the_attack(transform, fragment, dataset, checkpoint,
                                                                     tmp_path, capsys):
    image, _ = _first_val(dataset)
    _rewrite(image, transform)
    code, err = run_main(gen.main, eval_flags(dataset, checkpoint, tmp_path / "out", *PGD), capsys)
    one_line_error(code, err, 2, fragment)
    assert os.path.basename(image) in err
    assert not list((tmp_path / "out").rglob("adv_*"))  # refused before any attack


def test_a_one_voxel_volume_is_refused_naming_the_case(dataset, checkpoint, tmp_path, capsys):
    image, label = _first_val(dataset)
    nib.save(nib.Nifti1Image(np.full((1, 1, 1), 100.0, np.float32), nib.load(image).affine), image)
    nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), nib.load(label).affine), label)
    code, err = run_main(gen.main, eval_flags(dataset, checkpoint, tmp_path / "out", *PGD), capsys)
    one_line_error(code, err, 2, "(1, 1, 1) voxels after the foreground crop")
    assert os.path.basename(image) in err


def test_a_truncated_saved_adversarial_volume_is_one_line(finished, capsys):
    argv, run_dir = finished
    adv = run_dir / "imagesTsAdv" / "adv_img0004.nii.gz"
    adv.write_bytes(adv.read_bytes()[:200])
    flags = list(argv)
    flags[flags.index("--save_adv_images_dir")] = "--adv_images_dir"
    code, err = run_main(inf.main, flags + ["--debugging"], capsys)
    one_line_error(code, err, 2, f"cannot read {adv}")


def test_a_truncated_training_image_is_found_before_training(dataset, tmp_path, capsys):
    with open(dataset.json_path) as f:
        image = os.path.join(dataset.data_dir, json.load(f)["training"][0]["image"])
    raw = gzip.decompress(open(image, "rb").read())
    with open(image, "wb") as f:
        f.write(gzip.compress(raw[: len(raw) - 1000]))
    code, err = run_main(train_script.main, _tiny_training(dataset, tmp_path / "m"), capsys)
    one_line_error(code, err, 2, f"cannot read image file {image}")
    assert not (tmp_path / "m" / "metrics.csv").exists()


def test_swin_unetr_with_a_one_voxel_bottleneck_is_refused_at_parse_time(capsys):
    code, err = run_main(train_script.main, ["--data_dir", "x", "--debugging", "--model_name", "swin-unetr",
                                             "--roi_x", "32", "--roi_y", "32", "--roi_z", "32"], capsys)
    one_line_error(code, err, 2, "more than one bottleneck voxel")


def test_compile_on_a_cpu_says_so_once(caplog):
    from networks.precision import _COMPILE_NOTED, compiled

    _COMPILE_NOTED.clear()
    model = torch.nn.Linear(2, 2)
    compiled(model, True)
    compiled(model, True)
    assert caplog.text.count("--compile on a CPU") == 1
    assert compiled(model, False) is model


# --------------------------------------------------------------------------- round 3: signals to the drivers


def _wait_for_glob(folder, pattern, proc, timeout=300):
    deadline = time.time() + timeout
    while not list(folder.rglob(pattern)):
        assert proc.poll() is None and time.time() < deadline, f"{pattern} never appeared under {folder}"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_to_a_sweeps_process_group_exits_143_and_the_rerun_equals_an_unbroken_sweep(
        tiny_dataset, checkpoint, tmp_path):
    def argv(out):
        return ["--attack", "pgd", "--grid", "eps=4,8", "--steps", "20", "--out", str(out), *tiny_model_flags(),
                *data_flags(tiny_dataset.data_dir, tiny_dataset.json_name), "--pretrained_path", checkpoint,
                "--max_cases", "2", "--infer_overlap", "0", "--save_dtype", "float32"]

    unbroken = _start(argv(tmp_path / "a"), "scripts/sweep.py")
    assert unbroken.wait(timeout=900) == 0
    proc = _start(argv(tmp_path / "b"), "scripts/sweep.py")
    _wait_for_glob(tmp_path / "b", "cases/*.json", proc)  # mid-cell: its first case is finished
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("sweep.py:")]
    assert proc.returncode == 143, err
    assert "Traceback" not in err and len(lines) == 1 and "stopped by SIGTERM" in lines[0], err
    assert "|" not in out and not (tmp_path / "b" / "tables.md").exists()
    resumed = _start(argv(tmp_path / "b"), "scripts/sweep.py")
    assert resumed.wait(timeout=900) == 0
    assert _cell_overall(tmp_path / "b") == _cell_overall(tmp_path / "a")
    a, b = snapshot(tmp_path / "a" / "runs"), snapshot(tmp_path / "b" / "runs")
    volumes = [k for k in a if "images" in k or k.startswith("cases")]
    assert volumes and all(a[k] == b[k] for k in volumes)


@pytest.mark.slow
def test_sigterm_to_the_demos_process_group_during_training_attacks_nothing_and_the_rerun_completes(tmp_path):
    def demo(out):
        return _start(["--out", str(out), "--epochs", "3", "--steps", "1", "--workers", "0", "--device", "cpu",
                       "--precision", "fp32"], "scripts/demo.py")

    unbroken = demo(tmp_path / "a")
    table_a, err = unbroken.communicate(timeout=1800)
    assert unbroken.returncode == 0, err
    proc = demo(tmp_path / "b")
    _wait_for(tmp_path / "b" / "model" / "model_latest.pt", proc, timeout=900)  # epoch 0 done, epoch 1 running
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    lines = [line for line in err.splitlines() if line.startswith("demo.py:")]
    assert proc.returncode == 143, err
    assert "Traceback" not in err and len(lines) == 1 and "stopped by SIGTERM" in lines[0], err
    assert "| clean |" not in out and "demo finished" not in out
    assert not (tmp_path / "b" / "adversarial").exists()  # the half-trained model was not attacked
    resumed = demo(tmp_path / "b")
    table_b, err = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, err
    assert "continuing the stopped training" in table_b

    def tables(text):
        return [line for line in text.splitlines() if line.startswith("|")]

    assert tables(table_b) and tables(table_b) == tables(table_a)


def test_refused_flags_of_a_transfer_cell_are_one_line(finished, tmp_path, capsys):
    argv, run_dir = finished
    checkpoint = argv[argv.index("--pretrained_path") + 1]
    flags = _transfer_argv(argv, run_dir, tmp_path / "t", checkpoint)
    flags[flags.index("--model") + 3] += " --roi_x 33"  # not a multiple of UNETR's patch
    code, err = run_main(_script("transfer_matrix").main, flags, capsys)
    one_line_error(code, err, 2, "the flags of cell A -> A were refused")
    assert "roi" in err


def test_skip_empty_cases_records_the_case_as_skipped(dataset, checkpoint, tmp_path, capsys):
    image, _ = _first_val(dataset)
    _rewrite(image, _air)
    argv = eval_flags(dataset, checkpoint, tmp_path / "out", *PGD, "--skip_empty_cases")
    argv[argv.index("--max_cases") + 1] = "2"
    code, err = run_main(gen.main, argv, capsys)
    assert code == 0, err
    report = json.loads(next((tmp_path / "out").rglob("results.json")).read_text())
    name = os.path.basename(image)
    assert "nothing to segment" in report["skipped"][name]
    assert name not in report["per_case"] and report["overall"]["n_cases"] == 1


def test_a_sweep_on_a_read_only_disk_is_one_line_without_a_log_it_cannot_have(tiny_dataset, checkpoint, tmp_path,
                                                                               monkeypatch, capsys):
    _read_only(monkeypatch, tmp_path)
    code, err = run_main(_script("sweep").main, _sweep_argv(tiny_dataset, checkpoint, tmp_path), capsys)
    one_line_error(code, err, 1, "Read-only file system")
    assert "log.out" not in [line for line in err.splitlines() if ": error: " in line][0]
