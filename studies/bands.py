"""Frequency-band analysis of saved perturbations: energy per 3D-DCT band, band-limited re-evaluation.

The perturbation of a case is ``delta = adv - clean`` (the saved volumes of a generation
run, ``images<Ts|Tr>Clean/clean_*`` and ``images<Ts|Tr>Adv/adv_*``, uint8 or float32). Its
orthonormal 3D DCT over the whole volume (:func:`attacks.frequency.dct`, matrix products)
has ``sum(C**2) == sum(delta**2)`` (Parseval), so the band energies add up to the total.
A coefficient ``C[k]`` of a ``[H, W, D]`` volume has normalised frequency ``f_i = k_i / n_i``
in ``[0, 1)`` per axis; its band is set by ``r = sqrt(mean_i f_i^2)`` (``radius``) or
``r = mean_i f_i`` (``index_sum``): low ``r < e1``, middle ``e1 <= r < e2``, high ``r >= e2``.

Band-limited re-evaluation keeps one band of ``C``, inverts it, adds it to the clean volume
(clipped to [0, 1], the models' input range) and measures the model's Dice; keeping every
band gives back the saved adversarial volume.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional, Sequence

import numpy as np
import torch

from attacks.frequency import dct, idct
from utils.distributed import check_stop
from utils.errors import UserError
from utils.run_folder import RunLayout
from utils.io import array_to_volume, load_nifti, read_json

logger = logging.getLogger(__name__)

BANDS = ("low", "middle", "high")
MEASURES = ("radius", "index_sum")


def band_index(shape: Sequence[int], edges: Sequence[float] = (1 / 3, 2 / 3), measure: str = "radius",
               device: Optional[torch.device] = None) -> torch.Tensor:
    """The band (0 low, 1 middle, 2 high) of every DCT coefficient of a volume of ``shape``.

    Args:
        shape: ``(H, W, D)`` (any number of axes).
        edges: the two band edges ``e1 < e2`` on the normalised measure (in ``(0, 1)``).
        measure: ``radius`` (root mean square of ``k_i / n_i``) or ``index_sum`` (their mean).
        device: device of the result.

    Returns:
        ``[H, W, D]`` long tensor of band indices.

    Raises:
        ValueError: edges not increasing inside ``(0, 1)``, or an unknown measure.
    """
    e1, e2 = (float(e) for e in edges)
    if not 0 < e1 < e2 < 1:
        raise ValueError(f"band edges must satisfy 0 < e1 < e2 < 1, got {tuple(edges)}")
    if measure not in MEASURES:
        raise ValueError(f"band measure must be one of {MEASURES}, got {measure!r}")
    freqs = torch.meshgrid(*(torch.arange(n, dtype=torch.float64, device=device) / n for n in shape), indexing="ij")
    if measure == "radius":
        r = torch.sqrt(sum(f ** 2 for f in freqs) / len(shape))  # [H, W, D]
    else:
        r = sum(freqs) / len(shape)  # [H, W, D]
    return torch.bucketize(r, torch.tensor([e1, e2], dtype=torch.float64, device=device), right=True)


def band_energies(delta: torch.Tensor, bands: torch.Tensor) -> tuple[list[float], float]:
    """Energy ``sum(C**2)`` of the 3D DCT of ``delta`` in each band, and ``sum(delta**2)``.

    Args:
        delta: ``[H, W, D]`` perturbation.
        bands: ``[H, W, D]`` band indices from :func:`band_index`.

    Returns:
        ``([low, middle, high], total)``; the three add up to ``total`` (Parseval).
    """
    coeffs = dct(delta.double(), 3)  # [H, W, D]
    energy = torch.bincount(bands.flatten(), weights=(coeffs ** 2).flatten(), minlength=len(BANDS))
    return [float(e) for e in energy], float((delta.double() ** 2).sum())


def keep_bands(delta: torch.Tensor, bands: torch.Tensor, keep: Sequence[int]) -> torch.Tensor:
    """``delta`` with only the DCT coefficients of the bands ``keep`` (float64, ``[H, W, D]``)."""
    coeffs = dct(delta.double(), 3)  # [H, W, D]
    mask = torch.zeros_like(bands, dtype=torch.bool)
    for band in keep:
        mask |= bands == band
    return idct(coeffs * mask, 3)


def _load(path: str) -> torch.Tensor:
    if not os.path.exists(path):
        raise UserError(f"saved volume missing: {path}; the run must save its volumes (not --debugging)")
    array, _ = load_nifti(path)
    return torch.from_numpy(array_to_volume(np.asarray(array)))


def _label_names(record: dict, split: str) -> dict:
    """``{case image name: label file name}`` from the run's datalist."""
    from data.loading import load_datalist

    try:
        items = load_datalist(record["data_dir"], record["json_list"], split)
    except (UserError, KeyError) as err:
        raise UserError(f"cannot read the run's datalist to match labels ({err}); "
                        "band-limited re-evaluation needs the run's --data_dir and --json_list") from None
    return {os.path.basename(str(i["image"])): os.path.basename(str(i["label"])) for i in items}


