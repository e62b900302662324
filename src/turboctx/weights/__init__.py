"""Model specs -> Checkpoint (config, tokenizer, streamed HF-named tensors).

Specs: None (the default model), a Hugging Face folder, a .gguf file, or random:<preset>.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from turboctx.errors import ModelLoadError
from turboctx.weights.checkpoint import Checkpoint
from turboctx.weights.default_model import default_gguf_path
from turboctx.weights.gguf_file import (SUPPORTED_ARCHITECTURES as GGUF_ARCHITECTURES,
                                        SUPPORTED_TENSOR_TYPES as GGUF_TENSOR_TYPES, open_gguf)
from turboctx.weights.hf_folder import open_hf_folder
from turboctx.weights.presets import PRESETS, preset_config

RANDOM_PREFIX = "random:"

__all__ = ["Checkpoint", "open_checkpoint", "default_gguf_path", "PRESETS", "preset_config",
           "GGUF_ARCHITECTURES", "GGUF_TENSOR_TYPES"]


def open_checkpoint(spec: str | os.PathLike | None) -> Checkpoint:
    """Resolve a model spec. Raises ModelLoadError / UnsupportedModelError saying what is allowed."""
    if spec is None:
        return open_gguf(default_gguf_path(), kind="default")
    text = str(spec)
    if text.startswith(RANDOM_PREFIX):
        return _open_random(text[len(RANDOM_PREFIX):])
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model path {text!r} does not exist; give a Hugging Face folder (config.json + "
            f"*.safetensors), a .gguf file, random:<preset> ({', '.join(PRESETS)}) or nothing "
            f"for the default model")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise ModelLoadError(f"model path {text!r} is not readable by this user; fix its permissions")
    if path.is_dir():
        return open_hf_folder(path)
    if path.suffix == ".safetensors" or path.name == "config.json":
        return open_hf_folder(path.parent)
    return open_gguf(path)


def _open_random(name: str) -> Checkpoint:
    config = preset_config(name)
    tokenizer = None
    if name.lower().startswith("smollm2-"):
        tokenizer = _default_tokenizer()
    return Checkpoint(config=config, tokenizer=tokenizer, source=f"{RANDOM_PREFIX}{name.lower()}",
                      kind="random")


@lru_cache(maxsize=1)
def _default_tokenizer():
    """SmolLM2's tokenizer (all SmolLM2 sizes share it), if the default model is installed."""
    from turboctx.tokenizer import Tokenizer

    try:
        path = default_gguf_path()
    except ModelLoadError:
        return None
    return Tokenizer.from_gguf(path)
