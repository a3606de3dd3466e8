"""What every benchmark script sets up the same way."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch


def benchmark_device(name: str, threads: Optional[int]) -> Tuple[torch.device, Callable[[], None]]:
    """``(device, sync)``: the device asked for, ``torch.set_num_threads(threads)`` when given, and a
    function that waits for the device (CUDA kernels are asynchronous; a no-op elsewhere)."""
    device = torch.device(name)
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return device, sync
