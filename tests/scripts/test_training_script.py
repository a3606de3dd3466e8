"""End to end: run_normal_or_adv_training.py on the tiny phantom dataset with a tiny UNETR (CPU)."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal

import pytest
import torch

import run_normal_or_adv_training as script
import training.trainer as tr
from data import sampling
from engine import jobs
from training import optim, run as training
from utils import seeding
from networks import build_model
from networks.checkpoint import read_checkpoint
from engine.jobs import adv_subdir_name


def run_folder(args):
    """``(run folder, checkpoint to resume)`` the training script derives from its flags."""
    job = jobs.training_job(args)
    return job.run_dir, job.resume_from


def make_trainer(args, model, device, **kwargs):
    """The trainer the training script builds for these flags (loss, optimiser, schedule, attack)."""
    return training.build_trainer(jobs.training_job(args), model, device, **kwargs)

TINY = ["--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4",
        "--roi_x", "16", "--roi_y", "16", "--roi_z", "16", "--infer_overlap", "0", "--sw_batch_size", "4",
        "--device", "cpu", "--workers", "0", "--seed", "0"]

MODES = {
    "normal": [],
    "adversarial": ["--adv_training_mode", "--attack_name", "pgd", "--steps", "1", "--eps", "4"],
    "vaft": ["--adv_training_mode", "--freq_reg_mode", "--attack_name", "vafa-3d", "--steps", "1",
             "--block_size", "8", "8", "8", "--val_attack", "--val_attack_cases", "1"],
}

# The release README's training command (the paper's code release), placeholders filled in below.
SEED_COMMAND = """python run_normal_or_adv_training.py --model_name unet-r --in_channels 1 --out_channel 14 --feature_size=16 --batch_size=3 --max_epochs 5000 --optim_lr=1e-4 --lrschedule=warmup_cosine --infer_overlap=0.5 \\
--save_checkpoint \\
--dataset btcv --data_dir=<PATH_OF_DATASET> \\
--json_list=dataset_synapse_18_12.json \\
--use_pretrained \\
--pretrained_path=<PATH_OF_PRETRAINED_MODEL> \\
--save_model_dir=<PATH_TO_SAVE_ADVERSARIALLY_TRAINED_MODEL> \\
--val_every 15 \\
--adv_training_mode --freq_reg_mode \\
--attack_name vafa-3d --q_max 20 --steps 20 --block_size 32 32 32 --use_ssim_loss"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_list(tiny_dataset, tmp_path_factory):
    """A JSON list of 2 training and 1 validation case of the shared tiny dataset (absolute paths)."""
    content = json.loads(open(tiny_dataset.json_path).read())
    root = str(tiny_dataset.data_dir)
    absolute = lambda items: [{k: os.path.join(root, v) for k, v in item.items()} for item in items]  # noqa: E731
    small = {"training": absolute(content["training"][:2]), "validation": absolute(content["validation"][:1])}
    path = tmp_path_factory.mktemp("lists") / "small.json"
    path.write_text(json.dumps(small))
    return ["--data_dir", root, "--json_list", str(path), "--warmup_epochs", "1"] + TINY


def run(argv, capsys):
    """``main(argv)`` -> ``(exit code, stderr)``, whether it returned or exited; closes the log file."""
    try:
        code = script.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_vafa", False)]:
            root.removeHandler(handler)
            handler.close()
    return code, capsys.readouterr().err


def metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    for fragment in fragments:
        assert fragment in last, last


# --------------------------------------------------------------------------- parsing


def test_release_command_parses_unchanged(tmp_path):
    command = SEED_COMMAND.replace("\\\n", " ").replace("<PATH_OF_DATASET>", str(tmp_path / "data"))
    command = command.replace("<PATH_OF_PRETRAINED_MODEL>", str(tmp_path / "model.pt"))
    command = command.replace("<PATH_TO_SAVE_ADVERSARIALLY_TRAINED_MODEL>", str(tmp_path / "out"))
    argv = command.split()[2:]
    args = script.parse_args(argv)
    assert args.out_channels == 14 and args.batch_size == 3 and args.max_epochs == 5000 and args.val_every == 15
    assert args.adv_training_mode and args.freq_reg_mode and args.use_pretrained and args.save_checkpoint
    assert args.lrschedule == "warmup_cosine" and args.optim_name == "adamw" and args.amp
    assert args.freq_reg_norm == "relative" and args.freq_reg_weight == 1.0 and not args.val_attack
    assert adv_subdir_name(args) == "vafa_q_max_20.0_i_20_3d_dct_32x32x32_use_ssim_loss_True"
    assert run_folder(args)[0] == os.path.join(str(tmp_path / "out"), adv_subdir_name(args))


def test_seed_readme_training_commands_parse(tmp_path):
    """Every training command of the release README in the shared folder next to the repository, when it is there."""
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "seed")
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith("000_")] if os.path.isdir(folder) else []
    if not files:
        pytest.skip("release README (shared/seed/000_*.txt) not available")
    commands = []
    for path in files:
        text = open(path).read().replace("\\\n", " ")
        commands += [line for line in text.splitlines() if line.startswith("python run_normal_or_adv_training.py")]
    assert commands
    for command in commands:
        for placeholder in ("<PATH_OF_DATASET>", "<PATH_OF_PRETRAINED_MODEL>", "<PATH_TO_SAVE_ADVERSARIALLY_TRAINED_MODEL>"):
            command = command.replace(placeholder, str(tmp_path / placeholder.strip("<>").lower()))
        script.parse_args(command.split()[2:])


