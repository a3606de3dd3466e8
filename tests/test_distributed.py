"""Beyond one process: launcher environments, two CPU ranks over gloo, preemption by a real signal.

The multi-process tests start the scripts the way users do, with
``python -m torch.distributed.run --nproc_per_node 2`` (torchrun), each child on one
thread (``OMP_NUM_THREADS=1``) and under a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import generate_adv_samples as gen
import inference_on_saved_adv_samples as inf
import run_normal_or_adv_training as train_script
from engine.cli import model_settings
from networks.checkpoint import load_model_weights, read_checkpoint
from tests.dist_probe import spawned_probe
from tests.scripts.helpers import data_flags, make_tiny_checkpoint, run_main, tiny_model_flags
from utils import distributed as dist_utils
from engine.jobs import adv_subdir_name, run_cli
from utils.distributed import DistEnv, LaunchSettings, first_slurm_host, read_launcher_env
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID", "GROUP_RANK")
TIMEOUT = 240  # seconds for one launch: generous on a loaded 2-core machine, still fails a hang

# training: a tiny UNETR on 16^3 crops (ROI sides must be multiples of 16)
TINY_TRAIN = ["--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4",
              "--roi_x", "16", "--roi_y", "16", "--roi_z", "16", "--infer_overlap", "0", "--sw_batch_size", "4",
              "--device", "cpu", "--workers", "0", "--seed", "0", "--warmup_epochs", "1"]


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict:
    """This environment without any launcher's variables, one thread, the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start a command in its own session (so a timeout can end it and everything it started)."""
    return subprocess.Popen(argv, cwd=REPO, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)``; on timeout the whole session is killed and the test fails."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[:4]} ... did not finish in {timeout} s (hang?)\n{err[-3000:]}")
    return proc.returncode, out, err


def torchrun(script: str, argv: list[str], nproc: int = 2) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script, *argv]
    return finish(start(cmd))


