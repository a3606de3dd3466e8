"""Files a run writes: NIfTI volumes with their geometry, JSON and CSV, all atomically."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ""):
    """``with atomic_write(path) as tmp:`` write ``tmp``; on success it replaces ``path``.

    The one way this tool writes a file: the temporary file lives in the destination
    folder (so the rename is atomic), is fsynced before the rename and the folder after
    it, gets the permissions a plain ``open`` would (``0666`` less the umask, readable by
    colleagues on a shared cluster, not ``mkstemp``'s ``0600``), and is removed when the
    write fails or is interrupted. A crash leaves the old file or the new one, and at most
    a ``.tmp_*`` file that :func:`remove_stale_temporaries` clears.

    Args:
        path: destination file; parent folders are created.
        suffix: ending of the temporary name (nibabel picks compression by it: ``.nii.gz``).

    Yields:
        The temporary file's path.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


TEMP_PREFIX = ".tmp_"
"""Name prefix of :func:`atomic_write`'s temporary files."""


def remove_stale_temporaries(folder: str) -> int:
    """Delete temporary files a killed write left in ``folder`` (not recursive); returns how many."""
    if not os.path.isdir(folder):
        return 0
    removed = 0
    for name in os.listdir(folder):
        if name.startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    """Make a rename durable where the OS allows opening folders (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


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
    write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


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
    write_bytes(path, buf.getvalue().encode())


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


def save_nifti(path: str, array: np.ndarray, affine: np.ndarray | torch.Tensor, scanner: bool = False) -> None:
    """Save ``array`` [H, W, D] with the volume's own affine (the release wrote an identity).

    ``scanner``: mark both qform and sform as scanner coordinates (code 1), as source
    scans are; otherwise nibabel's defaults (sform "aligned", no qform).
    """
    affine = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    image = nib.Nifti1Image(array, affine.astype(np.float64))
    image.header.set_xyzt_units("mm")
    if scanner:
        image.set_qform(image.affine, code=1)
        image.set_sform(image.affine, code=1)
    suffix = ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1]
    with atomic_write(path, suffix=suffix) as tmp:
        nib.save(image, tmp)  # nibabel compresses by the file name's ending


def load_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of a NIfTI file, array in its stored dtype.

    Raises:
        UserError: the file cannot be read whole (truncated, not NIfTI), naming it.
    """
    from utils.errors import UserError

    try:
        image = nib.load(path)
        return np.asanyarray(image.dataobj), image.affine
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # nibabel, gzip and zlib raise several types for damaged files
        raise UserError(f"cannot read {path} ({' '.join(str(err).split())}); the file is damaged or cut short: "
                        "restore it or make it again") from None


def file_fingerprint(path: str, digest: bool = True) -> dict:
    """What identifies a file's content: ``{"size", "mtime_ns", "sha256"}`` (no hash with ``digest=False``)."""
    import hashlib

    stat = os.stat(path)
    found: dict = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if digest:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        found["sha256"] = sha.hexdigest()
    return found


def same_content(recorded: Mapping, path: str) -> bool:
    """Whether ``path`` holds the content ``recorded`` (a :func:`file_fingerprint`): equal size and
    modification time count as the same file; otherwise the SHA-256 decides (a copied or
    touched file with the same bytes is the same)."""
    if not os.path.isfile(path):
        return False
    now = file_fingerprint(path, digest=False)
    if now["size"] != recorded.get("size"):
        return False
    if now["mtime_ns"] == recorded.get("mtime_ns"):
        return True
    return file_fingerprint(path)["sha256"] == recorded.get("sha256")
