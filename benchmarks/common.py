"""What every benchmark script sets up the same way."""

from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch


def benchmark_device(name: str, threads: Optional[int]) -> Tuple[torch.device, Callable[[], None]]:
    """``(device, sync)``: the device asked for, ``torch.set_num_threads(threads)`` when given, and a
    function that waits for the device (CUDA kernels are asynchronous; a no-op elsewhere)."""
    device = torch.device(name)
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return device, sync


def time_interleaved(calls: Mapping[str, Callable[[], object]], warmup: int, reps: int,
                     sync: Callable[[], None], label: str = "") -> Dict[str, List[float]]:
    """Seconds of each call over ``reps`` rounds after ``warmup`` untimed ones, the calls interleaved (in
    turn, the order reversed every other round) so that a machine's drift falls on all of them alike."""
    names = list(calls)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
        print(f"{label + ': ' if label else ''}rep {rep + 1}/{warmup + reps} done", file=sys.stderr, flush=True)
    return times
