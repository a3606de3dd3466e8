"""Synthetic abdominal CT phantom in the Synapse (BTCV) dataset layout.

Gives the tool something real-shaped to run on without the licensed Synapse data:
tests, demos and smoke runs of the attack and training scripts.

Each case is a volume in Hounsfield units with the 13 organ labels of the Synapse
benchmark (the paper's code release) as smooth 3D shapes in their usual places, so the default
intensity window (-175..250 HU) and every transform of ``data.loading`` apply as they
do to real scans.

Anatomical convention
    Shapes are built in RAS voxel order: array axis 0 points to the patient's
    **right**, axis 1 to the **anterior** (belly), axis 2 to the **superior** (head).
    The liver therefore sits at high axis-0 indices; in a radiological display
    (``utils.figures``) the patient's right is on the viewer's left.
    Positions are given in normalised coordinates ``(u, v, w)`` in [-1, 1] over
    the field of view along each axis, so the anatomy fills any volume shape;
    the voxel spacing only sets the physical scale recorded in the affine and the
    texture grain.

Files
    By default the volumes are stored the way most DICOM-derived NIfTI files are:
    axes flipped to L, P, S with the affine ``diag(-sx, -sy, sz)`` and an origin
    offset, so ``Orientationd("RAS")`` has real work to do. ``orientation="RAS"``
    stores the RAS array with ``diag(sx, sy, sz)``.

Layout written by :func:`write_phantom_dataset` (and ``python -m data.phantom``)::

    OUT/imagesTr/img0001.nii.gz     int16, HU
    OUT/labelsTr/label0001.nii.gz   uint8, 0..13
    OUT/dataset.json                Decathlon list: "training" then "validation"

Training cases take the first numbers, validation cases the following ones.

Re-running into the same folder: a folder whose JSON records identical generator
settings and whose files all exist is left as it is (nothing is rewritten); a
phantom folder with other settings is regenerated (files the new list no longer
names are removed); a non-empty folder that is not a phantom dataset is refused.
Generation is deterministic: the same settings give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from data.datasets import SYNAPSE
from utils.errors import EXIT_USER_ERROR, UserError
from utils.io import save_nifti, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_NAMES",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "make_phantom_case",
    "phantom_affine",
    "write_phantom_dataset",
    "main",
]

#: Synapse label map (the paper's code release), index = label value.
LABEL_NAMES = SYNAPSE.class_names

DEFAULT_SHAPE = (96, 96, 64)
DEFAULT_SPACING = (0.8, 0.8, 2.5)
GENERATOR_VERSION = 1
MIN_SIDE = 8

# Tissue codes: 1..13 are the labelled organs; unlabelled tissues follow.
AIR, FAT, MUSCLE, BONE, MARROW, DISC, CSF, BOWEL, GAS, KIDNEY_SINUS, STOMACH_LUMEN = range(20, 31)

# (mean HU, texture amplitude HU) per tissue code.
_TISSUE_HU = {
    0: (-90.0, 12.0),  # visceral fat (label 0 inside the abdominal cavity)
    1: (50.0, 6.0),  # spleen
    2: (155.0, 10.0),  # right kidney (cortex, contrast phase)
    3: (155.0, 10.0),  # left kidney
    4: (10.0, 4.0),  # gallbladder (bile)
    5: (40.0, 6.0),  # esophagus
    6: (60.0, 6.0),  # liver
    7: (45.0, 6.0),  # stomach wall
    8: (180.0, 8.0),  # aorta (contrast)
    9: (150.0, 8.0),  # inferior vena cava
    10: (160.0, 8.0),  # portal and splenic veins
    11: (45.0, 12.0),  # pancreas (lobulated)
    12: (30.0, 6.0),  # right adrenal
    13: (30.0, 6.0),  # left adrenal
    AIR: (-1000.0, 0.0),
    FAT: (-105.0, 10.0),
    MUSCLE: (50.0, 8.0),
    BONE: (700.0, 60.0),
    MARROW: (220.0, 40.0),
    DISC: (90.0, 10.0),
    CSF: (15.0, 4.0),
    BOWEL: (25.0, 15.0),
    GAS: (-750.0, 60.0),
    KIDNEY_SINUS: (25.0, 8.0),
    STOMACH_LUMEN: (15.0, 5.0),
}
_N_CODES = max(_TISSUE_HU) + 1


# --------------------------------------------------------------------------- geometry helpers


def _axis_coords(n: int) -> np.ndarray:
    """Voxel centres of an axis of ``n`` voxels in normalised coordinates (-1, 1)."""
    return ((np.arange(n, dtype=np.float32) + 0.5) / n) * 2.0 - 1.0


class _Canvas:
    """Tissue and label maps of one case, painted shape by shape (later wins).

    Every shape is evaluated only inside its bounding box, on open (broadcast) grids.
    """

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator):
        self.shape = shape
        self.rng = rng
        self.coords = [_axis_coords(n) for n in shape]  # u, v, w
        self.tissue = np.full(shape, AIR, dtype=np.uint8)
        self.label = np.zeros(shape, dtype=np.uint8)
        self.body = np.zeros(shape, dtype=bool)
        self.cavity = np.zeros(shape, dtype=bool)

    def box(self, lo: Sequence[float], hi: Sequence[float]):
        """Index slices and open coordinate grids covering ``[lo, hi]`` (normalised)."""
        slices, grids = [], []
        for axis, (a, b) in enumerate(zip(lo, hi)):
            c = self.coords[axis]
            start = int(np.searchsorted(c, a, side="left"))
            stop = int(np.searchsorted(c, b, side="right"))
            slices.append(slice(start, max(start, stop)))
            g = c[start:stop]
            grids.append(g.reshape([-1 if i == axis else 1 for i in range(3)]))
        return tuple(slices), grids

    def wobble(self, grids, center, radii, amplitude: float, n_modes: int = 3) -> np.ndarray:
        """Smooth random deformation field: a few low-frequency sinusoids in organ-local units."""
        field = 0.0
        for _ in range(n_modes):
            k = self.rng.normal(size=3)
            k *= self.rng.uniform(1.5, 3.0) / np.linalg.norm(k)
            phase = self.rng.uniform(0, 2 * np.pi)
            arg = sum(k[i] * (grids[i] - center[i]) / radii[i] for i in range(3))
            field = field + np.sin(arg + phase)
        return (amplitude / np.sqrt(n_modes)) * field

    def ellipsoid(self, center, radii, amplitude: float = 0.0) -> tuple[tuple[slice, ...], np.ndarray]:
        """Mask of a (deformed) ellipsoid: ``sum(((x - c) / r)^2) + wobble < 1``."""
        pad = 1.0 + 1.5 * amplitude
        lo = [c - r * pad for c, r in zip(center, radii)]
        hi = [c + r * pad for c, r in zip(center, radii)]
        sl, g = self.box(lo, hi)
        q = sum(((g[i] - center[i]) / radii[i]) ** 2 for i in range(3))
        if amplitude:
            q = q + self.wobble(g, center, radii, amplitude)
        return sl, np.broadcast_to(q < 1.0, tuple(s.stop - s.start for s in sl))

    def tube(self, points, radii, amplitude: float = 0.0) -> tuple[tuple[slice, ...], np.ndarray]:
        """Mask of a tube along a polyline with linearly varying radius."""
        pts = np.asarray(points, dtype=np.float32)
        rad = np.asarray(radii, dtype=np.float32)
        rmax = float(rad.max()) * (1.0 + 1.5 * amplitude)
        sl, g = self.box(pts.min(0) - rmax, pts.max(0) + rmax)
        ratio = None
        for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
            d = b - a
            t = sum((g[i] - a[i]) * d[i] for i in range(3)) / float(d @ d)
            t = np.clip(t, 0.0, 1.0)
            dist2 = sum((g[i] - a[i] - t * d[i]) ** 2 for i in range(3))
            r = ra + t * (rb - ra)
            seg = np.sqrt(dist2) / r
            ratio = seg if ratio is None else np.minimum(ratio, seg)
        if amplitude:
            center = pts.mean(0)
            ratio = ratio + self.wobble(g, center, [rmax * 3] * 3, amplitude)
        return sl, ratio < 1.0

    def paint(self, region, code: int, label: int | None = None, within: np.ndarray | None = None) -> None:
        """Set ``code`` (and ``label``) on a region, restricted to ``within`` (default: the cavity)."""
        sl, mask = region
        mask = mask & (self.cavity if within is None else within)[sl]
        self.tissue[sl][mask] = code
        if label is not None:
            self.label[sl][mask] = label


@dataclass(frozen=True)
class _Jitter:
    """Per-case anatomical variation drawn from the case's generator."""

    rng: np.random.Generator
    shift_w: float
    scale: float

    def c(self, u: float, v: float, w: float, sd: float = 0.025):
        d = self.rng.normal(scale=sd, size=3).clip(-2 * sd, 2 * sd)
        return (u + d[0], v + d[1], w + self.shift_w + d[2])

    def r(self, *radii: float):
        s = self.scale * self.rng.uniform(0.9, 1.1)
        return tuple(r * s for r in radii)


