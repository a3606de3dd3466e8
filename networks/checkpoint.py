"""Reading, adapting and writing model checkpoints.

Checkpoints are dicts with ``epoch``, ``epoch_acc``, ``best_acc``, ``model_state_dict``,
``optimizer_state_dict`` and ``scheduler_state_dict`` (the paper's code release); loading also accepts a
``state_dict`` key or a bare state dict.

Everything is read with ``torch.load(weights_only=True)``. The paper's released checkpoints
hold numpy scalars in ``best_acc``/``epoch_acc``; only those numpy types are allow-listed
(:func:`read_checkpoint`), never arbitrary objects.

The released checkpoints come from a MONAI-0.7-era UNETR. :func:`adapt_legacy_state_dict`
maps them onto today's MONAI UNETR (the paper's code release); anything else that does not match the model
is an error (:func:`load_model_weights`), never a silent ``strict=False``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from utils.errors import UserError
from utils.io import atomic_write

__all__ = [
    "LEGACY_DROPPED_KEYS",
    "adapt_legacy_state_dict",
    "extract_state_dict",
    "load_checkpoint",
    "load_model_weights",
    "WeightsMismatch",
    "read_checkpoint",
    "read_checkpoint_args",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

LEGACY_DROPPED_KEYS: tuple[str, ...] = (
    "vit.patch_embedding.cls_token",
    "encoder2.blocks.0.1.conv3.conv.weight",
    "encoder2.blocks.1.1.conv3.conv.weight",
    "encoder3.blocks.0.1.conv3.conv.weight",
)
"""Keys of a MONAI-0.7 UNETR state dict that today's UNETR no longer has (unused there)."""

_CROSS_ATTN_KEY = re.compile(r"^vit\.blocks\.\d+\.cross_attn\.")
"""Cross-attention weights that MONAI 1.4-1.5 ViT blocks carried (unused by UNETR)."""

_NORM_CROSS_ATTN_KEY = re.compile(r"^vit\.blocks\.\d+\.norm_cross_attn\.(weight|bias)$")
"""Norm layers of today's ViT blocks that UNETR never calls; older checkpoints lack them."""

class WeightsMismatch(UserError):
    """The checkpoint's weights do not fit the model (keys or shapes); :func:`networks.registry.load_model_weights`
    adds which model flags to check."""


_MAX_KEYS_SHOWN = 10


