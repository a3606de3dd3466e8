"""PyTorch's own distributed engine: process group from the launcher, and what ranks share.

One place reads the launcher's environment:

- ``torchrun``: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``;
- SLURM (``srun``): ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_STEP_NUM_TASKS`` (or
  ``SLURM_NTASKS``), master address ``MASTER_ADDR`` or the first host of the step's node
  list (``SLURM_STEP_NODELIST``, ``SLURM_JOB_NODELIST``), port ``MASTER_PORT`` or 29500;
- neither, with ``--distributed``: the release's launch, one process per visible GPU
  spawned with ``torch.multiprocessing`` (``--dist-url``, ``--world_size`` nodes, ``--rank``);
  without a GPU that is an error naming ``torchrun --nproc_per_node N``.

NCCL on GPU, gloo on CPU; each rank on its own device. Entry points join with
:func:`process_group` and leave with :func:`cleanup`; :func:`launch` runs a job either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchSettings:
    """How a script's processes start (the release's runtime flags, typed).

    Args:
        device: ``--device`` (``None``: CUDA when available).
        distributed: ``--distributed``: several processes (torchrun/srun set the rest;
            without a launcher, one spawned process per GPU).
        world_size: nodes, for the release's spawn launch.
        rank: this node's index, for the release's spawn launch.
        dist_url: rendezvous ``tcp://HOST:PORT`` of the release's spawn launch.
        dist_backend: process-group backend (``None``: nccl on GPU, gloo on CPU).
    """

    device: str | None = None
    distributed: bool = False
    world_size: int = 1
    rank: int = 0
    dist_url: str = "tcp://127.0.0.1:23456"
    dist_backend: str | None = None


@dataclass(frozen=True)
class DistEnv:
    """What a launcher told this process."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "none"


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list (the rendezvous host of an ``srun`` step).

    Examples: ``gpu[012-015,020],cpu7`` -> ``gpu012``; ``nodeA,nodeB`` -> ``nodeA``;
    ``rack[1-2]-n[07-08]`` -> ``rack1-n07`` (zero padding kept, one bracket per level).

    Raises:
        ValueError: an empty list or unbalanced brackets.
    """
    text = nodelist.strip()
    host, depth = [], 0
    for char in text:  # the first host expression ends at the first comma outside brackets
        if char == "," and depth == 0:
            break
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                break
        host.append(char)
    first = "".join(host)
    if not first or depth != 0 or first.startswith("["):
        raise ValueError(f"cannot read a host name from SLURM node list {nodelist!r}")
    # each bracket group [a-b,c,...] stands for its first value: a
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0].strip(), first)


def _env_int(env, name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"launcher variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"launcher variable {name}={value!r} is not an integer") from None


def read_launcher_env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The launcher's view of this process, or ``None`` when no launcher set several processes.

    ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) wins over SLURM, so ``torchrun`` inside an
    ``srun`` step works. A SLURM step counts as a launch with more than one task
    (``SLURM_STEP_NUM_TASKS``, else ``SLURM_NTASKS``); the master address is ``MASTER_ADDR``
    or the first host of ``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST``
    (the node of the step's task 0), the port ``MASTER_PORT`` or 29500.

    Raises:
        ValueError: a variable that is not an integer, or a rank outside ``[0, world size)``.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        found = DistEnv(
            rank=_env_int(env, "RANK"),
            local_rank=_env_int(env, "LOCAL_RANK", 0),
            world_size=_env_int(env, "WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_env_int(env, "MASTER_PORT", 29500),
            launcher="torchrun",
        )
    elif "SLURM_PROCID" in env:
        tasks = _env_int(env, "SLURM_STEP_NUM_TASKS", _env_int(env, "SLURM_NTASKS", 1))
        if tasks <= 1:
            return None
        nodelist = (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                    or env.get("SLURM_NODELIST") or "127.0.0.1")
        found = DistEnv(
            rank=_env_int(env, "SLURM_PROCID"),
            local_rank=_env_int(env, "SLURM_LOCALID", 0),
            world_size=tasks,
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            master_port=_env_int(env, "MASTER_PORT", 29500),
            launcher="slurm",
        )
    else:
        return None
    if not 0 <= found.rank < found.world_size:
        raise ValueError(f"{found.launcher} gave rank {found.rank} outside a world of {found.world_size} processes")
    return found


def device_for(local_rank: int, requested: str | None) -> torch.device:
    """This rank's device: ``cuda:<local rank>`` on GPU machines unless ``--device cpu``."""
    if requested is not None and torch.device(requested).type == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


#: How long a rank waits for the others where the work per rank is uneven (the merge of
#: sharded cases: a rank with one case more waits a whole case). The default group keeps
#: PyTorch's timeouts (10 min NCCL, 30 min gloo), so a hang in training still fails fast.
GATHER_TIMEOUT = timedelta(hours=24)

