"""Sweeps: many generation runs from one spec, collected into the paper's tables and plots.

A sweep is a list of :class:`Cell` s (one attack configuration each, and for Table 6 one
checkpoint). Every cell is a ``generate_adv_samples.py`` run: the user's data/model flags and
overrides are read once (:func:`engine.cli.read_flags`); each cell's arguments are those with the
attack's paper setting (its class's ``presets``) beneath the overrides and the cell's swept values
on top, completed and checked by :func:`engine.cli.complete` as the script's own, and run by
:func:`engine.evaluation.run_generation` into ``OUT/runs/<cell>/<attack folder>``.
A cell whose ``results.json`` was written with the same arguments from the same checkpoint
content (:data:`utils.run_folder.INPUTS_FILE`) is reused, so a killed or stopped sweep resumes
where it stopped (and a killed cell resumes at its first unfinished case); a checkpoint that
now holds other weights is refused in one line (``--overwrite`` recomputes).

Presets (``PRESETS``) reproduce the layout of the paper's Tables 1-6; a grid
(``--grid q_max=10,20 --grid steps=10,20``) sweeps the product of any attack flags.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from attacks import APGD, ATTACKS, BIM, FGSM, PGD, VAFA2D, VAFA3D, GaussianNoise, get_attack_class, preset_values
from engine import cli, jobs
from engine.evaluation import finished_report
from studies import paper_tables
from utils.errors import UserError
from utils.logs import setup_logging

logger = logging.getLogger(__name__)

RESERVED_FLAGS = ("--save_adv_images_dir", "--no_sub_dir_adv_images", "--debugging", "--adv_images_dir")
"""Flags the sweep sets itself (each cell's run folder)."""

METRICS = ("dice_clean", "dice_adv", "hd95_clean", "hd95_adv", "success_rate", "ssim", "psnr", "lpips_similarity")


@dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Args:
        key: folder name under ``OUT/runs``.
        label: the cell's name in tables and plots.
        attack: registry name of the attack.
        base: flag values beneath the user's overrides (the preset's defaults), ``{dest: value}``.
        swept: flag values above the user's overrides (the swept values, which win).
        params: the swept values, for the tables, CSV and plots.
        model: Table 6: the robust model's name.
    """

    key: str
    label: str
    attack: str
    base: Mapping = field(default_factory=dict)
    swept: Mapping = field(default_factory=dict)
    params: Mapping = field(default_factory=dict)
    model: str = ""


@dataclass(frozen=True)
class Preset:
    """A sweep's cells and how its table is laid out.

    Args:
        name: ``table1`` ... ``table6`` or ``grid``.
        title: the table's heading.
        layout: ``attacks`` (a row per attack), ``curve`` (a column per value of ``param``),
            ``models`` (a row per checkpoint, a column per attack) or ``grid``.
        cells: the runs.
        param: the swept flag of a curve (``q_max``, ``steps``, ``block``).
        paper: the paper's published numbers for this table, or ``None``.
    """

    name: str
    title: str
    layout: str
    cells: tuple
    param: Optional[str] = None
    paper: Optional[Mapping] = None


def _attack_cell(label: str, attack: str, swept: Optional[Mapping] = None, **params) -> Cell:
    return Cell(key=_slug(label), label=label, attack=attack, base=preset_values(attack), swept=dict(swept or {}),
                params={"attack": attack, **params})


def _curve(name: str, title: str, param: str, values: Sequence, flags: Callable, paper: Mapping) -> Preset:
    vafa = VAFA3D.name
    cells = tuple(Cell(key=f"{vafa}_{param}_{v}", label=f"{param}={v}", attack=vafa,
                       base=preset_values(vafa), swept=flags(v), params={param: v}) for v in values)
    return Preset(name, title, "curve", cells, param=param, paper=paper)


def table1() -> Preset:
    cells = (_attack_cell("PGD", PGD.name), _attack_cell("FGSM", FGSM.name), _attack_cell("BIM", BIM.name),
             _attack_cell("GN", GaussianNoise.name), _attack_cell("VAFA-2D", VAFA2D.name), _attack_cell("VAFA", VAFA3D.name))
    return Preset("table1", "Table 1: attacks side by side (eps/std 4, VAFA q_max 20 on 8x8x8 blocks)", "attacks",
                  cells, paper=paper_tables.TABLE1)


def table2() -> Preset:
    return _curve("table2", "Table 2: VAFA-3D vs q_max (block 8x8x8)", "q_max", (10, 20, 30, 40, 60, 80),
                  lambda v: {"q_max": v}, paper_tables.TABLE2)


def table3() -> Preset:
    return _curve("table3", "Table 3: VAFA-3D vs attack steps (q_max 20, block 8x8x8)", "steps", (10, 20, 30, 40, 50, 60),
                  lambda v: {"steps": v}, paper_tables.TABLE3)


def table4() -> Preset:
    return _curve("table4", "Table 4: VAFA-3D vs block size (q_max 20, cubic blocks)", "block", (4, 8, 16, 32, 48, 96),
                  lambda v: {"block_size": (v, v, v)}, paper_tables.TABLE4)


def table5() -> Preset:
    cells = []
    for attack, name, flag in ((PGD.name, "PGD", "eps"), (FGSM.name, "FGSM", "eps"), (BIM.name, "BIM", "eps"),
                               (GaussianNoise.name, "GN", "std")):
        for value in (4, 8):
            cells.append(_attack_cell(f"{name} {flag}={value}", attack, {flag: value}, **{flag: value}))
    for q_max in (20, 30):
        cells.append(_attack_cell(f"VAFA q_max={q_max}", VAFA3D.name, {"q_max": q_max, "block_size": (32, 32, 32)},
                                  q_max=q_max, block=32))
    return Preset("table5", "Table 5: eps 4/8 and q_max 20/30 (VAFA block 32x32x32), with HD95", "attacks", tuple(cells),
                  paper=paper_tables.TABLE5)


TABLE6_ATTACKS = (("PGD", PGD.name, {}, {}), ("FGSM", FGSM.name, {}, {}), ("BIM", BIM.name, {}, {}),
                  ("VAFA", VAFA3D.name, {"block_size": (32, 32, 32)}, {}),
                  ("VAFA clip", VAFA3D.name, {"block_size": (32, 32, 32)}, {"vafa_normalise": "clip"}),
                  ("APGD", APGD.name, {}, {}))
"""Table 6's columns as ``(label, attack, defaults, column values)``: the paper's PGD, FGSM, BIM (eps 4) and VAFA as
in adversarial training (q_max 20, block 32^3, the release's per-slice renormalisation), then VAFA with the paper's
clip and APGD (eps 4) as the stronger voxel attack. The defaults yield to the user's overrides (``--block_size 16 16
16`` where 32 does not divide the ROI); the column values do not."""


def table6(models: Sequence[tuple[str, str]]) -> Preset:
    if not models:
        raise UserError("--preset table6 needs --models NAME=CHECKPOINT ... (the robust checkpoints to compare)")
    cells = []
    for name, checkpoint in models:
        for column, attack, defaults, column_flags in TABLE6_ATTACKS:
            cells.append(Cell(key=_slug(f"{name}_{column}"), label=column, attack=attack,
                              base={**preset_values(attack), **defaults},
                              swept={**column_flags, "pretrained_path": checkpoint},
                              params={"model": name, "attack": attack}, model=name))
    return Preset("table6", "Table 6: Dice of (robust) models under each attack", "models", tuple(cells),
                  paper=paper_tables.TABLE6)


PRESETS: dict[str, Callable] = {"table1": table1, "table2": table2, "table3": table3, "table4": table4,
                                "table5": table5, "table6": table6}


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["q_max=10,20", "steps=5"]`` -> ``[("q_max", ["10", "20"]), ("steps", ["5"])]``.

    Raises:
        UserError: a spec without ``=`` or values, or a key given twice.
    """
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lstrip("-")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not items:
            raise UserError(f"--grid takes KEY=V1,V2,... (e.g. q_max=10,20,40), got {spec!r}")
        if key in dict(axes):
            raise UserError(f"--grid key {key!r} given twice; list all its values in one --grid")
        axes.append((key, items))
    return axes


