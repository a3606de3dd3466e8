"""scripts/sweep.py on the tiny dataset: a 2x2 grid, resume after a kill, tables equal to the runs' results."""

from __future__ import annotations

import json
import os

import pytest

import studies.sweep as sweep
from engine import cli
from studies.sweep_report import fmt
from tests.scripts.helpers import data_flags, load_script, make_tiny_checkpoint, run_main, tiny_model_flags



def _script(name):
    return load_script(name, f"scripts_{name}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@pytest.fixture(scope="module")
def flags(tiny_dataset, checkpoint):
    return tiny_model_flags() + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name) + [
        "--pretrained_path", checkpoint, "--max_cases", "1", "--infer_overlap", "0"]


def _grid_argv(flags, out):
    # Gaussian noise: no gradients, so a cell is one prediction pair on the tiny model
    return ["--attack", "gn", "--grid", "std=4,8", "--grid", "seed=0,1", "--out", str(out), *flags]


def _table_rows(markdown: str) -> dict:
    """``{(std, seed): [cells]}`` of the grid table's rows."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ("4", "8"):
            rows[(cells[0], cells[1])] = cells
    return rows


def test_grid_sweep_resumes_after_a_kill_and_tables_equal_results(flags, tmp_path, monkeypatch, capsys, one_thread):
    main = _script("sweep").main
    real_run_cell = sweep.run_cell
    calls = []

    def killed_after_first(args):
        if calls:
            raise RuntimeError("killed between cells")
        calls.append(args.std)
        return real_run_cell(args)

    monkeypatch.setattr(sweep, "run_cell", killed_after_first)
    with pytest.raises(RuntimeError, match="killed"):
        main(_grid_argv(flags, tmp_path))
    first = [p for p in (tmp_path / "runs").rglob("results.json")]
    assert len(first) == 1
    first_files = {p: p.stat().st_mtime_ns for p in first[0].parent.rglob("*") if p.is_file()}

    rerun = []
    monkeypatch.setattr(sweep, "run_cell", lambda args: rerun.append((args.std, args.seed)) or real_run_cell(args))
    code, err = run_main(main, _grid_argv(flags, tmp_path), capsys)
    assert code == 0, err
    assert sorted(rerun) == [(4.0, 1), (8.0, 0), (8.0, 1)]  # the finished cell is not redone
    assert {p: p.stat().st_mtime_ns for p in first_files} == first_files

    out = json.loads((tmp_path / "sweep.json").read_text())
    cells = out["cells"]
    assert len(cells) == 4 and {c["status"] for c in cells} == {"reused", "done"}
    table = _table_rows((tmp_path / "tables.md").read_text())
    assert len(table) == 4
    for cell in cells:
        results = json.loads(open(os.path.join(cell["run_dir"], "results.json")).read())
        overall = results["overall"]
        row = table[(cell["param_std"], cell["param_seed"])]
        assert row[2] == fmt(overall["dice_clean"]) and row[3] == fmt(overall["dice_adv"])
        assert row[4] == fmt(overall["hd95_adv"]) and row[6] == fmt(overall["ssim"], 4)
        assert results["args"]["std"] == float(cell["param_std"]) and results["args"]["seed"] == int(cell["param_seed"])
    for name in ("sweep.csv", "dice_vs_std.png", "dice_vs_similarity.png", "per_organ.md", "per_organ.png"):
        assert (tmp_path / name).exists(), name
    assert "Dice ↓ under attack, std (rows) × seed (columns)" in (tmp_path / "tables.md").read_text()

    # a third run reuses everything
    monkeypatch.setattr(sweep, "run_cell", lambda args: pytest.fail("a finished cell ran again"))
    code, err = run_main(main, _grid_argv(flags, tmp_path), capsys)
    assert code == 0, err


def test_shards_split_the_cells(flags, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep, "run_cell", lambda args: ran.append(args.std) or 1)
    preset = sweep.build_preset(None, ["std=1,2,3"], "gn")
    settings = sweep.SweepSettings(preset=preset, overrides=tuple(flags), out=str(tmp_path), shard=(1, 2))
    with pytest.raises(Exception, match="exit status 1"):
        sweep.run_sweep(settings)
    assert ran == [2.0]  # cell 1 of 0..2 belongs to shard 1/2


def test_blocks_that_do_not_divide_the_roi_are_skipped_with_a_note(flags, tmp_path):
    settings = sweep.SweepSettings(preset=sweep.build_preset("table4"), overrides=tuple(flags), out=str(tmp_path),
                                   report_only=True)
    rows = sweep.run_sweep(settings)
    status = {row["param_block"]: row["status"] for row in rows}
    assert status == {4: "pending", 8: "pending", 16: "pending", 32: "skipped", 48: "skipped", 96: "skipped"}
    skipped = next(r for r in rows if r["param_block"] == 32)
    assert "not divisible by block_size (32, 32, 32)" in skipped["note"]
    assert skipped["paper_dice"] == 32.40


def test_presets_cover_the_papers_tables():
    assert [c.label for c in sweep.build_preset("table1").cells] == ["PGD", "FGSM", "BIM", "GN", "VAFA-2D", "VAFA"]
    assert [c.params["q_max"] for c in sweep.build_preset("table2").cells] == [10, 20, 30, 40, 60, 80]
    assert [c.params["steps"] for c in sweep.build_preset("table3").cells] == [10, 20, 30, 40, 50, 60]
    assert len(sweep.build_preset("table5").cells) == 10
    t6 = sweep.build_preset("table6", models=[("A", "a.pt"), ("B", "b.pt")])
    assert len(t6.cells) == 12 and len({c.key for c in t6.cells}) == 12
    assert [c.label for c in t6.cells[:6]] == ["PGD", "FGSM", "BIM", "VAFA", "VAFA clip", "APGD"]
    with pytest.raises(ValueError, match="--models"):
        sweep.build_preset("table6")
    with pytest.raises(ValueError, match="exactly one"):
        sweep.build_preset("table1", ["q_max=1"])
    with pytest.raises(ValueError, match="KEY=V1"):
        sweep.parse_grid(["q_max"])


def test_table6_vafa_block_yields_to_an_override_and_its_clip_column_does_not(flags, tmp_path):
    """32^3 blocks do not divide the tiny ROI (32x32x16): skipped by default, run at --block_size 16 16 16;
    the clip column keeps the paper's clip whatever the overrides say."""
    preset = sweep.build_preset("table6", models=[("A", "a.pt")])
    rows = sweep.run_sweep(sweep.SweepSettings(preset=preset, overrides=tuple(flags), out=str(tmp_path), report_only=True))
    assert {r["label"]: r["status"] for r in rows if r["attack"] == "vafa-3d"} == {"VAFA": "skipped", "VAFA clip": "skipped"}
    settings = sweep.SweepSettings(preset=preset, overrides=(*flags, "--block_size", "16", "16", "16",
                                                             "--vafa_normalise", "slice"), out=str(tmp_path))
    parsed = {c.label: sweep.cell_args(settings, c) for c in preset.cells}
    assert parsed["VAFA"].block_size == parsed["VAFA clip"].block_size == (16, 16, 16)
    assert (parsed["VAFA"].vafa_normalise, parsed["VAFA clip"].vafa_normalise) == ("slice", "clip")
    assert parsed["APGD"].attack_name == "apgd" and parsed["APGD"].eps == 4
    assert {a.pretrained_path for a in parsed.values()} == {"a.pt"}