def metrics_epochs(run_dir: str) -> list[int]:
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.fixture
def no_launcher(monkeypatch):
    """This test process as a plain single-process run, whatever CI runs it under."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- launcher environments


@pytest.mark.parametrize("nodelist, host", [
    ("gpu[012-015,020]", "gpu012"),
    ("nodeA,nodeB", "nodeA"),
    ("gpu[012-015,020],cpu7", "gpu012"),
    ("node7", "node7"),
    ("gpu[3]", "gpu3"),
    ("rack[1-2]-n[07-08]", "rack1-n07"),
    ("cn-[0009-0012]-ib", "cn-0009-ib"),
    (" gpu[5-6] ", "gpu5"),
])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", "[1-2]", "gpu[1-2", "gpu]1"])
def test_first_slurm_host_rejects_malformed_lists(nodelist):
    with pytest.raises(ValueError, match="SLURM node list"):
        first_slurm_host(nodelist)


SLURM_TASK = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[012-015,020]"}


def test_slurm_environment():
    assert read_launcher_env(SLURM_TASK) == DistEnv(rank=5, local_rank=1, world_size=8, master_addr="gpu012",
                                                    master_port=29500, launcher="slurm")
    plain = dict(SLURM_TASK, SLURM_JOB_NODELIST="nodeA,nodeB", MASTER_PORT="21234")
    env = read_launcher_env(plain)
    assert (env.master_addr, env.master_port) == ("nodeA", 21234)
    # an explicit MASTER_ADDR wins; the step's node list wins over the job's
    assert read_launcher_env(dict(SLURM_TASK, MASTER_ADDR="10.0.0.7")).master_addr == "10.0.0.7"
    step = dict(SLURM_TASK, SLURM_STEP_NODELIST="gpu[014-015]", SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1",
                SLURM_LOCALID="0")
    env = read_launcher_env(step)
    assert (env.master_addr, env.world_size, env.rank, env.local_rank) == ("gpu014", 2, 1, 0)
    # only SLURM_NODELIST (older SLURM), and none at all
    old = {k: v for k, v in SLURM_TASK.items() if k != "SLURM_JOB_NODELIST"}
    assert read_launcher_env(dict(old, SLURM_NODELIST="n[1-4]")).master_addr == "n1"
    assert read_launcher_env(old).master_addr == "127.0.0.1"


def test_single_slurm_task_or_no_launcher_is_one_process():
    assert read_launcher_env({}) is None
    assert read_launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "gpu1"}) is None
    # an allocation of 4 tasks, but this step (e.g. srun -n 1) has one
    assert read_launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"}) is None


def test_torchrun_environment():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "node9", "MASTER_PORT": "29555",
           "LOCAL_WORLD_SIZE": "2"}
    assert read_launcher_env(env) == DistEnv(rank=3, local_rank=1, world_size=4, master_addr="node9",
                                             master_port=29555, launcher="torchrun")
    # torchrun inside an srun step: torchrun's variables describe this process
    assert read_launcher_env(dict(SLURM_TASK, **env)).launcher == "torchrun"
    defaults = read_launcher_env({"RANK": "0", "WORLD_SIZE": "1"})
    assert (defaults.local_rank, defaults.master_addr, defaults.master_port) == (0, "127.0.0.1", 29500)


@pytest.mark.parametrize("env, fragment", [
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 outside a world of 2"),
    (dict(SLURM_TASK, SLURM_NTASKS="x"), "SLURM_NTASKS='x'"),
    (dict(SLURM_TASK, SLURM_JOB_NODELIST="[1-2]"), "SLURM node list"),
])
def test_malformed_launcher_environment(env, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        read_launcher_env(env)


def test_malformed_environment_is_a_user_error_for_the_scripts(no_launcher, monkeypatch):
    monkeypatch.setenv("RANK", "one")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="cannot join the process group: launcher variable RANK"):
        dist_utils.join_group(LaunchSettings(device="cpu"))


def test_one_process_joins_nothing(no_launcher, monkeypatch):
    args = LaunchSettings(device="cpu")
    with dist_utils.process_group(args) as device:
        assert device == torch.device("cpu") and not dist_utils.is_dist()
    assert dist_utils.rank_and_world() == (0, 1) and dist_utils.gather_cases({"a": 1}) == {"a": 1}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1
    assert dist_utils.join_group(args) is None and dist_utils.launched()
    assert not dist_utils.needs_spawn(LaunchSettings(distributed=True))


PROBE = """
import argparse, json, os, torch.distributed as dist
from utils import distributed as du
with du.process_group(du.LaunchSettings(device="cpu")) as device:
    env = du.read_launcher_env()
    rank, world = du.rank_and_world()
    merged = du.gather_cases({f"case{rank}": {"rank": rank}})
    out = dict(rank=rank, world=world, local_rank=env.local_rank, launcher=env.launcher, device=str(device),
               backend=dist.get_backend(), master=os.environ["MASTER_ADDR"], merged=merged)
out["joined_after"] = dist.is_initialized()
print(json.dumps(out))
"""


def test_faked_slurm_step_forms_a_gloo_group():
    """Two processes with nothing but srun's variables find each other through the node list."""
    port = str(free_port())
    procs = [start([sys.executable, "-c", PROBE], child_env(
        SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost",
        MASTER_PORT=port)) for rank in range(2)]
    outs = []
    for proc in procs:
        code, out, err = finish(proc, timeout=120)
        assert code == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    for rank, out in enumerate(outs):
        assert out["rank"] == out["local_rank"] == rank and out["world"] == 2
        assert (out["launcher"], out["device"], out["backend"], out["master"]) == ("slurm", "cpu", "gloo", "localhost")
        assert out["merged"] == {"case0": {"rank": 0}, "case1": {"rank": 1}}
        assert out["joined_after"] is False  # process_group left the group