def _grid_value(key: str, value: str, attack: str) -> dict:
    """``{dest: value}`` of one grid value, typed as the flag types it; ``block_size`` takes ``8`` (a cube,
    or a square for an attack with 2-sided blocks: :attr:`attacks.base.Attack.block_sides`) or ``8x8x4``.

    Raises:
        UserError: no such flag, or a value it does not take.
    """
    if key in ("block_size", "block"):
        key = "block_size"
        if "x" not in value:
            value = "x".join([value] * (get_attack_class(attack).block_sides or 3))
    try:
        return {key: cli.flag_value(cli.GENERATION, key, value)}
    except UserError as err:
        raise UserError(f"--grid {key}={value}: {err}") from None


def grid(specs: Sequence[str], attack: str = VAFA3D.name) -> Preset:
    """The product of the grid's values as cells; key ``attack`` sweeps attacks too."""
    axes = parse_grid(specs)
    cells = []
    for combo in itertools.product(*(values for _, values in axes)):
        params = dict(zip((key for key, _ in axes), combo))
        name = params.get("attack", attack)
        if name not in ATTACKS:
            raise UserError(f"--grid attack: unknown attack {name!r}; one of {', '.join(ATTACKS)}")
        swept: dict = {}
        for key, value in params.items():
            if key != "attack":
                swept.update(_grid_value(key, value, name))
        label = ", ".join(f"{k}={v}" for k, v in params.items())
        cells.append(Cell(key=_slug(f"{name}_" + "_".join(f"{k}-{v}" for k, v in params.items() if k != "attack")),
                          label=label, attack=name, base=preset_values(name), swept=swept,
                          params={"attack": name, **params}))
    # the curve plot's axis: the first swept setting other than the attack (none: no curve)
    return Preset("grid", "Grid: " + " × ".join(f"{k} ({', '.join(v)})" for k, v in axes), "grid", tuple(cells),
                  param=next((key for key, _ in axes if key != "attack"), None))