def _numpy_safe_globals() -> list[Any]:
    """The numpy objects a pickled numpy scalar needs, for ``torch.serialization.safe_globals``.

    A numpy scalar pickles as ``numpy.core.multiarray.scalar(dtype, bytes)`` (numpy 1.x) or
    ``numpy._core.multiarray.scalar(...)`` (numpy 2.x), the dtype as ``numpy.dtype(code)`` whose
    instance has a concrete class (``numpy.dtypes.Float64DType`` ...) that receives its state.
    Registering under both module spellings lets a numpy-1 checkpoint load under numpy 2
    without importing the deprecated ``numpy.core`` shim.
    """
    core = getattr(np, "_core", None) or np.core  # numpy 2.x | 1.x
    scalar = core.multiarray.scalar
    codes = ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e", "f", "d")
    dtype_classes = {type(np.dtype(code)) for code in codes}  # numpy.dtypes.Float64DType, ...
    allowed: list[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    allowed.extend(sorted(dtype_classes - {np.dtype}, key=lambda cls: cls.__name__))
    return allowed


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint file with ``torch.load(weights_only=True)``.

    Tensors, plain containers and numpy scalars (as in the paper's released checkpoints)
    are accepted; any other pickled object makes the load fail rather than run its code.

    Args:
        path: checkpoint file (``.pt``/``.pth``).
        map_location: passed to ``torch.load`` (default ``"cpu"``).

    Returns:
        The checkpoint dict.

    Raises:
        UserError: the file is missing, is a folder, cannot be read, is corrupt, holds
            objects outside the allow-list, or does not hold a dict.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(
            f"checkpoint not found: {path}; pass --pretrained_path/--checkpoint_dir pointing at an "
            "existing model_best.pt / model_latest.pt"
        )
    if os.path.isdir(path):
        raise UserError(f"checkpoint path {path} is a folder; expected a checkpoint file such as model_best.pt")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt files raise many types (RuntimeError, EOFError, UnpicklingError ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot read checkpoint {path}: {first_line} (file truncated or corrupt, not a PyTorch "
            "checkpoint, or it pickles objects other than tensors, containers and numpy scalars, "
            "which are not loaded for safety)"
        ) from err
    if not isinstance(ckpt, Mapping):
        raise UserError(f"checkpoint {path} holds a {type(ckpt).__name__}; expected a dict of weights")
    return dict(ckpt)


def read_checkpoint_args(path: str | os.PathLike) -> dict | None:
    """The flags a checkpoint records under ``args`` (this tool's training writes them), or
    ``None``: no such entry (the release's checkpoints) or an unreadable file (the real load
    reports that). Memory-mapped where the format allows, so the weights are not read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    for mmap in (True, False):
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:  # noqa: BLE001 - an old format cannot be mapped; a corrupt file is reported at load
            continue
        args = ckpt.get("args") if isinstance(ckpt, Mapping) else None
        return dict(args) if isinstance(args, Mapping) else None
    return None


def _model_flags_mismatch(ckpt: Mapping, given: Mapping[str, Any] | None) -> str:
    """The model flags a checkpoint was trained with that differ from this run's, as
    ``--flag stored (given: value)``, or ``""``."""
    stored = ckpt.get("args")
    if not given or not isinstance(stored, Mapping):
        return ""

    def same(a, b):
        return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b

    differ = [k for k, v in given.items() if k in stored and not same(stored[k], v)]
    return ", ".join(f"--{k} {stored[k]} (this run: {given[k]})" for k in differ)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(ckpt: Mapping) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint.

    Args:
        ckpt: a dict with ``model_state_dict`` (ours, the reference's) or ``state_dict``,
            or a bare state dict (``name -> tensor``).

    Returns:
        A new ``name -> tensor`` dict, with a leading ``module.`` (DDP) removed from the names.

    Raises:
        UserError: no state dict can be found.
    """
    if not isinstance(ckpt, Mapping):
        raise UserError(f"expected a checkpoint dict, got {type(ckpt).__name__}")
    for key in ("model_state_dict", "state_dict"):
        if isinstance(ckpt.get(key), Mapping):
            state_dict = ckpt[key]
            break
    else:
        if not _is_state_dict(ckpt):
            shown = ", ".join(repr(k) for k in list(ckpt)[:_MAX_KEYS_SHOWN])
            raise UserError(
                "checkpoint holds no model weights: expected a 'model_state_dict' or 'state_dict' "
                f"entry or a bare state dict, got keys [{shown}]"
            )
        state_dict = ckpt
    prefix = "module."
    stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
    if len(stripped) != len(state_dict):
        raise UserError("checkpoint holds the same weight both with and without a 'module.' prefix")
    if any(k.startswith(prefix) for k in state_dict):
        logger.info("stripped the DDP 'module.' prefix from checkpoint keys")
    return stripped


def _adapt(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """``adapt_legacy_state_dict`` plus the lists of dropped and model-filled keys."""
    model_state = model.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        legacy = key in LEGACY_DROPPED_KEYS or _CROSS_ATTN_KEY.match(key) is not None
        if legacy and key not in model_state:
            dropped.append(key)
        else:
            adapted[key] = value
    filled = [k for k in model_state if _NORM_CROSS_ATTN_KEY.match(k) and k not in adapted]
    for key in filled:
        adapted[key] = model_state[key]
    if dropped:
        logger.info("legacy checkpoint: dropped %d keys the model does not have: %s", len(dropped), ", ".join(dropped))
    if filled:
        logger.info(
            "legacy checkpoint: kept the model's own values for %d unused keys (vit.blocks.*.norm_cross_attn.*)",
            len(filled),
        )
    return adapted, dropped, filled


def adapt_legacy_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a MONAI-0.7-era (or MONAI 1.4-1.5) UNETR state dict onto ``model``'s keys.

    Facts (the paper's code release), applied only where the key is absent from ``model``:

    - drop ``vit.patch_embedding.cls_token`` and the 1x1x1 ``conv3`` of three residual
      blocks (``encoder2.blocks.{0,1}.1.conv3``, ``encoder3.blocks.0.1.conv3``), which
      MONAI 0.7 created but never used;
    - drop ``vit.blocks.*.cross_attn.*`` (MONAI 1.4-1.5, unused by UNETR);
    - fill ``vit.blocks.*.norm_cross_attn.{weight,bias}`` that the checkpoint lacks with the
      model's own values (these layers are never called by UNETR).

    Any other difference is left for :func:`load_model_weights` to report.

    Args:
        state_dict: ``name -> tensor`` (already without a ``module.`` prefix).
        model: the network the weights are meant for.

    Returns:
        A new ``name -> tensor`` dict.
    """
    return _adapt(state_dict, model)[0]


def _shown(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else ""
    return "[" + ", ".join(keys[:_MAX_KEYS_SHOWN]) + more + "]"


def _to_plain(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def load_model_weights(model: nn.Module, path_or_ckpt: str | os.PathLike | Mapping, map_location: Any = "cpu",
                       given: Mapping[str, Any] | None = None) -> dict:
    """Load checkpoint weights into ``model`` with ``strict=True`` semantics.

    Reads (:func:`read_checkpoint`), extracts (:func:`extract_state_dict`) and adapts
    (:func:`adapt_legacy_state_dict`) the weights, then requires every remaining key and
    shape to match the model.

    Args:
        model: the network to fill, e.g. from ``networks.build_model``.
        path_or_ckpt: a checkpoint file, or a checkpoint / state dict already in memory.
        map_location: passed to ``torch.load`` when a path is given.
        given: this run's model flags (``{"feature_size": 16, ...}``); when the weights do not
            fit, those that differ from the flags the checkpoint records are named.

    Returns:
        Info: ``source`` (path or ``"<in-memory>"``), ``dropped_keys``, ``filled_keys``
        (legacy mapping), ``epoch`` and ``best_acc`` (plain numbers, ``None`` if absent).

    Raises:
        UserError: unreadable checkpoint, missing / unexpected keys or shape mismatches
            (the message names them and the model flags to check), or NaN/Inf weights.
    """
    if isinstance(path_or_ckpt, Mapping):
        source, ckpt = "<in-memory>", path_or_ckpt
    else:
        source = os.fspath(path_or_ckpt)
        ckpt = read_checkpoint(source, map_location=map_location)
    state_dict, dropped, filled = _adapt(extract_state_dict(ckpt), model)

    model_state = model.state_dict()
    missing = [k for k in model_state if k not in state_dict]
    unexpected = [k for k in state_dict if k not in model_state]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        differ = _model_flags_mismatch(ckpt, given)
        if differ:
            raise UserError(f"checkpoint {source} was trained with other model flags: {differ}; drop those flags "
                            "(a checkpoint's own model flags are used when none is typed) or type its values")
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys {_shown(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys {_shown(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches {_shown(mismatched)}")
        raise WeightsMismatch(f"checkpoint {source} does not fit the model: {'; '.join(problems)}")

    bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"checkpoint {source} holds non-finite weights (NaN or Inf) in {len(bad)} tensors "
                        f"{_shown(bad)}; the training that wrote it diverged: use an earlier checkpoint")
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %d weight tensors from %s", len(state_dict), source)
    return {
        "source": source,
        "dropped_keys": dropped,
        "filled_keys": filled,
        "epoch": _to_plain(ckpt.get("epoch")),
        "best_acc": _to_plain(ckpt.get("best_acc")),
    }


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with ``torch.save`` atomically.

    Through :func:`utils.io.atomic_write`: a crash or preemption leaves either the
    previous file or the new one, never a truncated checkpoint. Parent folders are created.

    Args:
        obj: what to save (a checkpoint dict).
        path: destination file.

    Raises:
        Whatever ``torch.save`` or the file system raised; the temporary file is removed
        and a previous file at ``path`` is left intact.
    """
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
