"""Training of volumetric segmentation models: normal, vanilla adversarial (AT) and VAFT.

The loop is a :class:`Trainer` made of hooks (as nnU-Net's trainer); the variants override one hook,
:meth:`Trainer.train_step`:

================================  =================================================  ====================
flags                             loss per batch (paper's Eq. 3-4)                   class
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

import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from attacks import Attack
from data.loading import check_case, plain_tensor
from networks import load_model_weights, predict_volume, read_checkpoint, save_checkpoint
from networks.precision import training_precision
from utils import distributed as dist_utils
from utils.errors import UserError
from utils.io import to_jsonable, write_csv
from utils.seeding import derive_seed, rng_state, seed_everything, set_rng_state

from .config import TrainerConfig, TrainingResult, read_metrics_rows  # noqa: F401  (handed on: trainer.py's names)
from .losses import frequency_consistency_loss, full_resolution

logger = logging.getLogger(__name__)

LATEST = "model_latest.pt"
BEST = "model_best.pt"
METRICS_FILE = "metrics.csv"
CHECKPOINT_FORMAT = 1


def _pct(fraction: Optional[float]) -> Optional[float]:
    return None if fraction is None else 100.0 * fraction


# --------------------------------------------------------------------------- the trainer


class _Interrupted(Exception):
    """Raised inside an epoch when a stop signal arrived (preemption)."""


class Trainer:
    """Normal training: ``DiceCE(M(X), Y)`` per batch; the base of the adversarial variants.

    Hooks, in the order :meth:`fit` calls them per epoch: :meth:`train_epoch` (which
    calls :meth:`train_step` and :meth:`on_batch_end` per batch), :meth:`validate` when
    ``(epoch + 1) % --val_every == 0``, then the scheduler step, ``metrics.csv`` and
    :meth:`save`.

    Args:
        config: the loop's settings (:class:`TrainerConfig`).
        model: the network (not wrapped); it is moved to ``device`` and, in a process
            group of several ranks, wrapped in ``DistributedDataParallel`` (``self.model``;
            ``self.module`` is always the bare network). Batch norm becomes
            ``SyncBatchNorm`` there on CUDA.
        device: where the model and batches live.
        loss_fn: ``loss_fn(logits, labels) -> scalar`` (the release's Dice-CE).
        optimizer: over ``model``'s parameters.
        scheduler: per-epoch learning-rate schedule, or ``None`` (constant).
        attack: builds ``X'`` (adversarial variants, ``--val_attack``); run on the bare network.
        train_loader: batches of ``{"image": [B,C,H,W,D], "label": [B,1,H,W,D]}``.
        val_loader: whole validation volumes, one per batch.
        val_indices: position of each ``val_loader`` case in the split (default
            ``0, 1, ...``), used to merge ranks and to bound ``--val_attack``.
        run_dir: run folder, or ``None`` to write nothing (``--debugging``).
    """

    mode = "normal training"

    def __init__(self, config: TrainerConfig, model: nn.Module, device: torch.device, *,
                 loss_fn: Callable, optimizer: torch.optim.Optimizer, scheduler=None,
                 attack: Optional[Attack] = None, train_loader: Optional[Iterable] = None,
                 val_loader: Optional[Iterable] = None, val_indices: Optional[Sequence[int]] = None,
                 run_dir: Optional[str] = None):
        from networks import compiled

        self.config = config
        self.device = torch.device(device)
        self.rank, self.world = dist_utils.rank_and_world()
        self.module = model.to(self.device)
        if self.world > 1:
            has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())
            if has_batch_norm and self.device.type == "cuda":
                self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
            elif has_batch_norm:
                logger.warning("SyncBatchNorm needs CUDA: on CPU each process keeps its own batch statistics")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: UNETR's ViT blocks hold norm_cross_attn layers it never calls
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids,
                                                             find_unused_parameters=True)
        else:
            self.model = self.module
        self.model = compiled(self.model, config.compile)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.val_indices = val_indices
        self.run_dir = run_dir
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.attack = attack
        self.precision = training_precision(self.device, config.amp, config.precision)
        # float16 gradients underflow without loss scaling (the release's GradScaler); bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
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

    def autocast(self):
        """Autocast of the training passes (a no-op context in fp32)."""
        from networks.precision import autocast

        return autocast(self.device.type, self.precision)

    def unpack(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [B,C,H,W,D], labels [B,1,H,W,D])`` as plain tensors on the device."""
        if isinstance(batch, Mapping):
            images, labels = batch["image"], batch["label"]
            name = batch.get("name", "batch")
        else:
            images, labels = batch[0], batch[1]
            name = "batch"
        images, labels = plain_tensor(images), plain_tensor(labels)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        check_case(images, labels, self.config.num_classes, name if isinstance(name, str) else ", ".join(map(str, name)))
        return images, labels

    def adversarial(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``X'`` against the current weights; the attack switches the model to eval mode and
        back, takes input gradients only (no parameter ``.grad``), and returns it detached."""
        if self.attack is None:
            raise ValueError("this trainer was built without an attack; adversarial training needs one")
        return self.attack(images, self.config.attack.labels(labels)).detach()

    def optimise(self, compute: Callable[[], Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """One optimiser step on ``compute()["loss"]``; returns every term as a float.

        Gradients are cleared (set to ``None``) right before the training forward pass, so
        the step sees the training loss only. Autocast in the training precision; the
        ``GradScaler`` in fp16.
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
        from utils.progress import progress

        self.seed_epoch(epoch)
        sums: dict[str, float] = {}
        count = 0
        bar = progress(self.train_loader, enabled=self.is_main, desc=f"epoch {epoch}", unit="batch", leave=False)
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
        seed_everything(derive_seed(self.config.seed, epoch, self.rank))

    def validate(self, epoch: int) -> dict[str, float]:
        """Mean validation Dice (per case: Dice per class, background included, NaN-mean over
        classes; then mean over cases — the release's accuracy, in [0, 1]) and ``val_cases``.

        With ``--val_attack`` also ``val_dice_adv``: the first ``--val_attack_cases`` cases
        attacked whole (ROI tiles, as the generation script) and predicted again, with
        ``val_dice_clean_attacked``, the clean Dice of those same cases, and
        ``val_attacked_cases``. Cases are sharded across ranks and gathered.
        """
        from utils.progress import progress

        from utils.metrics import class_mean, dice_per_class

        if self.val_loader is None:
            return {}
        config = self.config
        indices = self.val_indices if self.val_indices is not None else range(10**9)
        results: dict[int, dict] = {}
        bar = progress(self.val_loader, enabled=self.is_main, desc=f"validation {epoch}", unit="case", leave=False)
        for index, batch in zip(indices, bar):
            images, labels = self.unpack(batch)
            entry = {"dice": class_mean(dice_per_class(self.predict(images), labels, config.num_classes))}
            if config.val_attack and index < config.val_attack_cases:
                seed_everything(config.seed + index)  # the same perturbation budget draw every validation
                adv = config.attack.attack_volume(self.attack, images, labels, config.window.roi)
                entry["dice_adv"] = class_mean(dice_per_class(self.predict(adv), labels, config.num_classes))
                entry["dice_clean_attacked"] = entry["dice"]  # the clean Dice of the same cases, to compare with
            results[index] = entry
        merged: dict[int, dict] = {}
        for part in dist_utils.all_gather_objects(results):
            merged.update(part or {})

        def mean(key: str) -> float:
            values = [r[key] for r in merged.values() if key in r and not math.isnan(r[key])]
            return float(np.mean(values)) if values else float("nan")

        out = {"val_dice": mean("dice"), "val_cases": len(merged)}
        if config.val_attack:
            out["val_dice_adv"] = mean("dice_adv")
            out["val_dice_clean_attacked"] = mean("dice_clean_attacked")
            out["val_attacked_cases"] = sum("dice_adv" in r for r in merged.values())
        return out

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window argmax ``[1, 1, H, W, D]`` of a whole volume: the evaluation scripts' path
        (:func:`networks.predict_volume`), so validation Dice is the Dice they report."""
        return predict_volume(self.module, image, self.config.window)

    # ----------------------------------------------------------------- checkpoints

    def checkpoint(self, epoch: int) -> dict:
        """The checkpoint dict of the state after ``epoch`` (scheduler already stepped)."""
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
            "args": to_jsonable(dict(self.config.record)),
        }

    def save(self, epoch: int, filenames: Sequence[str] = (LATEST,)) -> None:
        """Write the checkpoint of ``epoch`` atomically under each name (rank 0, ``--save_checkpoint``)."""
        if not (self.is_main and self.run_dir is not None and self.config.save_checkpoint):
            return
        ckpt = self.checkpoint(epoch)
        for name in filenames:
            save_checkpoint(ckpt, os.path.join(self.run_dir, name))
        logger.debug("saved %s after epoch %d", ", ".join(filenames), epoch)

    def restore(self, path: str, restart: bool = False, given: Optional[Mapping[str, Any]] = None) -> None:
        """Continue from a checkpoint: weights, optimiser, scheduler, scaler, RNG states, epoch
        and best Dice; with ``restart`` (``--resume_but_restart``) the weights only.

        ``given``: this run's model flags, named next to the checkpoint's own when the weights do not fit.

        Raises:
            UserError: unreadable checkpoint, or weights of another architecture / other flags.
        """
        ckpt = read_checkpoint(path)
        info = load_model_weights(self.module, ckpt, given=given)
        if restart:
            logger.info("weights of %s (epoch %s) loaded; starting a new run at epoch 0", path, info["epoch"])
            return
        if ckpt.get("epoch") is None:
            raise UserError(f"checkpoint {path} records no epoch; use --resume_but_restart to start from its weights")
        saved = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else {}
        if "precision" in saved:  # a run's passes keep one precision (the record would say otherwise)
            def flags(precision, amp):
                return f"--precision {precision}" if precision else ("no --precision" if amp else "--noamp")

            then, now = flags(saved.get("precision"), not saved.get("noamp", False)), flags(self.config.precision,
                                                                                             self.config.amp)
            if then != now:
                raise UserError(f"{path} was trained with {then}, this resume asks for {now}; resume with the run's "
                                "own precision flags, or start a new run from its weights with --resume_but_restart")
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_acc = float(ckpt.get("best_acc") or 0.0)
        self.last_acc = float(ckpt["epoch_acc"]) if ckpt.get("epoch_acc") is not None else None
        if isinstance(ckpt.get("optimizer_state_dict"), Mapping):
            saved_groups = ckpt["optimizer_state_dict"].get("param_groups") or [{}]
            ours, theirs = set(self.optimizer.param_groups[0]) - {"params"}, set(saved_groups[0]) - {"params"}
            if ours != theirs:
                raise UserError(f"the optimiser state in {path} was written by another optimiser than --optim_name "
                                f"{self.config.optim_name} (its settings: {sorted(theirs)}); resume with the run's own "
                                "--optim_name or start from its weights with --resume_but_restart")
            try:
                self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
            except (ValueError, KeyError) as err:
                raise UserError(f"the optimiser state in {path} does not fit --optim_name {self.config.optim_name} "
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
        self.writer = SummaryWriter(log_dir=self.config.logdir or self.run_dir)

    def _write_metrics(self, row: dict) -> None:
        self.rows.append(row)
        if self.run_dir is None or not self.is_main:
            return
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
        config = self.config
        result = TrainingResult(run_dir=self.run_dir)
        if self.start_epoch >= config.max_epochs:
            logger.info("nothing to do: the run has finished its %d epochs (raise --max_epochs to go on)",
                        config.max_epochs)
            result.best_acc, result.last_acc, result.epochs_done = self.best_acc, self.last_acc, self.start_epoch
            return result
        self._open_outputs()
        previous_handlers = self.install_signal_handlers()
        pending = dist_utils.pending_stop()  # a driver's (the demo's) stop request from before the loop
        if pending is not None:
            self.stop_signal = signal.Signals(pending).name
        try:
            for epoch in range(self.start_epoch, config.max_epochs):
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
                if (epoch + 1) % config.val_every == 0:
                    val = self.validate(epoch)
                if val:
                    self.last_acc = val["val_dice"]
                    if val["val_dice"] > self.best_acc:
                        self.best_acc, new_best = val["val_dice"], True
                if self.scheduler is not None:
                    self.scheduler.step()
                elapsed = time.perf_counter() - started
                row = {"epoch": epoch, **terms, "lr": lr, "val_dice_pct": _pct(val.get("val_dice"))}
                if config.val_attack:
                    row["val_dice_adv_pct"] = _pct(val.get("val_dice_adv"))
                    row["val_dice_clean_attacked_pct"] = _pct(val.get("val_dice_clean_attacked"))
                row["epoch_time"] = round(elapsed, 3)
                self._write_metrics(row)
                # best first: a crash between the two writes leaves the previous latest, whose
                # resume redoes the epoch and writes best again (latest first would leave best stale)
                self.save(epoch, (BEST, LATEST) if new_best else (LATEST,))
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
            logger.info("training finished: best validation Dice %.2f %%, last %s%s", 100 * self.best_acc,
                        "n/a" if self.last_acc is None else f"{100 * self.last_acc:.2f} %",
                        f"; run folder {self.run_dir}" if self.run_dir else "")
        return result

    def _log_epoch(self, epoch, terms, lr, val, new_best, elapsed) -> None:
        parts = " ".join(f"{k} {v:.4f}" for k, v in terms.items())
        line = f"epoch {epoch}/{self.config.max_epochs - 1} | {parts} | lr {lr:.3e}"
        if val:
            line += (f" | val Dice {100 * val['val_dice']:.2f} % ({val['val_cases']} cases) best "
                     f"{100 * self.best_acc:.2f} %" + (" (new best)" if new_best else ""))
            if "val_dice_adv" in val:
                line += (f" | attacked {100 * val['val_dice_adv']:.2f} % vs clean "
                         f"{100 * val['val_dice_clean_attacked']:.2f} % on the same {val['val_attacked_cases']} cases")
        logger.info("%s | %.1f s", line, elapsed)

    def _log_stop(self, epoch: int, result: TrainingResult) -> None:
        result.preempted, result.stop_signal = True, self.stop_signal
        if not self.is_main:  # every rank stops; rank 0 says so once
            return
        done = epoch - 1
        saved = self.run_dir is not None and self.config.save_checkpoint and done >= 0
        if saved:
            logger.warning("stopped by %s during epoch %d: the unfinished epoch is dropped; %s holds epoch %d. "
                           "Continue with the same flags plus %s", self.stop_signal, epoch,
                           os.path.join(self.run_dir, LATEST), done, self.config.resume_hint)
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

    ``L_fr`` is ``training.losses.frequency_consistency_loss`` with ``--freq_reg_norm``
    (``relative``: the release's ``sum|DCT(clean) - DCT(adv)| / sum|DCT(clean)|`` over the
    whole batch, clean logits not detached), ``w = --freq_reg_weight`` (release: 1).
    """

    mode = "VAFT (adversarial training with frequency regularisation)"

    def train_step(self, batch) -> dict[str, float]:
        images, labels = self.unpack(batch)
        adv = self.adversarial(images, labels)
        config = self.config

        def terms():
            logits_clean = self.model(images)
            logits_adv = self.model(adv)
            loss_clean = self.loss_fn(logits_clean, labels)
            loss_adv = self.loss_fn(logits_adv, labels)
            loss_freq = frequency_consistency_loss(full_resolution(logits_clean), full_resolution(logits_adv),
                                                   norm=config.freq_reg_norm)
            loss = loss_clean + loss_adv + config.freq_reg_weight * loss_freq
            return {"loss": loss, "loss_clean": loss_clean, "loss_adv": loss_adv, "loss_freq": loss_freq}

        return self.optimise(terms)


TRAINERS = {"normal": Trainer, "adversarial": AdversarialTrainer, "vaft": VAFTTrainer}
"""Trainer class per training mode (``training.run`` picks one from the flags)."""