def build_preset(name: Optional[str], grid_specs: Sequence[str] = (), attack: str = VAFA3D.name,
                 models: Sequence[tuple[str, str]] = ()) -> Preset:
    """The preset ``name``, or the grid of ``grid_specs``.

    Raises:
        UserError: neither or both given, an unknown preset, or a malformed grid.
    """
    if bool(name) == bool(grid_specs):
        raise UserError("give exactly one of --preset NAME and --grid KEY=V1,V2,...")
    if grid_specs:
        return grid(grid_specs, attack)
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
    return table6(models) if name == "table6" else PRESETS[name]()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("=", "")).strip("_").lower()


# --------------------------------------------------------------------------- running cells


@dataclass(frozen=True)
class SweepSettings:
    """One sweep: the preset, the flags every cell gets, where it goes, which share this process runs.

    Args:
        preset: the cells and the table layout.
        common: data, model and runtime flags of ``generate_adv_samples.py`` (before the cell's).
        overrides: the user's attack overrides (``--steps 5``), between the preset's defaults and the swept values.
        out: output folder (``runs/``, ``tables.md``, ``sweep.csv``, ``sweep.json``, plots).
        shard: ``(index, count)``: this process runs the cells with ``position % count == index``.
        report_only: run nothing; collect what is finished.
    """

    preset: Preset
    common: tuple = ()
    overrides: tuple = ()
    out: str = "sweep_output"
    shard: tuple = (0, 1)
    report_only: bool = False


def overridden(settings: SweepSettings) -> frozenset:
    """The flags the user's overrides type (a preset's default yields to them)."""
    return cli.read_flags(cli.GENERATION, list(settings.overrides), raising=True).typed


def cell_args(settings: SweepSettings, cell: Cell, flags: Optional[cli.Flags] = None,
              above: Optional[frozenset] = None) -> argparse.Namespace:
    """The checked ``generate_adv_samples.py`` arguments of ``cell``: the user's flags (``flags``, read once
    from ``common`` and ``overrides``), the cell's defaults where no override sets them, its swept values on
    top, its run folder under ``OUT/runs``.

    Raises:
        UserError: a refused flag or value.
    """
    flags = flags or cli.read_flags(cli.GENERATION, [*settings.common, *settings.overrides], raising=True)
    above = overridden(settings) if above is None else above
    values = {key: value for key, value in cell.base.items() if key not in above}
    values.update(cell.swept)
    values["save_adv_images_dir"] = os.path.join(os.path.abspath(settings.out), "runs", cell.key)
    return cli.complete(flags, values, raising=True)


