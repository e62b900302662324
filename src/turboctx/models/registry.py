"""Model family -> class."""
from __future__ import annotations

from turboctx.config.architecture import ModelArchitecture


def build_model(config: ModelArchitecture):
    if config.family == "qwen2":
        from turboctx.models.qwen2 import Qwen2ForCausalLM as cls
    else:
        from turboctx.models.llama import LlamaForCausalLM as cls
    return cls(config)