_gather_group = None  # gloo group with GATHER_TIMEOUT, made with the default group


def init_process_group(env: DistEnv, requested_device: str | None = None, backend: str | None = None) -> torch.device:
    """Join the process group described by ``env``; returns this rank's device.

    Also makes a gloo group with :data:`GATHER_TIMEOUT` for :func:`gather_cases`.
    """
    global _gather_group
    device = device_for(env.local_rank, requested_device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
        _gather_group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
    logger.info("rank %d/%d (%s, local rank %d) on %s with %s", env.rank, env.world_size, env.launcher,
                env.local_rank, device, backend)
    return device


def join_group(settings: LaunchSettings) -> torch.device | None:
    """Join the process group when a launcher started several processes.

    Returns this rank's device, or ``None`` when the job runs as one process.
    """
    if dist.is_available() and dist.is_initialized():
        return device_for(int(os.environ.get("LOCAL_RANK", 0)), settings.device)
    env = _launcher_env()
    if env is None or env.world_size <= 1:
        return None
    return init_process_group(env, settings.device, settings.dist_backend)


def resolve_device(name: str | None) -> torch.device:
    """``--device`` to a ``torch.device``; CUDA when available and none is named.

    Raises:
        UserError: not a device name, or CUDA asked for where there is none.
    """
    from utils.errors import UserError

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


@contextlib.contextmanager
def process_group(settings: LaunchSettings):
    """``with process_group(settings) as device:`` join the launcher's group, if a launcher
    started several processes, and leave it at the end when it was joined here. ``device``
    is this rank's device, or ``--device`` (:func:`resolve_device`) in one process."""
    joined_here = not is_dist()
    try:
        yield join_group(settings) or resolve_device(settings.device)
    finally:
        if joined_here:
            cleanup()


# --------------------------------------------------------------------------- the release's --distributed


def _launcher_env() -> DistEnv | None:
    """:func:`read_launcher_env` of this process; a malformed launcher variable is a ``UserError``."""
    from utils.errors import UserError

    try:
        return read_launcher_env()
    except ValueError as err:
        raise UserError(f"cannot join the process group: {err}") from None


def launched() -> bool:
    """Whether a launcher (torchrun, srun) started this process, or a group is already joined."""
    return is_dist() or _launcher_env() is not None


def needs_spawn(settings: LaunchSettings) -> bool:
    """``--distributed`` without a launcher: the release's one-process-per-GPU launch."""
    return settings.distributed and not launched()


def launch(fn, job, settings: LaunchSettings, prog: str):
    """Run ``fn(job, device)`` in this process's group — the only process, or one rank of a
    torchrun/srun launch — or, with ``--distributed`` and no launcher, once in each of one
    spawned process per GPU (:func:`spawn_script`).

    Returns:
        ``fn``'s result here, or ``None`` in the parent of spawned processes.
    """
    import functools

    if needs_spawn(settings):
        spawn_script(functools.partial(_in_group, fn, settings), job, settings, prog)
        return None
    return _in_group(fn, settings, job)


def _in_group(fn, settings: LaunchSettings, job):
    with process_group(settings) as device:
        return fn(job, device)


def spawn_gpus(settings: LaunchSettings, prog: str) -> int:
    """GPUs :func:`spawn_script` starts a process for.

    Raises:
        UserError: no GPU in use (none visible, or ``--device cpu``): the release's launch
            is GPU only; the message names ``torchrun --nproc_per_node N`` for CPU runs.
    """
    from utils.errors import UserError

    gpus = torch.cuda.device_count()
    requested = settings.device
    if gpus == 0 or (requested is not None and torch.device(requested).type == "cpu"):
        raise UserError(f"--distributed without a launcher starts one process per GPU, but no GPU is in use here; "
                        f"on CPU start the processes with torchrun --nproc_per_node N {prog} ... (gloo backend), "
                        "or drop --distributed")
    return gpus


def spawn_script(fn, job, settings: LaunchSettings, prog: str) -> None:
    """Run ``fn(job)`` in one spawned process per local GPU (:func:`spawn_local`).

    SIGTERM/SIGUSR1 sent to this parent are passed on to the children (a training rank
    then stops after its batch). A child that stops on a ``UserError`` prints it as one
    line and exits with status 2, which comes back here as a ``UserError``.
    """
    import functools
    import signal

    import torch.multiprocessing as mp

    from utils.errors import EXIT_USER_ERROR, UserError

    nprocs = spawn_gpus(settings, prog)
    signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None]
    previous = {s: signal.signal(s, _forward_signal) for s in signals}
    try:
        spawn_local(functools.partial(_script_worker, fn, prog), job, settings, nprocs=nprocs)
    except mp.ProcessExitedException as err:
        if err.exit_code == EXIT_USER_ERROR:
            raise UserError("a spawned process stopped on the error above") from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _script_worker(fn, prog: str, job) -> None:
    import sys

    from utils.errors import EXIT_USER_ERROR, UserError

    try:
        fn(job)
    except UserError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        sys.exit(EXIT_USER_ERROR)