# --------------------------------------------------------------------------- anatomy


def _body(cv: _Canvas, rng: np.random.Generator) -> float:
    """Body outline, subcutaneous fat, abdominal wall muscle, spine, ribs, back muscles.

    Returns the depth ``v`` of the vertebral body centre, which places the retroperitoneal organs.
    """
    u, v, w = cv.coords
    uu, vv = u[:, None], v[None, :]
    a = rng.uniform(0.88, 0.95)  # lateral semi-axis
    b = rng.uniform(0.76, 0.82)  # anterior semi-axis; the back is flatter
    bv = np.where(vv >= 0, b, 0.92 * b)
    theta = np.arctan2(vv, uu)
    outline = 1.0 + 0.015 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))

    def inside(t):  # the outline shrunk by a wall thickness t (normalised units)
        return (uu / (a - t)) ** 2 + (vv / (bv - t)) ** 2 < outline

    body2d, muscle2d, cavity2d = inside(0.0), inside(0.06), inside(0.11)
    tissue2d = np.full(body2d.shape, AIR, np.uint8)
    tissue2d[body2d] = FAT
    tissue2d[muscle2d] = MUSCLE
    tissue2d[cavity2d] = 0
    cv.tissue[:] = tissue2d[:, :, None]
    cv.body[:] = body2d[:, :, None]
    cv.cavity[:] = cavity2d[:, :, None]

    # Spine near the centre of the back half: paraspinal muscles, posterior arch with
    # the canal, spinous process, and the vertebral body (cortex, marrow, discs).
    vs = float(rng.uniform(-0.32, -0.28))
    for side in (-1, 1):
        cv.paint(cv.ellipsoid((side * 0.17, vs - 0.22, 0), (0.13, 0.12, 2.0)), MUSCLE, within=cv.body)
    cv.paint(cv.ellipsoid((0.0, vs - 0.17, 0), (0.085, 0.085, 2.0)), BONE, within=cv.body)
    cv.paint(cv.ellipsoid((0.0, vs - 0.17, 0), (0.045, 0.045, 2.0)), CSF, within=cv.body)
    cv.paint(cv.ellipsoid((0.0, vs - 0.3, 0), (0.025, 0.07, 2.0)), BONE, within=cv.body)
    period = rng.uniform(0.3, 0.4)
    disc = (((w - rng.uniform(0, period)) / period) % 1.0) < 0.22  # [D]
    ru, rv = 0.13, 0.11
    sl, g = cv.box((-ru, vs - rv, -2.0), (ru, vs + rv, 2.0))
    q = (g[0] / ru) ** 2 + ((g[1] - vs) / rv) ** 2  # [h, w, 1]
    shell = np.broadcast_to(q < 1.0, cv.tissue[sl].shape)
    vert = np.where(q < 0.65, MARROW, BONE).astype(np.uint8)  # [h, w, 1]
    vert = np.where(disc[sl[2]][None, None, :], DISC, vert)  # [h, w, d]
    cv.tissue[sl][shell] = vert[shell]
    cv.cavity[sl][shell] = False

    # Ribs in the upper abdomen: bone dots just inside the body wall.
    for ang in (25, 55, 125, 155, 205, 335):
        t = np.deg2rad(ang + rng.uniform(-5, 5))
        cu, cvv = 0.88 * a * np.cos(t), 0.84 * b * np.sin(t)
        cv.paint(cv.ellipsoid((cu, cvv, 0.6), (0.035, 0.035, 0.45)), BONE, within=cv.body)

    # Psoas muscles beside the lower spine.
    for side in (-1, 1):
        cv.paint(cv.tube([(side * 0.17, vs + 0.02, 0.35), (side * 0.22, vs + 0.05, -1.1)], [0.04, 0.1]), MUSCLE)
    return vs