@pytest.mark.timeout(180)
def test_spawn_local_sets_the_torchrun_variables(tmp_path, no_launcher):
    """The release's launch without a launcher (``mp.spawn``), on CPU with gloo."""
    settings = LaunchSettings(dist_url=f"tcp://127.0.0.1:{free_port()}", world_size=1, rank=0, device="cpu")
    dist_utils.spawn_local(spawned_probe, str(tmp_path), settings, nprocs=2)
    for rank in range(2):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out == {"world": 2, "device": "cpu", "merged": {"0": "0", "1": "1"}}
    assert not dist_utils.is_dist()


# --------------------------------------------------------------------------- the scripts' --distributed


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@pytest.fixture(scope="module")
def eval_flags(tiny_dataset, checkpoint):
    """Generation flags: tiny UNETR on 32x32x16, both validation cases, PGD with one step."""
    return tiny_model_flags() + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name) + [
        "--use_pretrained", "--pretrained_path", checkpoint, "--max_cases", "2", "--infer_overlap", "0",
        "--attack_name", "pgd", "--steps", "1", "--eps", "8", "--seed", "3"]


@pytest.mark.parametrize("script", ["generate", "inference"])
def test_distributed_without_launcher_or_gpu_is_one_line(script, eval_flags, tmp_path, no_launcher, capsys):
    """The release's --distributed (spawn one process per GPU) with --device cpu: one line naming torchrun."""
    main, extra, prog = {
        "generate": (gen.main, ["--save_adv_images_dir", str(tmp_path)], "generate_adv_samples.py"),
        "inference": (inf.main, ["--adv_images_dir", str(tmp_path), "--no_sub_dir_adv_images"],
                      "inference_on_saved_adv_samples.py"),
    }[script]
    code, err = run_main(main, eval_flags + extra + ["--distributed"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"torchrun --nproc_per_node N {prog}" in lines[0]
    assert os.listdir(tmp_path) == []  # refused before any folder was made


def test_scripts_leave_the_process_group(monkeypatch):
    """run_cli (every entry script's body) leaves the group on success, user error and crash."""
    calls = []
    monkeypatch.setattr(dist_utils, "cleanup", lambda: calls.append(1))

    def fail(args):
        raise UserError("bad input")

    def crash(args):
        raise RuntimeError("crash")

    assert run_cli(lambda args: None, argparse.Namespace(), "x.py") == 0
    assert run_cli(fail, argparse.Namespace(), "x.py") == 2
    with pytest.raises(RuntimeError):
        run_cli(crash, argparse.Namespace(), "x.py")
    assert len(calls) == 3


# --------------------------------------------------------------------------- two ranks, end to end


def test_two_process_training(tiny_dataset, tmp_path):
    """torchrun, 2 CPU ranks, 2 epochs: one metrics row per epoch, a checkpoint one process can load."""
    out = str(tmp_path / "run")
    argv = ["--data_dir", tiny_dataset.data_dir, "--json_list", tiny_dataset.json_name, *TINY_TRAIN,
            "--max_epochs", "2", "--val_every", "1", "--save_checkpoint", "--save_model_dir", out]
    code, stdout, err = torchrun("run_normal_or_adv_training.py", argv)
    assert code == 0, err
    assert "(2 processes)" in err and err.count("training finished") == 1, err  # rank 1 does not repeat it
    assert metrics_epochs(out) == [0, 1]

    ckpt = read_checkpoint(os.path.join(out, "model_latest.pt"))
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model_state_dict"])
    model = model_settings(train_script.parse_args(argv)).build()
    load_model_weights(model, os.path.join(out, "model_latest.pt"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model_state_dict"][key]), key
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, 1, 16, 16, 16))).all()


def _per_case(run_dir) -> dict:
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)["per_case"]


