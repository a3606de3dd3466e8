"""PyTorch distributed helpers: the process group and what ranks share."""

from __future__ import annotations

import torch.distributed as dist


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


def gather_cases(results: dict, run_dir: str | None = None) -> dict:
    """Merge every rank's ``{case: metrics}`` on all ranks (a no-op in one process)."""
    if not is_dist():
        return dict(results)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    merged: dict = {}
    for part in gathered:
        merged.update(part or {})
    return merged


def init_from_args(args):
    """Join the process group when launched by torchrun/srun (extended in the distributed issue).

    Returns the device of this rank, or ``None`` when running as one process.
    """
    return None
