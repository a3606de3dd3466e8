"""Segmentation networks: the ``--model_name`` registry, checkpoints, whole-volume prediction."""

from .checkpoint import adapt_legacy_state_dict, extract_state_dict, read_checkpoint, save_checkpoint
from .inference import BLENDS, WindowSettings, predict_logits, predict_volume
from .precision import PRECISIONS, MixedPrecision, compiled, with_precision
from .registry import MODELS, ModelEntry, ModelSettings, build_model, get_model_entry, load_model_weights, model_options

__all__ = [
    "BLENDS",
    "MODELS",
    "MixedPrecision",
    "PRECISIONS",
    "ModelEntry",
    "ModelSettings",
    "WindowSettings",
    "adapt_legacy_state_dict",
    "build_model",
    "compiled",
    "extract_state_dict",
    "get_model_entry",
    "load_model_weights",
    "model_options",
    "predict_logits",
    "predict_volume",
    "read_checkpoint",
    "save_checkpoint",
    "with_precision",
]