STOP_SIGNALS = tuple(s for s in ("SIGTERM", "SIGUSR1") if hasattr(__import__("signal"), s))
"""What SLURM preemption, ``scancel`` and ``timeout`` send (to the whole process group)."""


def ignore_stop_signals(worker_id: int = 0) -> None:  # noqa: ARG001 - DataLoader worker_init_fn API
    """A data-loading worker's ``worker_init_fn``: leave SIGTERM/SIGUSR1 to the main process,
    which stops at a safe point and ends the workers itself (a worker killed by the signal
    would otherwise crash the main process with "DataLoader worker is killed")."""
    import signal

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class StopRequested(Exception):
    """SIGTERM or SIGUSR1 arrived while :func:`stop_on_signals` was active."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stop_signal: list = []  # the stop signal received while stop_on_signals() is active


def _record_stop(signum, frame) -> None:  # noqa: ARG001 - signal API
    _stop_signal.append(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGTERM/SIGUSR1 are recorded and :func:`check_stop` raises
    :class:`StopRequested` at the next safe point (the evaluation jobs check between tile
    batches and cases: every file is written atomically and a case is marked finished
    last). Raising from the handler itself could land anywhere, even inside logging's
    locks. Outside the main thread: no change.

    Blocks nest: a driver (sweep, transfer matrix, band analysis, demo) holds one around
    all of its units and calls :func:`check_stop` between them; the block of a unit run
    inside it (an evaluation job) then records into the driver's, so a signal that arrives
    as the unit ends is still seen by the driver, which starts nothing new."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if all(signal.getsignal(getattr(signal, name)) is _record_stop for name in STOP_SIGNALS):
        yield  # inside an enclosing block: it records, and it clears at its own end
        return
    _stop_signal.clear()
    previous = {name: signal.signal(getattr(signal, name), _record_stop) for name in STOP_SIGNALS}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
        _stop_signal.clear()


def check_stop() -> None:
    """Raise :class:`StopRequested` if a stop signal arrived under :func:`stop_on_signals`."""
    if _stop_signal:
        raise StopRequested(_stop_signal[0])


def pending_stop() -> int | None:
    """The stop signal recorded under :func:`stop_on_signals` so far (``None``: none), for a loop
    with its own handlers (the trainer's) that starts inside a driver's block."""
    return _stop_signal[0] if _stop_signal else None


def _forward_signal(signum, frame) -> None:  # noqa: ARG001 - signal API
    import multiprocessing

    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def spawn_local(fn, job, settings: LaunchSettings, nprocs: int) -> None:
    """The release's ``--distributed`` launch without a launcher: one process per local GPU.

    Sets the torchrun variables for each child, so the rest of the code sees one kind
    of launch. ``--world_size`` counts nodes and ``--rank`` is this node's index.
    Each child leaves the process group when ``fn`` returns.
    """
    import torch.multiprocessing as mp

    host, port = _parse_dist_url(settings.dist_url)
    mp.spawn(_spawned, args=(fn, job, settings, nprocs, host, port), nprocs=nprocs, join=True)


def _spawned(local_rank: int, fn, job, settings: LaunchSettings, nprocs: int, host: str, port: int) -> None:
    os.environ.update(
        RANK=str(settings.rank * nprocs + local_rank), LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(settings.world_size * nprocs), MASTER_ADDR=host, MASTER_PORT=str(port),
    )
    try:
        fn(job)
    finally:
        cleanup()


def _parse_dist_url(url: str) -> tuple[str, int]:
    match = re.match(r"^(?:tcp://)?([^:/]+):(\d+)$", url)
    if not match:
        raise ValueError(f"--dist-url must look like tcp://HOST:PORT, got {url!r}")
    return match.group(1), int(match.group(2))


# --------------------------------------------------------------------------- what ranks share


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device | None = None) -> float:
    """Mean of a float over ranks (itself in one process)."""
    if not is_dist():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device or "cpu")
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def all_gather_objects(obj, group=None) -> list:
    """Every rank's ``obj`` on every rank (``[obj]`` in one process)."""
    if not is_dist():
        return [obj]
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def gather_cases(results: dict) -> dict:
    """Merge every rank's ``{case: metrics}`` on all ranks (a no-op in one process).

    Ranks reach this point when their own cases are done, which can be far apart (an
    uneven split, cases of different sizes): the exchange goes through the gloo group
    with :data:`GATHER_TIMEOUT`, not the default group's 10/30-minute timeout.
    """
    merged: dict = {}
    for part in all_gather_objects(results, group=_gather_group if is_dist() else None):
        merged.update(part or {})
    return merged


def cleanup() -> None:
    """Leave the process group (every group of this process); a no-op outside one."""
    global _gather_group
    if is_dist():
        dist.destroy_process_group()
    _gather_group = None
