"""Transfer of attacks between models: the surrogate x target matrix of adversarial Dice.

Each surrogate model was attacked white-box by ``generate_adv_samples.py``, which saved its
adversarial volumes in a run folder. Every target model is evaluated on every surrogate's saved
volumes through the evaluation path of ``inference_on_saved_adv_samples.py``
(:func:`engine.jobs.inference_job` -> :func:`engine.evaluation.run_inference`), one run folder per cell
under ``<out_dir>/cells/``. A cell whose ``results.json`` was made with the same flags from the same
checkpoint content is reused on a rerun; one made otherwise is refused in one line (``--overwrite``
recomputes every cell), and an unfinished cell resumes case by case, as the inference script does.
The diagonal is the white-box result.

Outputs in ``out_dir``: ``transfer.json`` (matrices and per-cell entries), ``transfer.csv`` (one row per
cell) and ``transfer.png`` (heatmap of adversarial Dice, with the drop from clean), rewritten after
every cell.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
from dataclasses import dataclass
from typing import Sequence

from utils.errors import UserError
from utils.io import atomic_write, read_json, write_csv, write_json
from utils.run_folder import RunLayout

logger = logging.getLogger(__name__)

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
"""A model's label: used in folder names and as a matrix row/column name."""


@dataclass(frozen=True)
class TransferModel:
    """One model of the matrix.

    Args:
        label: its name in the matrix (letters, digits, ``_ . + -``).
        checkpoint: its weights.
        flags: its model flags as for the evaluation scripts (``--model_name``, its own options, ``--roi_*``).
        adv_folder: the run folder of ``generate_adv_samples.py`` with this model as the attacked one (it is
            then a surrogate, a row of the matrix), or ``None`` (a target only).
    """

    label: str
    checkpoint: str
    flags: tuple = ()
    adv_folder: str | None = None


@dataclass(frozen=True)
class TransferJob:
    """Models, where results go, and the flags every cell's inference run shares (data, runtime)."""

    models: tuple
    out_dir: str
    common_flags: tuple = ()
    overwrite: bool = False

    @property
    def surrogates(self) -> list[TransferModel]:
        return [m for m in self.models if m.adv_folder]

    @property
    def targets(self) -> list[TransferModel]:
        return list(self.models)


def check_models(models: Sequence[TransferModel]) -> None:
    """Labels valid and distinct, checkpoints and folders present, at least one surrogate.

    Raises:
        UserError: what is wrong, naming the model.
    """
    seen = set()
    for model in models:
        if not LABEL.match(model.label):
            raise UserError(f"model label {model.label!r} must be letters, digits, '_', '.', '+', '-' "
                            "(it names folders and matrix rows)")
        if model.label in seen:
            raise UserError(f"model label {model.label!r} is given twice")
        seen.add(model.label)
        if not os.path.isfile(model.checkpoint):
            raise UserError(f"checkpoint of model {model.label!r} not found: {model.checkpoint}")
        if model.adv_folder and not os.path.isdir(model.adv_folder):
            raise UserError(f"adversarial folder of surrogate {model.label!r} not found: {model.adv_folder} "
                            "(the run folder generate_adv_samples.py wrote, e.g. <save_adv_images_dir>/pgd_eps_4.0)")
    if not any(m.adv_folder for m in models):
        raise UserError("no surrogate: give at least one --adv LABEL FOLDER (the volumes generate_adv_samples.py "
                        "saved when attacking that model)")


def attack_values(adv_folder: str) -> dict:
    """The attack of the generation run in ``adv_folder`` as flag values (its ``args.json``: the attack's
    name, its options, the target class), so that the cell's report names the attack; none when the
    folder has no ``args.json``."""
    from attacks import get_attack_class

    path = RunLayout(adv_folder).args
    if not os.path.isfile(path):
        return {}
    record = read_json(path)
    name = record.get("attack_name")
    if not name:
        return {}
    values = {"attack_name": name}
    values.update({option.name: record[option.name] for option in get_attack_class(name).options
                   if option.name in record})
    if record.get("targeted") and record.get("target_class") is not None:
        values["target_class"] = record["target_class"]
    return values


def cell_dir(job: TransferJob, surrogate: TransferModel, target: TransferModel) -> str:
    return os.path.join(job.out_dir, "cells", f"{surrogate.label}__on__{target.label}")


def cell_values(job: TransferJob, surrogate: TransferModel, target: TransferModel) -> dict:
    """What a cell sets on top of the target's flags: the surrogate's attack, the target's checkpoint,
    the surrogate's volumes and the cell's folder."""
    return {**attack_values(surrogate.adv_folder), "pretrained_path": target.checkpoint,
            "adv_images_dir": surrogate.adv_folder, "no_sub_dir_adv_images": True,
            "results_dir": cell_dir(job, surrogate, target), "overwrite": job.overwrite}


def cell_args(job: TransferJob, surrogate: TransferModel, target: TransferModel) -> argparse.Namespace:
    """The checked ``inference_on_saved_adv_samples.py`` arguments of one cell: the common flags and the
    target's model flags (read as a command line: the user typed them), with :func:`cell_values` on top.

    Raises:
        UserError: a flag or value is refused (one line naming the cell).
    """
    from engine import cli

    try:
        flags = cli.read_flags(cli.INFERENCE, [*job.common_flags, *target.flags], raising=True)
        return cli.complete(flags, cell_values(job, surrogate, target), raising=True)
    except UserError as err:
        raise UserError(f"the flags of cell {surrogate.label} -> {target.label} were refused: "
                        f"{' '.join(str(err).split())}; common flags: {shlex.join(job.common_flags)}; "
                        f"model flags: {shlex.join(target.flags)}") from None