def analyse_run(run_dir: str, edges: Sequence[float] = (1 / 3, 2 / 3), measure: str = "radius",
                evaluate: bool = False, checkpoint: Optional[str] = None, device: Optional[str] = None,
                max_cases: Optional[int] = None) -> dict:
    """Band energies of every saved case of a generation run and, with ``evaluate``, Dice per kept band.

    Args:
        run_dir: a generation run folder (``results.json`` and saved volumes).
        edges, measure: the bands (see :func:`band_index`).
        evaluate: re-run the model on the clean volume plus each single band of the perturbation.
        checkpoint: weights for the re-evaluation (default: the run's ``--pretrained_path``); the
            model and window flags are the run's (``results.json`` ``args``).
        device: torch device (default: cuda when available).
        max_cases: only the first N cases.

    Returns:
        ``{"run_dir", "bands", "edges", "measure", "per_case": {case: {...}}, "overall": {...}}``;
        energies in squared [0, 1] intensity units, shares as fractions, Dice in %.

    Raises:
        UserError: no ``results.json``, a missing volume, or labels that cannot be matched.
    """
    path = RunLayout(run_dir).results
    if not os.path.exists(path):
        raise UserError(f"no results.json in {run_dir}: give a finished generate_adv_samples.py run folder")
    try:
        report = read_json(path)
        record, cases = report["args"], report["per_case"]
        if not isinstance(record, dict) or not isinstance(cases, dict):
            raise TypeError("args or per_case is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is unreadable or incomplete ({' '.join(str(err).split())}); run the same "
                        "generate_adv_samples.py command again to finish the run and rewrite it") from None
    split = "training" if record.get("gen_train_adv_mode") else "validation"
    layout = RunLayout(run_dir, split)
    names = list(cases)[: max_cases]
    predictor = _Predictor(record, checkpoint, device) if evaluate else None
    labels = _label_names(record, split) if evaluate else {}
    per_case = {}
    for name in names:
        check_stop()  # a safe point between cases (under a driver's stop_on_signals)
        clean = _load(layout.clean_image(name))
        adv = _load(layout.adv_image(name))
        delta = adv.double() - clean.double()  # [H, W, D]
        bands = band_index(delta.shape, edges, measure)
        energy, total = band_energies(delta, bands)
        case = {"energy": dict(zip(BANDS, energy)), "total_energy": total,
                "share": {b: (e / total if total > 0 else None) for b, e in zip(BANDS, energy)},
                "linf": float(delta.abs().max())}
        if predictor is not None:
            if name not in labels:
                raise UserError(f"case {name} is not in the run's datalist; cannot find its label")
            label_path = layout.clean_label(labels[name])
            if not os.path.exists(label_path):
                raise UserError(f"saved label missing: {label_path}")
            label = torch.from_numpy(np.asarray(load_nifti(label_path)[0]).astype(np.int64))  # class indices
            dice = {"clean": predictor.dice(clean, label), "adv": predictor.dice(adv, label)}
            kept = {"all": tuple(range(len(BANDS))), **{b: (i,) for i, b in enumerate(BANDS)}}
            for key, keep in kept.items():
                volume = (clean.double() + keep_bands(delta, bands, keep)).clamp(0, 1).float()
                dice[key] = predictor.dice(volume, label)
            case["dice"] = dice
            case["dice_reported"] = (cases[name] or {}).get("dice_adv")
        per_case[name] = case
        logger.info("%s: energy shares %s%s", name, ", ".join(f"{b} {case['share'][b] or 0:.3f}" for b in BANDS),
                    "" if "dice" not in case else " | Dice " + ", ".join(f"{k} {v:.2f}" for k, v in case["dice"].items()))
    return {"run_dir": os.path.abspath(run_dir), "bands": list(BANDS), "edges": [float(e) for e in edges],
            "measure": measure, "per_case": per_case, "overall": _overall(per_case)}


def _overall(per_case: dict) -> dict:
    if not per_case:
        return {"n_cases": 0}
    cases = list(per_case.values())
    total = sum(c["total_energy"] for c in cases)
    overall = {"n_cases": len(cases), "total_energy": total,
               "energy": {b: sum(c["energy"][b] for c in cases) for b in BANDS}}
    overall["share"] = {b: (overall["energy"][b] / total if total > 0 else None) for b in BANDS}
    if all("dice" in c for c in cases):
        overall["dice"] = {k: float(np.mean([c["dice"][k] for c in cases])) for k in cases[0]["dice"]}
    return overall


class _Predictor:
    """The run's model and sliding window, scoring volumes by mean Dice over classes (%)."""

    def __init__(self, record: dict, checkpoint: Optional[str], device: Optional[str]):
        from engine import cli
        from engine.evaluation import load_trained_model
        from utils.distributed import resolve_device

        args = cli.recorded_args(record, cli.GENERATION)
        self.settings = cli.model_settings(args)
        self.window = cli.window_settings(args)
        self.device = resolve_device(device)
        path = checkpoint or record.get("pretrained_path")
        if not path or not os.path.exists(path):
            raise UserError(f"checkpoint not found: {path!r}; pass --pretrained_path")
        self.model = load_trained_model(self.settings, path, self.device)

    def dice(self, volume: torch.Tensor, label: torch.Tensor) -> float:
        from networks import predict_volume
        from utils.metrics import class_mean, dice_per_class

        pred = predict_volume(self.model, volume[None, None].to(self.device), self.window)  # [1, 1, H, W, D]
        value = class_mean(dice_per_class(pred[0, 0], label.to(self.device), self.settings.out_channels))
        return float("nan") if value is None or math.isnan(value) else 100.0 * value


def band_rows(analysis: dict) -> list[dict]:
    """CSV rows: one per case and one ``overall`` row (energies, shares, Dice per kept band)."""
    rows = []
    for name, case in [*analysis["per_case"].items(), ("overall", analysis["overall"])]:
        if "energy" not in case:
            continue
        row = {"case": name, "total_energy": case["total_energy"]}
        row.update({f"energy_{b}": case["energy"][b] for b in BANDS})
        row.update({f"share_{b}": case["share"][b] for b in BANDS})
        row.update({f"dice_{k}": v for k, v in case.get("dice", {}).items()})
        rows.append(row)
    return rows
