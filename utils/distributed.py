"""PyTorch's own distributed engine: process group from the launcher, and what ranks share.

One place reads the launcher's environment:

- ``torchrun``: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``;
- SLURM (``srun``): ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, master address
  from the first host of ``SLURM_JOB_NODELIST`` (port ``MASTER_PORT`` or 29500);
- neither, with ``--distributed``: the release's launch, one process per visible GPU
  spawned with ``torch.multiprocessing`` (``--dist-url``, ``--world_size`` nodes, ``--rank``).

NCCL on GPU, gloo on CPU; each rank on its own device.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


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
    """First host name of a SLURM node list such as ``gpu[012-015,020],cpu7`` -> ``gpu012``."""
    nodelist = nodelist.strip()
    match = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not match:
        raise ValueError(f"cannot read a host name from SLURM node list {nodelist!r}")
    prefix, _, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


def read_launcher_env(environ: dict | None = None) -> DistEnv | None:
    """The launcher's view of this process, or ``None`` when no launcher set several processes."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="slurm",
        )
    return None


def device_for(local_rank: int, requested: str | None) -> torch.device:
    """This rank's device: ``cuda:<local rank>`` on GPU machines unless ``--device cpu``."""
    if requested is not None and torch.device(requested).type == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_process_group(env: DistEnv, requested_device: str | None = None, backend: str | None = None) -> torch.device:
    """Join the process group described by ``env``; returns this rank's device."""
    device = device_for(env.local_rank, requested_device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    logger.info("rank %d/%d (%s, local rank %d) on %s with %s", env.rank, env.world_size, env.launcher,
                env.local_rank, device, backend)
    return device


def init_from_args(args) -> torch.device | None:
    """Join the process group when a launcher started several processes.

    Returns this rank's device, or ``None`` when the job runs as one process.
    """
    if dist.is_available() and dist.is_initialized():
        return device_for(int(os.environ.get("LOCAL_RANK", 0)), getattr(args, "device", None))
    env = read_launcher_env()
    if env is None or env.world_size <= 1:
        return None
    return init_process_group(env, getattr(args, "device", None), getattr(args, "dist_backend", None))


def spawn_local(fn, args, nprocs: int) -> None:
    """The release's ``--distributed`` launch without a launcher: one process per local GPU.

    Sets the torchrun variables for each child, so the rest of the code sees one kind
    of launch. ``--world_size`` counts nodes and ``--rank`` is this node's index.
    """
    import torch.multiprocessing as mp

    host, port = _parse_dist_url(args.dist_url)
    mp.spawn(_spawned, args=(fn, args, nprocs, host, port), nprocs=nprocs, join=True)


def _spawned(local_rank: int, fn, args, nprocs: int, host: str, port: int) -> None:
    os.environ.update(
        RANK=str(args.rank * nprocs + local_rank), LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(args.world_size * nprocs), MASTER_ADDR=host, MASTER_PORT=str(port),
    )
    fn(args)


def _parse_dist_url(url: str) -> tuple[str, int]:
    match = re.match(r"^(?:tcp://)?([^:/]+):(\d+)$", url)
    if not match:
        raise ValueError(f"--dist-url must look like tcp://HOST:PORT, got {url!r}")
    return match.group(1), int(match.group(2))


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


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` on every rank (``[obj]`` in one process)."""
    if not is_dist():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_cases(results: dict, run_dir: str | None = None) -> dict:
    """Merge every rank's ``{case: metrics}`` on all ranks (a no-op in one process)."""
    merged: dict = {}
    for part in all_gather_objects(results):
        merged.update(part or {})
    return merged


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
