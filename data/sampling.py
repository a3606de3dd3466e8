"""Reproducible order and augmentation of training samples, epoch by epoch and rank by rank."""

from __future__ import annotations

import math

import torch

from utils.seeding import derive_seed


class EpochSampler(torch.utils.data.Sampler):
    """Per-epoch shuffle, sharded across processes; yields ``(sample_seed, index)`` keys.

    The order of epoch ``e`` is a permutation drawn from ``derive_seed(seed, e)`` (the
    same on every rank); as ``DistributedSampler`` it is padded by repetition to a
    multiple of the world size and rank ``r`` takes every ``world``-th entry. Each key
    carries the seed of that sample's augmentations, ``derive_seed(seed, e, index)``,
    which :class:`EpochSeededDataset` applies where the sample is loaded (main process
    or a worker, persistent or not): epochs replay identically after a resume.

    Args:
        n: dataset length.
        seed: ``--seed``.
        shuffle: permute each epoch.
        rank, world: this process and the number of processes.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError(f"EpochSampler needs at least one sample, got n={n}")
        self.n, self.seed, self.shuffle, self.rank, self.world = n, int(seed), shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        total = len(self) * self.world
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.world]

    def __iter__(self):
        for index in self.indices():
            yield derive_seed(self.seed, self.epoch, index), index


class EpochSeededDataset(torch.utils.data.Dataset):
    """Wraps a MONAI dataset: ``ds[(seed, index)]`` seeds its random transforms, then loads ``index``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        seed, index = key
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        return self.dataset[index]
