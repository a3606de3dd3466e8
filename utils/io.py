"""Files a run writes: NIfTI volumes with their geometry, JSON and CSV, all atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Iterable, Mapping

import nibabel as nib
import numpy as np
import torch


def _atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become ``None`` (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def write_json(path: str, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_csv(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = [to_jsonable(r) for r in rows]
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    _atomic_write_bytes(path, buf.getvalue().encode())


def volume_to_array(volume: torch.Tensor | np.ndarray, save_dtype: str) -> np.ndarray:
    """An image in [0,1] as the saved array: ``uint8`` is the release's ``(x*255).astype(uint8)``
    (truncation, kept so re-evaluated volumes match the release), ``float32`` keeps [0,1]."""
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if save_dtype == "uint8":
        return (array * 255).astype(np.uint8)
    if save_dtype == "float32":
        return array.astype(np.float32)
    raise ValueError(f"save_dtype must be 'uint8' or 'float32', got {save_dtype!r}")


def array_to_volume(array: np.ndarray) -> np.ndarray:
    """A saved image back to [0,1] float32: integer files were written ×255."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def save_nifti(path: str, array: np.ndarray, affine: np.ndarray | torch.Tensor) -> None:
    """Save ``array`` [H, W, D] with the volume's own affine (the release wrote an identity)."""
    affine = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    image = nib.Nifti1Image(array, affine.astype(np.float64))
    image.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1]
    buf = image.to_bytes() if suffix == ".nii" else None
    if buf is None:
        # nibabel compresses by file name: write to a temporary name with the same suffix
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
        os.close(fd)
        try:
            nib.save(image, tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    else:
        _atomic_write_bytes(path, buf)


def load_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of a NIfTI file, array in its stored dtype."""
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image.affine