@pytest.mark.parametrize("argv, fragment", [
    (["--freq_reg_mode"], "--freq_reg_mode needs --adv_training_mode"),
    (["--resume", "--resume_latest"], "--resume needs --checkpoint_dir"),
    (["--resume", "--checkpoint_dir", "x"], "exactly one of --resume_latest"),
    (["--resume_latest"], "need --resume"),
    ([], "--save_model_dir is required"),
    (["--resume", "--resume_best", "--checkpoint_dir", "x", "--resume_but_restart"], "pass --save_model_dir"),
    (["--debugging", "--val_every", "0"], "--val_every must be at least 1"),
    (["--debugging", "--use_pretrained"], "--pretrained_path is required"),
], ids=["freq-without-adv", "resume-without-dir", "resume-without-which", "latest-without-resume", "no-output",
        "restart-without-output", "val-every", "pretrained-without-path"])
def test_conflicting_flags_end_with_one_line(argv, fragment, capsys):
    code, err = run(["--data_dir", "d", *argv], capsys)
    assert_one_line_error(code, err, fragment)
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the three modes


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_epochs_end_to_end(mode, small_list, tmp_path, capsys):
    argv = small_list + MODES[mode] + ["--max_epochs", "2", "--val_every", "1", "--save_checkpoint",
                                       "--save_model_dir", str(tmp_path), "--exp_name", f"test-{mode}"]
    code, err = run(argv, capsys)
    assert code == 0, err
    args = script.parse_args(argv)
    run_dir = os.path.join(str(tmp_path), adv_subdir_name(args)) if mode != "normal" else str(tmp_path)
    assert os.path.isdir(run_dir)
    for name in ("args.json", "log.out", "metrics.csv", "model_latest.pt", "model_best.pt"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert json.loads(open(os.path.join(run_dir, "args.json")).read())["exp_name"] == f"test-{mode}"

    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    expected = {"epoch", "loss", "lr", "val_dice_pct", "epoch_time"}
    if mode == "vaft":
        expected |= {"loss_clean", "loss_adv", "loss_freq", "val_dice_adv_pct", "val_dice_clean_attacked_pct"}
    assert expected <= set(rows[0]), rows[0]
    assert float(rows[0]["lr"]) == 0.0 and float(rows[1]["lr"]) > 0  # warmup_cosine: epoch 0 at lr 0 (release)
    for row in rows:
        assert 0.0 <= float(row["val_dice_pct"]) <= 100.0
        if mode == "vaft":
            total = float(row["loss_clean"]) + float(row["loss_adv"]) + float(row["loss_freq"])
            assert float(row["loss"]) == pytest.approx(total, rel=1e-5)
            assert float(row["val_dice_adv_pct"]) >= 0.0

    ckpt = read_checkpoint(os.path.join(run_dir, "model_latest.pt"))
    # the checkpoint keeps the release's fraction; metrics.csv names its unit
    assert ckpt["epoch"] == 1 and 100 * ckpt["best_acc"] == pytest.approx(max(float(r["val_dice_pct"]) for r in rows))
    assert not any(k.startswith("module.") for k in ckpt["model_state_dict"])
    assert ckpt["scheduler_state_dict"]["last_epoch"] == 2
    log = open(os.path.join(run_dir, "log.out")).read()
    assert "epoch 1/1" in log and "training finished" in log


# --------------------------------------------------------------------------- resume and preemption


def _weights(path):
    return read_checkpoint(path)["model_state_dict"]


def test_preempted_run_resumes_to_the_uninterrupted_result(small_list, tmp_path, capsys, monkeypatch):
    """SIGTERM after the first batch of epoch 1 -> resume -> the same weights and metrics as one 2-epoch run."""
    common = small_list + MODES["adversarial"] + ["--max_epochs", "2", "--val_every", "1", "--save_checkpoint",
                                                  "--lrschedule", "cosine_anneal", "--optim_lr", "1e-3"]
    whole = str(tmp_path / "whole")
    code, err = run(common + ["--save_model_dir", whole], capsys)
    assert code == 0, err

    def preempt(self, epoch, index, terms):
        if epoch == 1 and index == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    parts = str(tmp_path / "parts")
    handler_before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(tr.Trainer, "on_batch_end", preempt)
        code, err = run(common + ["--save_model_dir", parts], capsys)
    assert code == 0, err
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the run put the previous handler back
    sub = adv_subdir_name(script.parse_args(common + ["--save_model_dir", parts]))
    run_dir = os.path.join(parts, sub)
    assert [r["epoch"] for r in metrics(run_dir)] == ["0"]
    assert read_checkpoint(os.path.join(run_dir, "model_latest.pt"))["epoch"] == 0
    assert "stopped by SIGTERM during epoch 1" in err and "--resume --resume_latest --checkpoint_dir" in err

    # a fresh start in that folder is refused: it would overwrite the checkpoint
    code, err = run(common + ["--save_model_dir", parts], capsys)
    assert_one_line_error(code, err, "already holds model_latest.pt", "--resume --resume_latest")

    code, err = run(common + ["--resume", "--resume_latest", "--checkpoint_dir", parts], capsys)
    assert code == 0, err
    resumed, reference = metrics(run_dir), metrics(os.path.join(whole, sub))
    assert [r["epoch"] for r in resumed] == ["0", "1"]
    for a, b in zip(resumed, reference):
        assert {k: v for k, v in a.items() if k != "epoch_time"} == {k: v for k, v in b.items() if k != "epoch_time"}
    final, expected = _weights(os.path.join(run_dir, "model_latest.pt")), _weights(os.path.join(whole, sub, "model_latest.pt"))
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


def test_resume_with_more_epochs_continues_the_run(small_list, tmp_path, capsys):
    """Stop by --max_epochs 1, resume with --max_epochs 2: equals a 2-epoch run (normal training)."""
    common = small_list + ["--val_every", "5", "--save_checkpoint", "--lrschedule", "constant", "--optim_lr", "1e-3"]
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    assert run(common + ["--max_epochs", "2", "--save_model_dir", whole], capsys)[0] == 0
    assert run(common + ["--max_epochs", "1", "--save_model_dir", parts], capsys)[0] == 0
    assert not os.path.exists(os.path.join(parts, "model_best.pt"))  # no validation yet
    code, err = run(common + ["--max_epochs", "2", "--resume", "--resume_latest", "--checkpoint_dir", parts], capsys)
    assert code == 0, err
    assert [r["epoch"] for r in metrics(parts)] == ["0", "1"] and metrics(parts)[1]["val_dice_pct"] == ""
    final, expected = _weights(os.path.join(parts, "model_latest.pt")), _weights(os.path.join(whole, "model_latest.pt"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    # nothing left to do: the run has its 2 epochs
    code, err = run(common + ["--max_epochs", "2", "--resume", "--resume_latest", "--checkpoint_dir", parts], capsys)
    assert code == 0 and "nothing to do" in err
    assert len(metrics(parts)) == 2


# --------------------------------------------------------------------------- other runs and errors


def test_debugging_saves_nothing(small_list, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(small_list + ["--max_epochs", "1", "--val_every", "1", "--save_checkpoint", "--debugging",
                                  "--save_model_dir", str(out)], capsys)
    assert code == 0, err
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def _checkpoint(path, feature_size):
    torch.manual_seed(0)
    model = build_model("unet-r", in_channels=1, out_channels=14, img_size=(16, 16, 16), feature_size=feature_size,
                        hidden_size=48, mlp_dim=96, num_heads=4)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"epoch": 3, "best_acc": 0.5, "epoch_acc": 0.5, "model_state_dict": model.state_dict()}, path)
    return path


def test_checkpoint_of_another_architecture_is_one_line(small_list, tmp_path, capsys):
    wrong = _checkpoint(str(tmp_path / "f16" / "model.pt"), feature_size=16)
    out = tmp_path / "out"
    code, err = run(small_list + ["--max_epochs", "1", "--save_model_dir", str(out), "--pretrained_path", wrong], capsys)
    assert_one_line_error(code, err, "does not fit the model", "--feature_size")
    assert not out.exists()  # refused before any folder was made

    _checkpoint(str(tmp_path / "old" / "model_latest.pt"), feature_size=16)
    code, err = run(small_list + ["--resume", "--resume_latest", "--checkpoint_dir", str(tmp_path / "old")], capsys)
    assert_one_line_error(code, err, "does not fit the model")


def test_pretrained_weights_start_the_run(small_list, tmp_path, capsys):
    start = _checkpoint(str(tmp_path / "clean" / "model.pt"), feature_size=8)
    out = str(tmp_path / "out")
    code, err = run(small_list + ["--max_epochs", "1", "--val_every", "1", "--save_checkpoint", "--save_model_dir", out,
                                  "--use_pretrained", "--pretrained_path", start], capsys)
    assert code == 0, err
    assert "initial weights from" in open(os.path.join(out, "log.out")).read()
    # epoch 0 trains at lr 0 (warmup_cosine), so the weights are still the pretrained ones
    saved, initial = _weights(os.path.join(out, "model_latest.pt")), _weights(start)
    assert all(torch.equal(saved[k], initial[k]) for k in initial)


def test_missing_resume_checkpoint_names_the_folder(small_list, tmp_path, capsys):
    code, err = run(small_list + ["--adv_training_mode", "--attack_name", "fgsm", "--resume", "--resume_best",
                                  "--checkpoint_dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "no checkpoint to resume", os.path.join(str(tmp_path), "fgsm_eps_4"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="spawns one process per GPU when GPUs exist")
def test_distributed_without_launcher_or_gpu_is_one_line(small_list, tmp_path, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    code, err = run(small_list + ["--distributed", "--save_model_dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "torchrun --nproc_per_node")
