"""Segmentation networks and their checkpoints."""

from .unetr import MODELS, build_model, build_model_from_args

__all__ = ["MODELS", "build_model", "build_model_from_args"]
