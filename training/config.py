"""What the training loop is given (:class:`TrainerConfig`) and what it reports (:class:`TrainingResult`,
``metrics.csv`` rows)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

from attacks import AttackSettings
from networks import WindowSettings


OLD_METRICS_COLUMNS = {"val_dice": "val_dice_pct", "val_dice_adv": "val_dice_adv_pct"}
"""``metrics.csv`` columns of older runs (Dice as a fraction) and their names now (in %)."""


def read_metrics_rows(path: str, before_epoch: int) -> list[dict]:
    """Rows of an existing ``metrics.csv`` for epochs ``< before_epoch`` (a resume rewrites the rest);
    an older run's Dice fractions are converted to the % columns."""
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
            row = dict(row)
            for old, new in OLD_METRICS_COLUMNS.items():
                if old in row and new not in row:
                    value = row.pop(old)
                    row[new] = repr(100.0 * float(value)) if value not in ("", None) else value
            kept.append(row)
    return kept


@dataclass(frozen=True)
class TrainerConfig:
    """What the training loop needs besides the built objects.

    Args:
        max_epochs: train epochs ``start_epoch .. max_epochs - 1``.
        val_every: validate after every N-th epoch.
        num_classes: classes of the labels (background included).
        window: sliding-window inference of validation volumes.
        attack: the configured attack's settings (target labels, tiles per batch); needed with an attack.
        val_attack: also report validation Dice under the attack.
        val_attack_cases: validation cases attacked with ``val_attack``.
        seed: seeds the data order, augmentations and attack randomness per epoch.
        amp: the release's mixed precision (fp16 on CUDA) when ``precision`` is unset.
        precision: ``--precision`` of the training passes (``None``: as ``amp`` says).
        compile: ``torch.compile`` the network of the training passes.
        save_checkpoint: write ``model_latest.pt`` / ``model_best.pt``.
        logdir: TensorBoard folder (default: the run folder).
        freq_reg_norm, freq_reg_weight: VAFT's frequency-consistency loss.
        optim_name: the optimiser's name, for messages.
        resume_hint: the flags that continue this run, for messages.
        record: the run's arguments, stored in each checkpoint.
    """

    max_epochs: int = 5000
    val_every: int = 100
    num_classes: int = 14
    window: WindowSettings = field(default_factory=WindowSettings)
    attack: Optional[AttackSettings] = None
    val_attack: bool = False
    val_attack_cases: int = 2
    seed: int = 0
    amp: bool = True
    precision: Optional[str] = None
    compile: bool = False
    save_checkpoint: bool = False
    logdir: Optional[str] = None
    freq_reg_norm: str = "relative"
    freq_reg_weight: float = 1.0
    optim_name: str = "adamw"
    resume_hint: str = ""
    record: Mapping = field(default_factory=dict)


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
