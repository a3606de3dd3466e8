"""Tiny models and volumes shared by the attack tests (CPU, seconds)."""

import torch
import torch.nn as nn

N_CLASSES = 3


class CountingModel(nn.Module):
    """A tiny conv net that counts its forward passes and records its mode at each."""

    def __init__(self, in_channels: int = 1, n_classes: int = N_CLASSES):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.norm = nn.BatchNorm3d(4)  # behaves differently in train mode: catches a missing eval()
        self.head = nn.Conv3d(4, n_classes, 1)
        self.calls = 0
        self.modes = []

    def forward(self, x):
        self.calls += 1
        self.modes.append(self.training)
        return self.head(torch.relu(self.norm(self.conv(x))))


def make_model(in_channels: int = 1, dtype=torch.float32, seed: int = 0) -> CountingModel:
    """A freshly seeded :class:`CountingModel` in ``dtype``."""
    torch.manual_seed(seed)
    return CountingModel(in_channels).to(dtype)


def make_batch(shape=(2, 1, 16, 16, 16), dtype=torch.float32, seed: int = 1):
    """Uniform random images in [0, 1] ``shape`` and random labels ``[B, 1, H, W, D]``, reproducible."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(shape, generator=gen, dtype=dtype)
    labels = torch.randint(0, N_CLASSES, (shape[0], 1, *shape[2:]), generator=gen).to(dtype)
    return images, labels
