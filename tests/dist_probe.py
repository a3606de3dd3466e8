"""Body of the processes ``tests/test_distributed.py`` spawns: light imports only, so the
children start fast (``mp.spawn`` imports the module of the function it runs)."""

from __future__ import annotations

import json
import os

from utils import distributed as dist_utils


def spawned_probe(out: str) -> None:
    """Join the group the spawn's variables describe, merge one entry per rank, record what was seen in ``out``."""
    device = dist_utils.join_group(dist_utils.LaunchSettings(device="cpu"))
    rank, world = dist_utils.rank_and_world()
    merged = dist_utils.gather_cases({rank: os.environ["LOCAL_RANK"]})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": world, "device": str(device), "merged": merged}, f)