def test_sweep_refuses_flags_it_sets(capsys):
    code, err = run_main(_script("sweep").main, ["--preset", "table1", "--out", "x", "--save_adv_images_dir", "y"], capsys)
    assert code == 2 and "set by the sweep" in err


def test_scripts_have_help(capsys):
    for name in ("sweep", "frequency_bands", "per_organ"):
        with pytest.raises(SystemExit) as exit_:
            _script(name).main(["--help"])
        assert exit_.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_a_grid_over_attacks_names_the_attack_in_its_table():
    """``--grid attack=... --grid precision=...``: the attack is a column and the pivot's rows,
    and the curve's axis is the other setting (the attack is no number to plot against)."""
    from studies.sweep_report import grid_table

    preset = sweep.build_preset(None, ["attack=pgd,gn", "precision=fp32,bf16"])
    assert preset.param == "precision"
    assert sweep.build_preset(None, ["attack=pgd,gn"]).param is None
    rows = []
    for cell, dice in zip(preset.cells, (70.0, 71.0, 74.0, 74.5)):
        rows.append({"attack": cell.attack, **{f"param_{k}": v for k, v in cell.params.items() if k != "attack"},
                     "dice_clean": 75.0, "dice_adv": dice, "hd95_adv": 1.0, "lpips_similarity": None,
                     "ssim": 0.9, "success_rate": 1.0})
    lines = grid_table(preset, rows)
    assert lines[0].startswith("| attack | precision | Dice clean")
    assert "| pgd | fp32 | 75.00 | 70.00 |" in "\n".join(lines)
    assert "| attack \\ precision | fp32 | bf16 |" in lines
    assert "| gn | 74.00 | 74.50 |" in lines


def test_a_registered_toy_attack_sweeps_from_its_own_presets(flags, tmp_path, monkeypatch, capsys, one_thread):
    """Registering an attack (one registry entry) is all a grid over attacks needs: its class's presets are the
    cell's base flags, and worst-case sweeps like any other attack."""
    from attacks import ATTACKS, Attack
    from attacks.options import EPS

    class Toy(Attack):
        """Adds +eps to every voxel (then clamps into [0, 1])."""

        name = "toy-shift"
        options = (EPS,)
        folder_format = "toy_shift_eps_{eps}"
        summary_format = "toy shift: eps={eps}/255"
        presets = {"eps": 2}

        def __init__(self, model, loss_fn, *, eps: float):
            super().__init__(model, loss_fn)
            self.eps = eps

        def forward(self, images, labels):
            return (images + self.eps).clamp(0, 1)

    monkeypatch.setitem(ATTACKS, "toy-shift", Toy)
    preset = sweep.build_preset(None, ["attack=toy-shift,worst-case"])
    assert [c.base for c in preset.cells] == [{"attack_name": "toy-shift", "eps": 2},
                                              {"attack_name": "worst-case", "eps": 4}]
    argv = ["--grid", "attack=toy-shift,worst-case", "--steps", "1", "--out", str(tmp_path), *flags]
    code, err = run_main(_script("sweep").main, argv, capsys)
    assert code == 0, err
    cells = json.loads((tmp_path / "sweep.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["done", "done"]
    toy_run = next((tmp_path / "runs").glob("toy-shift/toy_shift_eps_2*"))  # named by its folder_format, preset eps
    import nibabel as nib
    import numpy as np

    adv, clean = (np.asarray(nib.load(str(next((toy_run / d).glob("*.nii.gz")))).dataobj).astype(float)
                  for d in ("imagesTsAdv", "imagesTsClean"))
    moved = (adv - clean)[clean <= 252]  # saved as uint8 x 255: +2/255 is +2, give or take the rounding of both
    assert moved.size and moved.min() >= 1 and moved.max() <= 3
    assert any((tmp_path / "runs").glob("worst-case*/worst_case_*"))
