"""Training of volumetric segmentation models: normal, vanilla adversarial (AT) and VAFT.

The loop is a :class:`Trainer` made of hooks (STYLE §9); the variants override one hook,
:meth:`Trainer.train_step`:

================================  =================================================  ====================
flags                             loss per batch (DESIGN §5)                         class
================================  =================================================  ====================
(none)                            ``DiceCE(M(X), Y)``                                :class:`Trainer`
``--adv_training_mode``           ``DiceCE(M(X'), Y)``                               :class:`AdversarialTrainer`
``... --freq_reg_mode``           ``DiceCE(M(X), Y) + DiceCE(M(X'), Y)``              :class:`VAFTTrainer`
                                  ``+ w * L_fr(M(X), M(X'))``
================================  =================================================  ====================

``X'`` is built per batch by the configured attack against the current weights, with
the model in eval mode and no gradient left on its parameters (the attack contract of
``attacks``); it is detached before the training forward pass.

What a run keeps in its folder (rank 0 only, nothing with ``--debugging``): ``args.json``,
``log.out``, ``metrics.csv`` (one row per epoch, rewritten atomically), TensorBoard
events when ``tensorboard`` is installed, and with ``--save_checkpoint``
``model_latest.pt`` after every epoch and ``model_best.pt`` on a new best validation
Dice.

Resuming is exact: a checkpoint is written after the epoch's scheduler step and holds
the optimiser, scheduler, AMP scaler and RNG states; shuffling, augmentation and attack
randomness are seeded from ``(--seed, epoch)`` (augmentation per sample), so a run
stopped after epoch ``e`` and resumed reproduces the uninterrupted run.

Preemption: SIGTERM or SIGUSR1 stops the run after the current batch, without saving
the unfinished epoch; ``model_latest.pt`` of the last completed epoch is already on disk,
and the run ends with exit status 0 (the repository's ``slurm/*.sbatch`` requeue the job
from their USR1 trap, and resume when ``model_latest.pt`` exists).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import os
import platform
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from utils import distributed as dist_utils
from utils.errors import UserError

logger = logging.getLogger(__name__)

LATEST = "model_latest.pt"
BEST = "model_best.pt"
METRICS_FILE = "metrics.csv"
CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- optimiser and schedule


def build_optimizer(args: argparse.Namespace, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The release's optimisers: Adam/AdamW ``(lr, weight_decay)``, SGD with Nesterov momentum.

    Reads ``optim_name``, ``optim_lr``, ``reg_weight`` (weight decay) and ``momentum``.
    """
    name = args.optim_name
    if name == "adamw":
        return torch.optim.AdamW(params, lr=args.optim_lr, weight_decay=args.reg_weight)
    if name == "adam":
        return torch.optim.Adam(params, lr=args.optim_lr, weight_decay=args.reg_weight)
    if name == "sgd":
        return torch.optim.SGD(params, lr=args.optim_lr, momentum=args.momentum, nesterov=True,
                               weight_decay=args.reg_weight)
    raise UserError(f"unknown --optim_name {name!r}; valid names: adamw, adam, sgd")


def warmup_cosine_factor(epoch: int, warmup_epochs: int, max_epochs: int) -> float:
    """Learning-rate factor of the UNETR repository's ``LinearWarmupCosineAnnealingLR``.

    Closed form of that scheduler with ``warmup_start_lr=0`` and ``eta_min=0`` (as the
    release builds it), stepped once per epoch::

        e <  warmup:  e / (warmup - 1)
        e >= warmup:  0.5 * (1 + cos(pi * (e - warmup) / (max_epochs - warmup)))

    Epoch 0 therefore trains at learning rate 0 — a quirk of the release kept on
    purpose so that runs compare with the paper's. Guards where the release divides by
    zero: ``warmup_epochs == 1`` gives factor 0 at epoch 0 (as its recursive form does);
    ``max_epochs <= warmup_epochs`` never leaves the warm-up.
    """
    if epoch < warmup_epochs:
        return epoch / max(warmup_epochs - 1, 1)
    span = max_epochs - warmup_epochs
    if span <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def cosine_factor(epoch: int, max_epochs: int) -> float:
    """Factor of ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=max_epochs, eta_min=0)``."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / max_epochs))


def build_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer):
    """``--lrschedule`` as a per-epoch ``LambdaLR`` (its ``state_dict`` is plain numbers).

    ``warmup_cosine`` and ``cosine_anneal`` as in the release; any other value: ``None``
    (constant learning rate, as the release). The factors are plain functions of the
    current flags, so a resumed run with a larger ``--max_epochs`` follows the new length.
    """
    warmup, max_epochs = args.warmup_epochs, args.max_epochs
    if args.lrschedule == "warmup_cosine":
        def factor(epoch: int) -> float:
            return warmup_cosine_factor(epoch, warmup, max_epochs)
    elif args.lrschedule == "cosine_anneal":
        def factor(epoch: int) -> float:
            return cosine_factor(epoch, max_epochs)
    else:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def amp_dtype_for(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """Autocast dtype: bf16 on CUDA where supported, else fp16; ``None`` on CPU or with ``--noamp``."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --------------------------------------------------------------------------- reproducible data order


