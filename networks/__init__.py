"""Segmentation networks and their checkpoints."""

from .checkpoint import (
    adapt_legacy_state_dict,
    extract_state_dict,
    load_checkpoint,
    load_model_weights,
    read_checkpoint,
    save_checkpoint,
)
from .unetr import MODELS, build_model, build_model_from_args

__all__ = [
    "MODELS",
    "adapt_legacy_state_dict",
    "build_model",
    "build_model_from_args",
    "extract_state_dict",
    "load_checkpoint",
    "load_model_weights",
    "read_checkpoint",
    "save_checkpoint",
]