def run_cell(args: argparse.Namespace) -> int:
    """One cell, as ``generate_adv_samples.main`` runs it, in this process; 0 when it finished.

    Its faults are raised, not printed, so that the sweep says them in one line: a
    ``UserError`` (bad input), :class:`utils.distributed.StopRequested` (a stop signal at one
    of the job's safe points), ``OSError``. A runner that is another process may instead
    return its exit status (see :func:`run_sweep`).
    """
    from engine.evaluation import run_generation

    run_generation(jobs.generation_job(args))
    return 0


def _cell_failed(cell: Cell, code: int) -> Exception:
    """A runner's non-zero exit status as the sweep's error: 128 + signal (the cell was stopped)
    stops the sweep with that status; anything else is a failed cell."""
    from utils.distributed import StopRequested

    if code > 128:
        try:
            return StopRequested(code - 128)
        except ValueError:  # not a signal's number
            pass
    return UserError(f"cell {cell.label!r} failed with exit status {code} (its message is above)")


def run_sweep(settings: SweepSettings, runner: Optional[Callable] = None) -> list[dict]:
    """Run (or reuse) every cell of this process's share and return one row per cell.

    Cells whose block does not divide the ROI are skipped with a note; other invalid
    flags stop the sweep before anything runs. A stop signal (under
    :func:`engine.jobs.run_driver`) is honoured before each cell and inside a running one;
    the cells finished so far are kept and reused by a rerun.

    Raises:
        UserError: invalid flags in a cell, or a cell's run failed (one line naming the cell).
        utils.distributed.StopRequested: a stop signal arrived.
    """
    from utils.distributed import check_stop

    runner = runner or run_cell
    index, count = settings.shard
    planned = []
    flags = cli.read_flags(cli.GENERATION, [*settings.common, *settings.overrides], raising=True)
    above = overridden(settings)
    for position, cell in enumerate(settings.preset.cells):
        try:
            args = cell_args(settings, cell, flags, above)
        except UserError as err:
            if "not divisible by block_size" in str(err):
                planned.append((position, cell, None, f"skipped: {err}"))
                continue
            raise UserError(f"cell {cell.label!r}: {err}") from None
        planned.append((position, cell, args, ""))
    rows = []
    for position, cell, args, note in planned:
        if args is None:
            rows.append(cell_row(settings.preset, cell, None, None, "skipped", note))
            continue
        job = jobs.generation_job(args)
        run_dir = job.run_dir
        report = finished_report(job)
        status = "reused" if report is not None else "pending"
        if report is None and not settings.report_only and position % count == index:
            check_stop()  # nothing new starts after a stop signal
            logger.info("sweep cell %d/%d: %s -> %s", position + 1, len(planned), cell.label, run_dir)
            try:
                code = runner(args)
            except UserError as err:
                raise UserError(f"cell {cell.label!r}: {' '.join(str(err).split())}") from None
            finally:
                setup_logging(None, getattr(args, "verbose", False))  # back to the console only
            if code:
                raise _cell_failed(cell, code)
            report = finished_report(job)
            status = "done" if report is not None else "pending"
        rows.append(cell_row(settings.preset, cell, run_dir, report, status, note))
    return rows


def paper_numbers(preset: Preset, cell: Cell) -> dict:
    """The paper's published numbers for ``cell`` (empty when the paper has none)."""
    paper = preset.paper or {}
    if preset.layout == "curve":
        return dict(paper.get(cell.params[preset.param], {}))
    if preset.layout == "models":
        return {"dice": paper.get(cell.model, {}).get(cell.label)} if cell.model in paper else {}
    return dict(paper.get(cell.label, {}))


def cell_row(preset: Preset, cell: Cell, run_dir: Optional[str], report: Optional[dict], status: str,
             note: str = "") -> dict:
    """One row of ``sweep.csv``: the cell, its swept values, its overall metrics and the paper's."""
    row = {"preset": preset.name, "key": cell.key, "label": cell.label, "attack": cell.attack, "model": cell.model}
    row.update({f"param_{k}": v for k, v in cell.params.items() if k not in ("attack", "model")})
    overall = (report or {}).get("overall", {})
    row["n_cases"] = overall.get("n_cases")
    for key in METRICS:
        row[key] = overall.get(key)
    row["dice_drop"] = (None if row["dice_clean"] is None or row["dice_adv"] is None
                        else row["dice_clean"] - row["dice_adv"])
    for key, value in paper_numbers(preset, cell).items():
        row[f"paper_{key}"] = value
    row.update(status=status, note=note, run_dir=run_dir)
    return row
