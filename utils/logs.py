"""Logging set-up shared by the scripts and the jobs: stderr plus, when given, the run folder's log file."""

from __future__ import annotations

import logging
import os
import sys

from utils.distributed import rank_and_world


def setup_logging(log_file: str | None = None, verbose: bool = False) -> None:
    """Log to stderr and, when given, append to ``log_file`` (the run folder's ``log.out``)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_vafa", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    rank, world = rank_and_world()
    tag = f" [rank {rank}/{world}]" if world > 1 else ""  # several processes share one console
    fmt = logging.Formatter(f"%(asctime)s{tag} %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._vafa = True  # type: ignore[attr-defined]
        root.addHandler(handler)