def _organs(cv: _Canvas, rng: np.random.Generator, vs: float) -> None:
    """The 13 Synapse organs, painted large to small, vessels last (``vs``: spine depth)."""
    j = _Jitter(rng, shift_w=float(rng.normal(scale=0.04)), scale=float(rng.uniform(0.95, 1.05)))
    wob = 0.25
    dv = vs + 0.3  # organs behind the peritoneum follow the spine

    # liver (6): large right lobe plus a left lobe crossing the midline.
    cv.paint(cv.ellipsoid(j.c(0.42, 0.02, 0.48), j.r(0.42, 0.55, 0.48), wob), 6, 6)
    cv.paint(cv.ellipsoid(j.c(0.02, 0.32, 0.62), j.r(0.32, 0.22, 0.28), wob), 6, 6)
    # spleen (1): left, posterior, superior, against the body wall.
    cv.paint(cv.ellipsoid(j.c(-0.56, -0.2, 0.42), j.r(0.17, 0.28, 0.3), wob), 1, 1)
    # stomach (7): fundus/body on the left and the antrum sweeping to the right.
    cs, rs = j.c(-0.34, 0.2, 0.45), j.r(0.22, 0.2, 0.28)
    cv.paint(cv.ellipsoid(cs, rs, wob), 7, 7)
    cv.paint(cv.tube([(cs[0] + 0.05, cs[1] + 0.04, cs[2] - 0.18), (0.05, 0.3, 0.18)], j.r(0.1, 0.075)), 7, 7)
    cv.paint(cv.ellipsoid(cs, tuple(0.7 * r for r in rs)), STOMACH_LUMEN, 7)
    cv.paint(cv.ellipsoid((cs[0], cs[1] + 0.1, cs[2] + 0.12), (0.08, 0.05, 0.08)), GAS, 7)
    # kidneys (2 right, 3 left): posterior, beside the spine; the right one lower.
    for lab, side, w0 in ((2, 1, -0.14), (3, -1, -0.02)):
        c, r = j.c(side * 0.4, dv - 0.35, w0), j.r(0.13, 0.15, 0.34)
        cv.paint(cv.ellipsoid(c, r, 0.15), lab, lab)
        cv.paint(cv.ellipsoid((c[0] - side * 0.04, c[1] + 0.02, c[2]), (0.04, 0.05, 0.16)), KIDNEY_SINUS, lab)
    # pancreas (11): head by the duodenum (right), tail to the splenic hilum (left).
    cv.paint(cv.tube([j.c(0.14, 0.04, 0.02), j.c(0.0, 0.1, 0.12), j.c(-0.24, 0.02, 0.22),
                      j.c(-0.46, -0.1, 0.3)], j.r(0.075, 0.06, 0.055, 0.045), 0.1), 11, 11)
    # gallbladder (4): under the liver, anterior.
    cv.paint(cv.ellipsoid(j.c(0.3, 0.25, 0.12), j.r(0.07, 0.1, 0.14), 0.1), 4, 4)
    # adrenal glands (12 right, 13 left): above and medial to the kidneys.
    cv.paint(cv.ellipsoid(j.c(0.25, dv - 0.25, 0.3, sd=0.01), j.r(0.04, 0.07, 0.1), 0.1), 12, 12)
    cv.paint(cv.ellipsoid(j.c(-0.23, dv - 0.21, 0.32, sd=0.01), j.r(0.04, 0.07, 0.1), 0.1), 13, 13)
    # esophagus (5): in front of the aorta, down into the stomach cardia.
    cv.paint(cv.tube([j.c(-0.04, dv - 0.01, 1.1), j.c(-0.1, dv + 0.0, 0.85), (cs[0] + 0.16, cs[1] - 0.1, cs[2] + 0.12)],
                     j.r(0.045, 0.045, 0.05)), 5, 5)
    # portal vein and splenic vein (10): spleen hilum -> confluence -> liver hilum.
    cv.paint(cv.tube([j.c(-0.44, -0.16, 0.32), j.c(-0.2, -0.05, 0.2), j.c(0.02, 0.02, 0.12, sd=0.01),
                      j.c(0.18, 0.05, 0.25), j.c(0.3, 0.05, 0.34)], j.r(0.03, 0.035, 0.04, 0.045, 0.04)), 10, 10)
    # inferior vena cava (9): right of the midline, up into the liver.
    c9 = j.c(0.13, dv - 0.1, 0.0, sd=0.01)
    cv.paint(cv.tube([(c9[0], c9[1], -1.1), (c9[0] + 0.01, c9[1] + 0.02, 0.75)], j.r(0.065, 0.07)), 9, 9)
    # aorta (8): left of the midline, directly in front of the vertebral body.
    c8 = j.c(-0.06, dv - 0.12, 0.0, sd=0.01)
    cv.paint(cv.tube([(c8[0] + 0.01, c8[1], -1.1), (c8[0], c8[1] - 0.02, 1.1)], j.r(0.055, 0.058)), 8, 8)
    # bowel loops with gas in the lower anterior abdomen (unlabelled).
    field = _smooth_noise(cv.shape, (6, 6, 3), rng)
    gas = _smooth_noise(cv.shape, (4, 4, 2), rng)
    u, v, w = cv.coords
    zone = (v[None, :, None] > dv - 0.1) & (w[None, None, :] < 0.2 + j.shift_w) & (u[:, None, None] > -0.7)
    bowel = zone & cv.cavity & (cv.tissue == 0) & (field > 0.2)
    cv.tissue[bowel] = BOWEL
    cv.tissue[bowel & (gas > 1.3)] = GAS