def run_cell(job: TransferJob, surrogate: TransferModel, target: TransferModel) -> dict:
    """The cell's overall metrics: read from its ``results.json`` when that was made from the same
    flags and checkpoint content (:func:`engine.evaluation.finished_report`), else evaluated now.

    Raises:
        UserError: the cell's flags are refused (one line naming the flag) or its inference run fails.
    """
    from engine import jobs
    from engine.evaluation import finished_report, run_inference

    folder = cell_dir(job, surrogate, target)
    args = cell_args(job, surrogate, target)
    try:
        eval_job = jobs.inference_job(args)
        if not job.overwrite:
            report = finished_report(eval_job)
            if report is not None:
                logger.info("cell %s -> %s finished earlier with the same flags and checkpoint, reused",
                            surrogate.label, target.label)
                return report["overall"]
        logger.info("cell %s -> %s: %s on %s -> %s", surrogate.label, target.label, target.checkpoint,
                    surrogate.adv_folder, folder)
        report = run_inference(eval_job)
    except UserError as err:
        raise UserError(f"cell {surrogate.label} -> {target.label}: {' '.join(str(err).split())}") from None
    if not report or not os.path.isfile(RunLayout(folder).results):
        raise UserError(f"cell {surrogate.label} -> {target.label} produced no results.json in {folder}")
    return report["overall"]


def matrix_report(job: TransferJob, cells: dict) -> dict:
    """``transfer.json``: rows are surrogates, columns targets."""
    rows = [s.label for s in job.surrogates]
    cols = [t.label for t in job.targets]

    def grid(key):
        return {r: {c: cells.get((r, c), {}).get(key) for c in cols} for r in rows}

    return {
        "surrogates": rows,
        "targets": cols,
        "dice_adv": grid("dice_adv"),
        "dice_clean": grid("dice_clean"),
        "drop": grid("drop"),
        "n_cases": grid("n_cases"),
        "models": {m.label: {"checkpoint": m.checkpoint, "flags": list(m.flags), "adv_folder": m.adv_folder}
                   for m in job.models},
        "common_flags": list(job.common_flags),
        "units": "Dice in %, mean over cases of the mean over classes; drop = clean - adversarial",
    }


def cell_entry(overall: dict) -> dict:
    clean, adv = overall.get("dice_clean"), overall.get("dice_adv")
    drop = None if clean is None or adv is None else clean - adv
    return {"dice_clean": clean, "dice_adv": adv, "drop": drop, "n_cases": overall.get("n_cases"),
            "hd95_adv": overall.get("hd95_adv"), "success_rate": overall.get("success_rate")}


def write_outputs(job: TransferJob, cells: dict) -> dict:
    """Write ``transfer.json``, ``transfer.csv`` and ``transfer.png``; returns the JSON report."""
    report = matrix_report(job, cells)
    write_json(os.path.join(job.out_dir, "transfer.json"), report)
    rows = [{"surrogate": s, "target": t, **{k: v for k, v in entry.items()}} for (s, t), entry in cells.items()]
    write_csv(os.path.join(job.out_dir, "transfer.csv"), rows)
    save_heatmap(os.path.join(job.out_dir, "transfer.png"), report)
    return report


def save_heatmap(path: str, report: dict) -> None:
    """Heatmap of adversarial Dice (surrogate rows x target columns), each cell annotated with the drop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = report["surrogates"], report["targets"]
    values = np.array([[np.nan if report["dice_adv"][r][c] is None else report["dice_adv"][r][c] for c in cols]
                       for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 1.2 + 1.0 * len(rows)))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("target (evaluated)")
    ax.set_ylabel("surrogate (attacked)")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            adv, drop = report["dice_adv"][r][c], report["drop"][r][c]
            text = "—" if adv is None else f"{adv:.1f}\n(−{drop:.1f})" if drop is not None else f"{adv:.1f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if adv is None or adv < 60 else "black",
                    fontsize=9)
    fig.colorbar(image, ax=ax, label="adversarial Dice (%)")
    ax.set_title("transfer: adversarial Dice (drop from clean)")
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_transfer(job: TransferJob) -> dict:
    """Evaluate every target on every surrogate's saved volumes; write the matrix after each cell.

    Returns:
        The ``transfer.json`` report.

    Raises:
        UserError: bad models (:func:`check_models`) or a cell that fails.
        utils.distributed.StopRequested: a stop signal (under :func:`engine.jobs.run_driver`).
    """
    from utils.distributed import check_stop
    from utils.logs import setup_logging

    check_models(job.models)
    os.makedirs(job.out_dir, exist_ok=True)
    cells: dict = {}
    report: dict = {}
    for surrogate in job.surrogates:
        for target in job.targets:
            check_stop()  # nothing new starts after a stop signal (finished cells are reused by a rerun)
            try:
                cells[(surrogate.label, target.label)] = cell_entry(run_cell(job, surrogate, target))
            finally:
                setup_logging(None)  # the cell's run folder log is closed; keep logging to the console
            report = write_outputs(job, cells)
    check_stop()
    logger.info("transfer matrix written to %s", os.path.join(job.out_dir, "transfer.json"))
    return report


def format_matrix(report: dict, key: str = "dice_adv") -> str:
    """The matrix as a text table (rows surrogates, columns targets)."""
    cols = report["targets"]
    width = max([len(c) for c in cols] + [8])
    head = " " * (max(len(r) for r in report["surrogates"]) + 2)
    lines = [f"{key} (rows: surrogate, columns: target)", head + "".join(c.rjust(width + 2) for c in cols)]
    for r in report["surrogates"]:
        cells = [report[key][r][c] for c in cols]
        lines.append(r.ljust(len(head)) + "".join(("n/a" if v is None else f"{v:.2f}").rjust(width + 2)
                                                  for v in cells))
    return "\n".join(lines)
