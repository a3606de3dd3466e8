"""Frequency bands: band membership of single DCT coefficients, Parseval, and band-limited re-evaluation."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

from attacks.frequency import idct
from studies.bands import BANDS, analyse_run, band_energies, band_index, keep_bands
from tests.scripts.helpers import eval_flags, run_main

SHAPE = (12, 10, 8)
EDGES = (0.25, 0.5)


def _expected_band(index, measure):
    f = [k / n for k, n in zip(index, SHAPE)]
    r = math.sqrt(sum(x * x for x in f) / 3) if measure == "radius" else sum(f) / 3
    return 0 if r < EDGES[0] else (1 if r < EDGES[1] else 2)


@pytest.mark.parametrize("measure", ["radius", "index_sum"])
@pytest.mark.parametrize("index", [(0, 0, 0), (1, 2, 1), (4, 4, 3), (6, 5, 4), (11, 9, 7)])
def test_one_coefficient_lands_in_its_band_and_energies_sum_to_the_total(index, measure):
    coeffs = torch.zeros(SHAPE, dtype=torch.float64)
    coeffs[index] = 0.3
    delta = idct(coeffs, 3)  # a perturbation made of one DCT coefficient
    bands = band_index(SHAPE, EDGES, measure)
    energy, total = band_energies(delta, bands)
    band = _expected_band(index, measure)
    assert energy[band] == pytest.approx(0.09, rel=1e-9)
    assert sum(energy) == pytest.approx(total, rel=1e-9)  # Parseval
    assert all(abs(e) < 1e-20 for i, e in enumerate(energy) if i != band)


def test_all_three_bands_occur_and_random_perturbations_keep_parseval():
    bands = band_index(SHAPE, EDGES, "radius")
    assert set(bands.unique().tolist()) == {0, 1, 2}
    delta = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    energy, total = band_energies(delta, bands)
    assert sum(energy) == pytest.approx(total, rel=1e-10)
    parts = [keep_bands(delta, bands, (b,)) for b in range(len(BANDS))]
    assert torch.allclose(sum(parts), delta, atol=1e-12)
    assert torch.allclose(keep_bands(delta, bands, (0, 1, 2)), delta, atol=1e-12)
    assert [float((p ** 2).sum()) for p in parts] == pytest.approx(energy, rel=1e-9)


@pytest.mark.parametrize("edges", [(0.5, 0.25), (0.0, 0.5), (0.3, 1.0)])
def test_bad_edges_are_refused(edges):
    with pytest.raises(ValueError, match="0 < e1 < e2 < 1"):
        band_index(SHAPE, edges)


def test_band_limited_reevaluation_with_all_bands_equals_the_adversarial_dice(tiny_dataset, checkpoint, tmp_path,
                                                                             capsys, one_thread):
    import generate_adv_samples as gen

    argv = eval_flags(tiny_dataset, checkpoint, tmp_path, "--attack_name", "pgd", "--steps", "2", "--eps", "8",
                      "--save_dtype", "float32")
    code, err = run_main(gen.main, argv, capsys)
    assert code == 0, err
    run_dir = next(p.parent for p in tmp_path.rglob("results.json"))
    results = json.loads((run_dir / "results.json").read_text())
    analysis = analyse_run(str(run_dir), evaluate=True, device="cpu")
    for name, case in analysis["per_case"].items():
        reported = results["per_case"][name]
        assert case["dice"]["adv"] == pytest.approx(reported["dice_adv"], abs=1e-9)
        assert case["dice"]["all"] == pytest.approx(reported["dice_adv"], abs=1e-9)
        assert case["dice"]["clean"] == pytest.approx(reported["dice_clean"], abs=1e-9)
        assert sum(case["energy"].values()) == pytest.approx(case["total_energy"], rel=1e-9)
        assert case["linf"] <= 8 / 255 + 1e-6

    # the script writes JSON, CSV and the chart
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "scripts", "frequency_bands.py")
    spec = importlib.util.spec_from_file_location("frequency_bands_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "bands"
    code, err = run_main(script.main, [str(run_dir), "--out", str(out), "--edges", "0.2", "0.5"], capsys)
    assert code == 0, err
    written = json.loads((out / "bands.json").read_text())
    assert written["edges"] == [0.2, 0.5] and "dice" not in written["overall"]
    assert (out / "bands.csv").exists() and (out / "bands.png").exists()