def derive_seed(*entropy: int) -> int:
    """A 32-bit seed from several integers (e.g. ``seed, epoch, rank``), free of collisions
    such as ``seed + epoch``."""
    return int(np.random.SeedSequence([int(e) % 2**63 for e in entropy]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler(torch.data.loading.Sampler):
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


class EpochSeededDataset(torch.data.loading.Dataset):
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


def crops_per_volume() -> int:
    """ROI crops ``RandCropByPosNegLabeld`` takes from each training volume (4, as the release)."""
    import inspect

    from data.loading import get_transforms

    return int(inspect.signature(get_transforms).parameters["num_samples"].default)


def build_train_loader(args: argparse.Namespace, rank: int = 0, world: int = 1):
    """Training loader: ``args.batch_size`` volumes per step, each giving 4 crops
    (MONAI's collate flattens them: a batch holds ``4 * batch_size`` crops), ordered and
    augmented reproducibly per epoch (:class:`EpochSampler`)."""
    from monai.data import DataLoader

    from data.loading import build_dataset, check_files, load_datalist

    for item in load_datalist(args.data_dir, args.json_list, "training"):
        check_files(item)  # image and label on one voxel grid, before resampling could hide a mismatch
    dataset = build_dataset(args, "training", "train")
    sampler = EpochSampler(len(dataset), seed=args.seed, shuffle=True, rank=rank, world=world)
    return DataLoader(
        EpochSeededDataset(dataset),
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=args.workers > 0,
    )


def build_val_loader(args: argparse.Namespace, rank: int = 0, world: int = 1):
    """Validation loader over this rank's share of the cases (indices ``rank, rank + world, ...``).

    Returns:
        ``(loader, indices)``: whole volumes one at a time, and their positions in the split.
    """
    from data.loading import build_loader, check_files, load_datalist

    items = load_datalist(args.data_dir, args.json_list, "validation")
    indices = list(range(rank, len(items), world))
    for index in indices:
        check_files(items[index])
    return build_loader(args, "validation", "eval", sampler=indices, shuffle=False), indices


# --------------------------------------------------------------------------- checkpoint content


def rng_state() -> dict:
    """RNG states of torch (CPU, CUDA), numpy and ``random`` as tensors and plain numbers
    (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Optional[Mapping]) -> None:
    """Restore what :func:`rng_state` saved (missing parts are left alone)."""
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["internal"]), s["gauss_next"]))


def read_metrics_rows(path: str, before_epoch: int) -> list[dict]:
    """Rows of an existing ``metrics.csv`` for epochs ``< before_epoch`` (a resume rewrites the rest)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = []
    for row in rows:
        try:
            epoch = int(float(row.get("epoch", "")))
        except ValueError:
            continue
        if epoch < before_epoch:
            kept.append(dict(row))
    return kept


# --------------------------------------------------------------------------- the trainer


class _Interrupted(Exception):
    """Raised inside an epoch when a stop signal arrived (preemption)."""


@dataclass
class TrainingResult:
    """What :meth:`Trainer.fit` reports."""

    best_acc: float = 0.0
    last_acc: Optional[float] = None
    epochs_done: int = 0
    preempted: bool = False
    stop_signal: Optional[str] = None
    run_dir: Optional[str] = None
    history: list = field(default_factory=list)


class Trainer:
    """Normal training: ``DiceCE(M(X), Y)`` per batch; the base of the adversarial variants.

    Hooks, in the order :meth:`fit` calls them per epoch: :meth:`train_epoch` (which
    calls :meth:`train_step` and :meth:`on_batch_end` per batch), :meth:`validate` when
    ``(epoch + 1) % --val_every == 0``, then the scheduler step, ``metrics.csv`` and
    :meth:`save`.

    Args:
        args: the training script's namespace (``engine.cli.parse_training_args``).
        model: the network (not wrapped); it is moved to ``device`` and, in a process
            group of several ranks, wrapped in ``DistributedDataParallel`` (``self.model``;
            ``self.module`` is always the bare network). ``--norm_name batch`` becomes
            ``SyncBatchNorm`` there on CUDA.
        device: where the model and batches live.
        train_loader: batches of ``{"image": [B,C,H,W,D], "label": [B,1,H,W,D]}``.
        val_loader: whole validation volumes, one per batch.
        val_indices: position of each ``val_loader`` case in the split (default
            ``0, 1, ...``), used to merge ranks and to bound ``--val_attack``.
        run_dir: run folder, or ``None`` to write nothing (``--debugging``).
    """

    mode = "normal training"

    def __init__(self, args: argparse.Namespace, model: nn.Module, device: torch.device, *,
                 train_loader: Optional[Iterable] = None, val_loader: Optional[Iterable] = None,
                 val_indices: Optional[Sequence[int]] = None, run_dir: Optional[str] = None):
        from engine.losses import build_dice_ce

        self.args = args
        self.device = torch.device(device)
        self.rank, self.world = dist_utils.rank_and_world()
        self.module = model.to(self.device)
        if self.world > 1:
            if args.norm_name == "batch" and self.device.type == "cuda":
                self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
            elif args.norm_name == "batch":
                logger.warning("SyncBatchNorm needs CUDA: on CPU each process keeps its own batch statistics")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: UNETR's ViT blocks hold norm_cross_attn layers it never calls
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids,
                                                             find_unused_parameters=True)
        else:
            self.model = self.module
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.val_indices = val_indices
        self.run_dir = run_dir
        self.loss_fn = build_dice_ce(args.smooth_nr, args.smooth_dr)
        self.optimizer = build_optimizer(args, self.module.parameters())
        self.scheduler = build_scheduler(args, self.optimizer)
        self.amp_dtype = amp_dtype_for(self.device, not getattr(args, "noamp", False))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._attack = None
        self.start_epoch = 0
        self.best_acc = 0.0
        self.last_acc: Optional[float] = None
        self.rows: list[dict] = []
        self.stop_signal: Optional[str] = None
        self.writer = None

    # ----------------------------------------------------------------- pieces

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def attack(self):
        """The configured attack, run on the bare network (no DDP hooks during its gradients)."""
        if self._attack is None:
            from engine.cli import build_attack_from_args

            self._attack = build_attack_from_args(self.args, self.module, self.loss_fn)
        return self._attack

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def unpack(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [B,C,H,W,D], labels [B,1,H,W,D])`` as plain tensors on the device."""
        from data.loading import check_case

        if isinstance(batch, Mapping):
            images, labels = batch["image"], batch["label"]
            name = batch.get("name", "batch")
        else:
            images, labels = batch[0], batch[1]
            name = "batch"
        images, labels = (torch.Tensor.as_subclass(t, torch.Tensor) for t in (images, labels))
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        check_case(images, labels, self.args.out_channels, name if isinstance(name, str) else ", ".join(map(str, name)))
        return images, labels

    def attack_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels the attack uses: the true ones, or ``--target_class`` everywhere with ``--targeted``."""
        return torch.full_like(labels, self.args.target_class) if self.args.targeted else labels

    def adversarial(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``X'`` against the current weights; the attack switches the model to eval mode and
        back, takes input gradients only (no parameter ``.grad``), and returns it detached."""
        return self.attack(images, self.attack_labels(labels)).detach()

    def optimise(self, compute: Callable[[], Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """One optimiser step on ``compute()["loss"]``; returns every term as a float.

        Gradients are cleared (set to ``None``) right before the training forward pass, so
        the step sees the training loss only. Autocast and the fp16 ``GradScaler`` on CUDA.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            terms = compute()
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {name: float(value.detach()) for name, value in terms.items()}

    # ----------------------------------------------------------------- hooks

    def train_step(self, batch) -> dict[str, float]:
        """Normal training: ``DiceCE(M(X), Y)``."""
        images, labels = self.unpack(batch)
        return self.optimise(lambda: {"loss": self.loss_fn(self.model(images), labels)})

    def on_batch_end(self, epoch: int, index: int, terms: Mapping[str, float]) -> None:
        """Called after every training batch (no-op; for subclasses and tests)."""

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train on every batch of the epoch; returns the mean of each loss term (over
        batches, then over ranks).

        Raises:
            _Interrupted: a stop signal arrived (checked after every batch).
        """
        from tqdm.auto import tqdm

        self.seed_epoch(epoch)
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not self.is_main)
        for index, batch in enumerate(bar):
            terms = self.train_step(batch)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
            self.on_batch_end(epoch, index, terms)
            if self.stop_requested():
                bar.close()
                raise _Interrupted
        if count == 0:
            raise UserError("the training loader yielded no batch; check the 'training' list of --json_list")
        self.optimizer.zero_grad(set_to_none=True)  # free the last step's gradients before validation
        return {name: dist_utils.all_reduce_mean(total / count, self.device) for name, total in sums.items()}

    def seed_epoch(self, epoch: int) -> None:
        """Seed the epoch: sampler order and augmentations from ``(seed, epoch)``, global RNGs
        (attack random starts, noise) from ``(seed, epoch, rank)``."""
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        seed_everything(derive_seed(self.args.seed, epoch, self.rank))

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window argmax ``[1, 1, H, W, D]`` of a whole volume (bare network, eval mode)."""
        from monai.inferers import sliding_window_inference

        args = self.args
        self.module.eval()
        with self.autocast():
            logits = sliding_window_inference(image, (args.roi_x, args.roi_y, args.roi_z), args.sw_batch_size,
                                              self.module, overlap=args.infer_overlap)
        return logits.argmax(dim=1, keepdim=True)

    def validate(self, epoch: int) -> dict[str, float]:
        """Mean validation Dice (per case: Dice per class, background included, NaN-mean over
        classes; then mean over cases — the release's accuracy, in [0, 1]).

        With ``--val_attack`` also ``val_dice_adv``: the first ``--val_attack_cases`` cases
        attacked whole (ROI tiles, as the generation script) and predicted again. Cases are
        sharded across ranks and gathered.
        """
        from tqdm.auto import tqdm

        from engine.evaluation import attack_volume
        from utils.metrics import class_mean, dice_per_class

        if self.val_loader is None:
            return {}
        args = self.args
        roi = (args.roi_x, args.roi_y, args.roi_z)
        indices = self.val_indices if self.val_indices is not None else range(10**9)
        results: dict[int, dict] = {}
        bar = tqdm(self.val_loader, desc=f"validation {epoch}", unit="case", leave=False, disable=not self.is_main)
        for index, batch in zip(indices, bar):
            images, labels = self.unpack(batch)
            entry = {"dice": class_mean(dice_per_class(self.predict(images), labels, args.out_channels))}
            if args.val_attack and index < args.val_attack_cases:
                seed_everything(args.seed + index)  # the same perturbation budget draw every validation
                adv = attack_volume(images, self.attack_labels(labels), self.attack, roi, args.attack_batch_size,
                                    progress=False)
                entry["dice_adv"] = class_mean(dice_per_class(self.predict(adv), labels, args.out_channels))
            results[index] = entry
        merged: dict[int, dict] = {}
        for part in dist_utils.all_gather_objects(results):
            merged.update(part or {})

        def mean(key: str) -> float:
            values = [r[key] for r in merged.values() if key in r and not math.isnan(r[key])]
            return float(np.mean(values)) if values else float("nan")

        out = {"val_dice": mean("dice")}
        if args.val_attack:
            out["val_dice_adv"] = mean("dice_adv")
        return out

    # ----------------------------------------------------------------- checkpoints

    def checkpoint(self, epoch: int) -> dict:
        """The checkpoint dict of the state after ``epoch`` (scheduler already stepped)."""
        from utils.io import to_jsonable

        return {
            "epoch": epoch,
            "epoch_acc": self.last_acc if self.last_acc is not None else 0.0,
            "best_acc": self.best_acc,
            "model_state_dict": self.module.state_dict(),  # the bare network: no "module." prefix
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler_state_dict": self.scaler.state_dict(),
            "rng_state": rng_state(),
            "trainer": type(self).__name__,
            "world_size": self.world,
            "format_version": CHECKPOINT_FORMAT,
            "args": to_jsonable(vars(self.args)),
        }

    def save(self, epoch: int, filenames: Sequence[str] = (LATEST,)) -> None:
        """Write the checkpoint of ``epoch`` atomically under each name (rank 0, ``--save_checkpoint``)."""
        if not (self.is_main and self.run_dir is not None and self.args.save_checkpoint):
            return
        from networks.checkpoint import save_checkpoint

        ckpt = self.checkpoint(epoch)
        for name in filenames:
            save_checkpoint(ckpt, os.path.join(self.run_dir, name))
        logger.debug("saved %s after epoch %d", ", ".join(filenames), epoch)

    def restore(self, path: str, restart: bool = False) -> None:
        """Continue from a checkpoint: weights, optimiser, scheduler, scaler, RNG states, epoch
        and best Dice; with ``restart`` (``--resume_but_restart``) the weights only.

        Raises:
            UserError: unreadable checkpoint, or weights of another architecture / other flags.
        """
        from networks.checkpoint import load_model_weights, read_checkpoint

        ckpt = read_checkpoint(path)
        info = load_model_weights(self.module, ckpt)
        if restart:
            logger.info("weights of %s (epoch %s) loaded; starting a new run at epoch 0", path, info["epoch"])
            return
        if ckpt.get("epoch") is None:
            raise UserError(f"checkpoint {path} records no epoch; use --resume_but_restart to start from its weights")
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_acc = float(ckpt.get("best_acc") or 0.0)
        self.last_acc = float(ckpt["epoch_acc"]) if ckpt.get("epoch_acc") is not None else None
        if isinstance(ckpt.get("optimizer_state_dict"), Mapping):
            try:
                self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
            except (ValueError, KeyError) as err:
                raise UserError(f"the optimiser state in {path} does not fit --optim_name {self.args.optim_name} "
                                f"({err}); resume with the run's own optimiser flags or use --resume_but_restart") from None
        else:
            logger.warning("%s holds no optimiser state: the optimiser starts afresh", path)
        self._restore_scheduler(ckpt.get("scheduler_state_dict"), path)
        if self.scaler.is_enabled() and ckpt.get("scaler_state_dict"):
            self.scaler.load_state_dict(ckpt["scaler_state_dict"])
        set_rng_state(ckpt.get("rng_state"))
        logger.info("resumed from %s: epoch %d done, best Dice %.4f; continuing at epoch %d",
                    path, self.start_epoch - 1, self.best_acc, self.start_epoch)

    def _restore_scheduler(self, state: Any, path: str) -> None:
        """Put the schedule at ``start_epoch``.

        Our checkpoints hold a ``LambdaLR`` state (loaded); the release's hold the state of
        its ``LinearWarmupCosineAnnealingLR`` saved *before* that epoch's step, which we do
        not load. Either way the learning rate is then set from the closed form of the
        current flags — the same number the uninterrupted run computes, and the new
        schedule when a resume changes ``--max_epochs``/``--warmup_epochs``.
        """
        if self.scheduler is None:
            return
        if isinstance(state, Mapping) and "lr_lambdas" in state:
            self.scheduler.load_state_dict(dict(state))
        else:
            logger.info("%s holds no schedule of ours: learning rate set for epoch %d from the flags", path,
                        self.start_epoch)
        self.scheduler.last_epoch = self.start_epoch
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.start_epoch)

    # ----------------------------------------------------------------- preemption

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        self.stop_signal = signal.Signals(signum).name

    def install_signal_handlers(self) -> dict:
        """SIGTERM/SIGUSR1 set a flag the loop checks after every batch (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for name in ("SIGTERM", "SIGUSR1"):
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def stop_requested(self) -> bool:
        """Whether any rank got a stop signal (all ranks agree, so they stop together)."""
        flag = self.stop_signal is not None
        if self.world == 1:
            return flag
        import torch.distributed as dist

        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t.item() and self.stop_signal is None:
            self.stop_signal = "signal on another rank"
        return bool(t.item())

    def resume_hint(self) -> str:
        args = self.args
        parent = args.checkpoint_dir if (args.resume and not args.resume_but_restart) else args.save_model_dir
        extra = " --no_sub_dir_model" if args.no_sub_dir_model else ""
        return f"--resume --resume_latest --checkpoint_dir {parent}{extra}"

    # ----------------------------------------------------------------- outputs

    def _open_outputs(self) -> None:
        if self.run_dir is None or not self.is_main:
            return
        self.rows = read_metrics_rows(os.path.join(self.run_dir, METRICS_FILE), self.start_epoch)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            logger.debug("tensorboard not installed: no event files")
            return
        self.writer = SummaryWriter(log_dir=self.args.logdir or self.run_dir)

    def _write_metrics(self, row: dict) -> None:
        self.rows.append(row)
        if self.run_dir is None or not self.is_main:
            return
        from utils.io import write_csv

        columns = list(row)
        write_csv(os.path.join(self.run_dir, METRICS_FILE), [{c: r.get(c) for c in columns} for r in self.rows])
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, float) and not math.isnan(value):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    # ----------------------------------------------------------------- the loop

    def fit(self) -> TrainingResult:
        """Train from ``self.start_epoch`` to ``--max_epochs``; stops early on SIGTERM/SIGUSR1."""
        args = self.args
        result = TrainingResult(run_dir=self.run_dir)
        if self.start_epoch >= args.max_epochs:
            logger.info("nothing to do: the run has finished its %d epochs (raise --max_epochs to go on)",
                        args.max_epochs)
            result.best_acc, result.last_acc, result.epochs_done = self.best_acc, self.last_acc, self.start_epoch
            return result
        self._open_outputs()
        previous_handlers = self.install_signal_handlers()
        try:
            for epoch in range(self.start_epoch, args.max_epochs):
                if self.stop_requested():
                    self._log_stop(epoch, result)
                    break
                started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                try:
                    terms = self.train_epoch(epoch)
                except _Interrupted:
                    self._log_stop(epoch, result)
                    break
                val: dict[str, float] = {}
                new_best = False
                if (epoch + 1) % args.val_every == 0:
                    val = self.validate(epoch)
                if val:
                    self.last_acc = val["val_dice"]
                    if val["val_dice"] > self.best_acc:
                        self.best_acc, new_best = val["val_dice"], True
                if self.scheduler is not None:
                    self.scheduler.step()
                elapsed = time.perf_counter() - started
                row = {"epoch": epoch, **terms, "lr": lr, "val_dice": val.get("val_dice")}
                if args.val_attack:
                    row["val_dice_adv"] = val.get("val_dice_adv")
                row["epoch_time"] = round(elapsed, 3)
                self._write_metrics(row)
                self.save(epoch, (LATEST, BEST) if new_best else (LATEST,))
                self._log_epoch(epoch, terms, lr, val, new_best, elapsed)
                result.epochs_done = epoch + 1
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            if self.writer is not None:
                self.writer.close()
                self.writer = None
        result.best_acc, result.last_acc, result.history = self.best_acc, self.last_acc, list(self.rows)
        if not result.preempted:
            logger.info("training finished: best validation Dice %.4f, last %s%s", self.best_acc,
                        "n/a" if self.last_acc is None else f"{self.last_acc:.4f}",
                        f"; run folder {self.run_dir}" if self.run_dir else "")
        return result

    def _log_epoch(self, epoch, terms, lr, val, new_best, elapsed) -> None:
        parts = " ".join(f"{k} {v:.4f}" for k, v in terms.items())
        line = f"epoch {epoch}/{self.args.max_epochs - 1} | {parts} | lr {lr:.3e}"
        if val:
            line += f" | val Dice {val['val_dice']:.4f}"
            if "val_dice_adv" in val:
                line += f" (attacked {val['val_dice_adv']:.4f})"
            line += f" best {self.best_acc:.4f}" + (" (new best)" if new_best else "")
        logger.info("%s | %.1f s", line, elapsed)

    def _log_stop(self, epoch: int, result: TrainingResult) -> None:
        result.preempted, result.stop_signal = True, self.stop_signal
        if not self.is_main:  # every rank stops; rank 0 says so once
            return
        done = epoch - 1
        saved = self.run_dir is not None and self.args.save_checkpoint and done >= 0
        if saved:
            logger.warning("stopped by %s during epoch %d: the unfinished epoch is dropped; %s holds epoch %d. "
                           "Continue with the same flags plus %s", self.stop_signal, epoch,
                           os.path.join(self.run_dir, LATEST), done, self.resume_hint())
        else:
            logger.warning("stopped by %s during epoch %d: no checkpoint to continue from (%s); "
                           "a rerun starts afresh", self.stop_signal, epoch,
                           "no epoch completed" if done < 0 else "run without --save_checkpoint or with --debugging")


class AdversarialTrainer(Trainer):
    """Vanilla adversarial training: ``DiceCE(M(X'), Y)`` with ``X'`` from the attack."""

    mode = "adversarial training"

    def train_step(self, batch) -> dict[str, float]:
        images, labels = self.unpack(batch)
        adv = self.adversarial(images, labels)
        return self.optimise(lambda: {"loss": self.loss_fn(self.model(adv), labels)})


class VAFTTrainer(AdversarialTrainer):
    """VAFT: ``DiceCE(M(X), Y) + DiceCE(M(X'), Y) + w * L_fr(M(X), M(X'))``.

    ``L_fr`` is ``engine.losses.frequency_consistency_loss`` with ``--freq_reg_norm``
    (``relative``: the release's ``sum|DCT(clean) - DCT(adv)| / sum|DCT(clean)|`` over the
    whole batch, clean logits not detached), ``w = --freq_reg_weight`` (release: 1).
    """

    mode = "VAFT (adversarial training with frequency regularisation)"

    def train_step(self, batch) -> dict[str, float]:
        from engine.losses import frequency_consistency_loss

        images, labels = self.unpack(batch)
        adv = self.adversarial(images, labels)

        def terms():
            logits_clean = self.model(images)
            logits_adv = self.model(adv)
            loss_clean = self.loss_fn(logits_clean, labels)
            loss_adv = self.loss_fn(logits_adv, labels)
            loss_freq = frequency_consistency_loss(logits_clean, logits_adv, norm=self.args.freq_reg_norm)
            loss = loss_clean + loss_adv + self.args.freq_reg_weight * loss_freq
            return {"loss": loss, "loss_clean": loss_clean, "loss_adv": loss_adv, "loss_freq": loss_freq}

        return self.optimise(terms)


TRAINERS = {"normal": Trainer, "adversarial": AdversarialTrainer, "vaft": VAFTTrainer}


def trainer_kind(args: argparse.Namespace) -> str:
    """``normal``, ``adversarial`` (``--adv_training_mode``) or ``vaft`` (plus ``--freq_reg_mode``)."""
    if args.adv_training_mode:
        return "vaft" if args.freq_reg_mode else "adversarial"
    return "normal"


def build_trainer(args: argparse.Namespace, model: nn.Module, device: torch.device, **kwargs) -> Trainer:
    """The trainer class the flags ask for (:data:`TRAINERS`), built with ``kwargs`` of :class:`Trainer`."""
    return TRAINERS[trainer_kind(args)](args, model, device, **kwargs)


# --------------------------------------------------------------------------- the script's entry


def run_folder(args: argparse.Namespace) -> tuple[Optional[str], Optional[str]]:
    """``(run folder, checkpoint to resume)`` from the flags (the release's layout).

    The run folder is ``--save_model_dir`` itself for normal training and
    ``--save_model_dir/<attack sub-folder>`` (``engine.cli.adv_subdir_name``) for adversarial
    training, unless ``--no_sub_dir_model``. ``--resume`` reads ``model_latest.pt`` /
    ``model_best.pt`` from the same sub-folder of ``--checkpoint_dir`` and continues writing
    there; ``--resume_but_restart`` starts a new run in ``--save_model_dir``. ``None`` for
    the folder with ``--debugging``.
    """
    from engine.cli import adv_subdir_name

    sub = adv_subdir_name(args) if args.adv_training_mode and not args.no_sub_dir_model else ""
    checkpoint = None
    if args.resume:
        checkpoint = os.path.normpath(os.path.join(args.checkpoint_dir, sub, BEST if args.resume_best else LATEST))
    if args.debugging:
        return None, checkpoint
    parent = args.checkpoint_dir if args.resume and not args.resume_but_restart else args.save_model_dir
    return os.path.normpath(os.path.join(parent, sub)), checkpoint


def _check_folders(args: argparse.Namespace, run_dir: Optional[str], checkpoint: Optional[str]) -> None:
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise UserError(f"no checkpoint to resume at {checkpoint}; --checkpoint_dir must be the --save_model_dir of "
                        "that run, with the same attack flags (they name its sub-folder) or --no_sub_dir_model")
    fresh = not args.resume or args.resume_but_restart
    if fresh and run_dir is not None:
        found = [name for name in (LATEST, BEST) if os.path.exists(os.path.join(run_dir, name))]
        if found:
            parent = os.path.normpath(args.save_model_dir)
            raise UserError(f"{run_dir} already holds {' and '.join(found)} of another run; continue it with "
                            f"--resume --resume_latest --checkpoint_dir {parent}, or pick another --save_model_dir")
    if args.use_pretrained and not args.resume and not os.path.isfile(args.pretrained_path):
        raise UserError(f"--pretrained_path {args.pretrained_path} is not a file; pass the full path of a checkpoint (.pt)")


def _log_header(args: argparse.Namespace, trainer_cls: type, run_dir: Optional[str], device, world: int) -> None:
    from engine.cli import attack_summary

    logger.info("%s of %s on %s (%d process%s)%s", trainer_cls.mode, args.model_name, device, world,
                "es" if world > 1 else "", f", experiment {args.exp_name}" if args.exp_name else "")
    if args.adv_training_mode:
        logger.info("attack: %s", attack_summary(args))
    if args.freq_reg_mode:
        logger.info("frequency-consistency loss: norm %s, weight %g", args.freq_reg_norm, args.freq_reg_weight)
    crops = crops_per_volume()
    logger.info("effective batch: %d volume(s) x %d crops x %d process(es) = %d crops per step",
                args.batch_size, crops, world, args.batch_size * crops * world)
    if args.lrschedule not in ("warmup_cosine", "cosine_anneal"):
        logger.info("--lrschedule %s: constant learning rate %g", args.lrschedule, args.optim_lr)
    logger.info("run folder: %s", run_dir or "none (--debugging)")


def _train_process(args: argparse.Namespace) -> TrainingResult:
    """One process of a run (the only one, or one rank)."""
    from networks import build_model_from_args
    from networks.checkpoint import load_model_weights
    from engine.cli import resolve_device, setup_logging
    from utils.io import to_jsonable, write_json

    with dist_utils.process_group(args) as device:
        device = device or resolve_device(args.device)
        rank, world = dist_utils.rank_and_world()
        run_dir, checkpoint = run_folder(args)
        _check_folders(args, run_dir, checkpoint)
        seed_everything(args.seed)
        model = build_model_from_args(args)
        if args.use_pretrained and not args.resume:  # before any folder is made: a wrong checkpoint leaves none
            load_model_weights(model, args.pretrained_path)

        main = rank == 0
        setup_logging(os.path.join(run_dir, "log.out") if run_dir and main else None, args.verbose)
        if not main:
            logging.getLogger().setLevel(logging.WARNING)
        if run_dir is not None and main:
            os.makedirs(run_dir, exist_ok=True)
            if not args.resume or args.resume_but_restart or not os.path.exists(os.path.join(run_dir, "args.json")):
                write_json(os.path.join(run_dir, "args.json"), to_jsonable(vars(args)))
            logger.info("host %s, pid %d; arguments in %s", platform.node(), os.getpid(), os.path.join(run_dir, "args.json"))
        dist_utils.barrier()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        _log_header(args, TRAINERS[trainer_kind(args)], run_dir, device, world)
        if args.use_pretrained and not args.resume:
            logger.info("initial weights from %s", args.pretrained_path)
        elif args.use_pretrained:
            logger.info("--pretrained_path ignored: the weights come from %s", checkpoint)
        logger.info("%s parameters", f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
        train_loader = build_train_loader(args, rank, world)
        val_loader, val_indices = build_val_loader(args, rank, world)
        trainer = build_trainer(args, model, device, train_loader=train_loader, val_loader=val_loader,
                                val_indices=val_indices, run_dir=run_dir)
        if checkpoint is not None:
            trainer.restore(checkpoint, restart=args.resume_but_restart)
        return trainer.fit()


def run_training(args: argparse.Namespace) -> TrainingResult:
    """Run the training the flags describe (the training script's only call).

    One process, or one rank of a ``torchrun``/``srun`` launch. ``--distributed``
    without a launcher spawns one process per visible GPU (the release's launch).

    Returns:
        The :class:`TrainingResult` (of rank 0's view; a default one after a spawned launch).

    Raises:
        UserError: bad input (missing files, a checkpoint of another architecture, a run
            folder that already holds checkpoints, ``--distributed`` without GPUs ...).
    """
    if not dist_utils.needs_spawn(args):
        return _train_process(args)
    prog = "run_normal_or_adv_training.py"
    dist_utils.spawn_gpus(args, prog)  # no GPU: one clear error before anything else
    run_dir, checkpoint = run_folder(args)
    _check_folders(args, run_dir, checkpoint)
    dist_utils.spawn_script(_train_process, args, prog)  # SIGTERM/SIGUSR1 reach the ranks
    return TrainingResult(run_dir=run_dir)
