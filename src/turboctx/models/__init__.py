"""Decoder models: one family per file, shared layers in layers.py."""
from turboctx.models.registry import build_model

__all__ = ["build_model"]