def _smooth_noise(shape: Sequence[int], grain: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Low-pass Gaussian noise (unit variance) with a correlation length of ``grain`` voxels."""
    coarse = [max(2, int(np.ceil(n / max(1, g)))) + 1 for n, g in zip(shape, grain)]
    noise = rng.standard_normal(coarse).astype(np.float32)
    zoom = [n / c for n, c in zip(shape, coarse)]
    field = ndimage.zoom(noise, zoom, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1], : shape[2]]
    return field / max(float(field.std()), 1e-6)


def make_phantom_case(
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic abdominal CT volume and its organ labels, in RAS voxel order.

    Args:
        shape: volume size ``(H, W, D)`` in voxels (axis 0 to the patient's right,
            axis 1 anterior, axis 2 superior), each side at least 8.
        spacing: voxel size in mm; sets the texture grain and partial-volume blur.
        rng: a ``numpy.random.Generator`` or a seed; the output depends only on it.

    Returns:
        ``(image, label)``: image ``[H, W, D]`` int16 in Hounsfield units (air
        -1000, fat about -100, organs 10..70, kidneys and vessels 150..180, bone
        up to about 700), label ``[H, W, D]`` uint8 with values 0..13 (``LABEL_NAMES``).

    Raises:
        UserError: a side shorter than 8 voxels or a non-positive spacing.
    """
    shape = _check_shape(shape)
    spacing = check_spacing(spacing)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    cv = _Canvas(shape, rng)
    spine_v = _body(cv, rng)
    _organs(cv, rng, spine_v)

    means = np.zeros(_N_CODES, np.float32)
    amps = np.zeros(_N_CODES, np.float32)
    for code, (mean, amp) in _TISSUE_HU.items():
        means[code] = mean + (rng.normal(scale=4.0) if code not in (AIR, GAS) else 0.0)
        amps[code] = amp
    grain = [max(1, round(4.0 / s)) for s in spacing]  # ~4 mm texture grain
    texture = _smooth_noise(shape, grain, rng)
    image = means[cv.tissue] + amps[cv.tissue] * texture
    image = ndimage.gaussian_filter(image, sigma=[min(0.8, max(0.2, 0.5 / s)) for s in spacing])  # partial volume
    image += rng.normal(scale=10.0, size=shape).astype(np.float32)  # acquisition noise
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, cv.label


# --------------------------------------------------------------------------- files


def phantom_affine(shape: Sequence[int], spacing: Sequence[float], orientation: str = "LPS") -> np.ndarray:
    """Voxel-to-world affine (mm) of a stored phantom volume.

    The RAS array's centre sits at world ``(0, -20, -300)`` mm (an arbitrary
    scanner-like origin offset). With ``orientation="LPS"`` the stored array is
    the RAS array flipped along axes 0 and 1, so those columns are negative and
    the origin moves to the opposite corner.
    """
    shape = np.asarray(shape, float)
    spacing = np.asarray(spacing, float)
    origin = np.array([0.0, -20.0, -300.0]) - (shape - 1) / 2 * spacing
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    if orientation == "LPS":
        for axis in (0, 1):
            affine[axis, 3] = origin[axis] + spacing[axis] * (shape[axis] - 1)
            affine[axis, axis] = -spacing[axis]
    elif orientation != "RAS":
        raise UserError(f"phantom orientation must be 'LPS' or 'RAS', got {orientation!r}")
    return affine


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < MIN_SIDE:
        raise UserError(f"phantom size must be 3 sides of at least {MIN_SIDE} voxels, got {shape}")
    return shape


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise UserError(f"phantom spacing must be 3 positive sizes in mm, got {spacing}")
    return spacing


def _read_marker(json_path: str) -> dict | None:
    """The generator settings recorded in an existing phantom JSON, or None."""
    try:
        with open(json_path) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return None
    marker = content.get("phantom") if isinstance(content, dict) else None
    return marker if isinstance(marker, dict) else None


def write_phantom_dataset(
    out_dir: str,
    n_train: int = 4,
    n_val: int = 2,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
    json_name: str = "dataset.json",
    orientation: str = "LPS",
) -> str:
    """Write a phantom dataset in the Synapse layout and return the JSON list's path.

    Case ``i`` (1-based, training first) is drawn from
    ``numpy.random.default_rng([seed, i])``, so each file depends only on the seed,
    its number, the shape, the spacing and the orientation.

    Args:
        out_dir: dataset folder; created if missing.
        n_train: cases in the ``"training"`` list.
        n_val: cases in the ``"validation"`` list.
        shape: volume size ``(H, W, D)`` in voxels.
        spacing: voxel size in mm, recorded in the affine.
        seed: random seed.
        json_name: file name of the Decathlon JSON inside ``out_dir``.
        orientation: ``"LPS"`` (stored flipped, like DICOM-derived NIfTI) or ``"RAS"``.

    Returns:
        Path of the JSON list.

    Raises:
        UserError: ``out_dir`` is a file, or a non-empty folder that does not hold a
            phantom dataset; bad counts, shape, spacing or orientation.
    """
    shape = _check_shape(shape)
    spacing = check_spacing(spacing)
    if n_train < 0 or n_val < 0 or n_train + n_val < 1:
        raise UserError(f"phantom needs at least one case, got n_train={n_train}, n_val={n_val}")
    phantom_affine(shape, spacing, orientation)  # validates the orientation
    if os.path.basename(json_name) != json_name or not json_name:
        raise UserError(f"--json_name must be a plain file name inside the output folder, got {json_name!r}")
    settings = {
        "generator": "data.phantom",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "shape": list(shape),
        "spacing": list(spacing),
        "orientation": orientation,
        "n_train": int(n_train),
        "n_val": int(n_val),
    }
    json_path = os.path.join(out_dir, json_name)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"phantom output {out_dir} is a file; pass a folder path")

    previous = _read_marker(json_path) if os.path.isdir(out_dir) else None
    if os.path.isdir(out_dir) and os.listdir(out_dir) and previous is None:
        raise UserError(
            f"phantom output folder {out_dir} is not empty and holds no phantom {json_name}; "
            "choose a new or empty folder"
        )

    cases = []
    for index in range(1, n_train + n_val + 1):
        cases.append({"image": f"imagesTr/img{index:04d}.nii.gz", "label": f"labelsTr/label{index:04d}.nii.gz"})
    content = {
        "name": "Synthetic abdominal CT phantom (Synapse layout)",
        "description": "Generated by data.phantom; not patient data. RAS after Orientationd; HU intensities.",
        "reference": "data/phantom.py",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(LABEL_NAMES)},
        "numTraining": n_train,
        "numValidation": n_val,
        "training": cases[:n_train],
        "validation": cases[n_train:],
        "phantom": {**settings, "complete": False},
    }

    if previous is not None:
        done = previous.get("complete") and {k: previous.get(k) for k in settings} == settings
        if done and all(os.path.exists(os.path.join(out_dir, c[k])) for c in cases for k in ("image", "label")):
            logger.info("phantom dataset in %s is up to date", out_dir)
            return json_path
        old = _read_lists(json_path)
        keep = {c[k] for c in cases for k in ("image", "label")}
        for rel in old - keep:
            path = os.path.join(out_dir, rel)
            if os.path.isfile(path):
                os.remove(path)

    os.makedirs(os.path.join(out_dir, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labelsTr"), exist_ok=True)
    write_json(json_path, content)  # marks the folder as a phantom before any volume is written
    affine = phantom_affine(shape, spacing, orientation)
    for index, case in enumerate(cases, start=1):
        image, label = make_phantom_case(shape, spacing, np.random.default_rng([int(seed), index]))
        if orientation == "LPS":
            image, label = image[::-1, ::-1], label[::-1, ::-1]
        save_nifti(os.path.join(out_dir, case["image"]), np.ascontiguousarray(image), affine, scanner=True)
        save_nifti(os.path.join(out_dir, case["label"]), np.ascontiguousarray(label), affine, scanner=True)
    content["phantom"]["complete"] = True
    write_json(json_path, content)
    logger.info("wrote %d phantom cases to %s", len(cases), out_dir)
    return json_path


def _read_lists(json_path: str) -> set[str]:
    """Relative file names listed by an existing phantom JSON (only under imagesTr/ and labelsTr/)."""
    with open(json_path) as f:
        content = json.load(f)
    names = set()
    for split in ("training", "validation"):
        for item in content.get(split, []):
            for key in ("image", "label"):
                rel = str(item.get(key, ""))
                if rel.split("/")[0] in ("imagesTr", "labelsTr") and ".." not in rel:
                    names.add(rel)
    return names


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data.phantom",
        description="Write a synthetic abdominal CT dataset in the Synapse layout (imagesTr/, labelsTr/, JSON list).",
    )
    parser.add_argument("--out", required=True, help="dataset folder to write (new, empty, or an earlier phantom)")
    parser.add_argument("--n_train", type=int, default=4, help="cases in the training list")
    parser.add_argument("--n_val", type=int, default=2, help="cases in the validation list")
    parser.add_argument("--size", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("H", "W", "D"),
                        help="volume size in voxels")
    parser.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("SX", "SY", "SZ"),
                        help="voxel size in mm")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--json_name", default="dataset.json",
                        help="file name of the JSON list (pass it as --json_list)")
    parser.add_argument("--orientation", default="LPS", choices=("LPS", "RAS"), help="stored axis orientation")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        json_path = write_phantom_dataset(
            args.out, args.n_train, args.n_val, args.size, args.spacing, args.seed, args.json_name, args.orientation
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json_path)
    print(f"use it with: --data_dir {args.out} --json_list {args.json_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