def test_sharded_generation_equals_one_process(eval_flags, tmp_path, capsys):
    """2 ranks x 1 case each == 1 process x 2 cases, case by case and number for number.

    Per-case seeding (``--seed + case index``) makes the PGD random start independent of
    the shard. Exact equality needs the same intra-op thread count on both sides: torchrun
    runs each rank on one thread, and with two threads the float sums of the convolutions
    come out in another order, which flips the sign of near-zero gradients (PGD steps by
    ``sign``) in a few voxels. So the single-process run here also uses one thread.
    """
    sharded_root, single_root = tmp_path / "sharded", tmp_path / "single"
    code, stdout, err = torchrun("generate_adv_samples.py", eval_flags + ["--save_adv_images_dir", str(sharded_root)])
    assert code == 0, err
    sub = adv_subdir_name(gen.parse_args(eval_flags + ["--save_adv_images_dir", str(sharded_root)]))
    sharded = sharded_root / sub
    assert stdout.count("== PGD") == 1, stdout  # the summary once, from rank 0
    # each rank did its own case (index % world)
    assert "[rank 0/2] INFO img0004.nii.gz: Dice" in err and "[rank 1/2] INFO img0005.nii.gz: Dice" in err, err
    report = json.loads((sharded / "results.json").read_text())
    assert report["overall"]["n_cases"] == 2 and report["timing"]["processes"] == 2
    assert sorted(os.listdir(sharded / "cases")) == ["img0004.nii.gz.json", "img0005.nii.gz.json"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, err = run_main(gen.main, eval_flags + ["--save_adv_images_dir", str(single_root)], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    single = _per_case(single_root / sub)
    assert list(report["per_case"]) == list(single)  # merged in the split's order
    assert report["per_case"] == single


# --------------------------------------------------------------------------- preemption by a real signal


@pytest.mark.slow  # two script starts and ten epochs: about 30 s on 2 cores (in-process version: tests/scripts)
def test_sigterm_mid_run_then_resume(tiny_dataset, tmp_path):
    """SIGTERM to a running training process: exit 0 with the last finished epoch saved;
    --resume --resume_latest completes the run with every epoch in metrics.csv once."""
    epochs = 10
    out = str(tmp_path / "run")
    common = [sys.executable, "run_normal_or_adv_training.py", "--data_dir", tiny_dataset.data_dir,
              "--json_list", tiny_dataset.json_name, *TINY_TRAIN, "--max_epochs", str(epochs), "--val_every", "3",
              "--save_checkpoint", "--lrschedule", "cosine_anneal"]
    proc = start(common + ["--save_model_dir", out])
    deadline = time.monotonic() + TIMEOUT
    while not metrics_epochs(out):
        if proc.poll() is not None or time.monotonic() > deadline:
            code, _, err = finish(proc, timeout=5)
            pytest.fail(f"training ended (exit {code}) or stalled before its first epoch\n{err[-3000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 0, err
    done = metrics_epochs(out)
    assert 1 <= len(done) < epochs, f"the run finished before the signal arrived: {done}"
    assert done == list(range(len(done)))
    stopped_in = len(done)
    assert f"stopped by SIGTERM during epoch {stopped_in}" in err, err
    assert read_checkpoint(os.path.join(out, "model_latest.pt"))["epoch"] == stopped_in - 1

    proc = start(common + ["--resume", "--resume_latest", "--checkpoint_dir", out])
    code, _, err = finish(proc)
    assert code == 0, err
    assert f"continuing at epoch {stopped_in}" in err, err
    assert metrics_epochs(out) == list(range(epochs))  # complete, nothing twice
    ckpt = read_checkpoint(os.path.join(out, "model_latest.pt"))
    assert ckpt["epoch"] == epochs - 1 and ckpt["scheduler_state_dict"]["last_epoch"] == epochs
    log = open(os.path.join(out, "log.out")).read()
    assert log.count("stopped by SIGTERM") == 1 and log.count("training finished") == 1
