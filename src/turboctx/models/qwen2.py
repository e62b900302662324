"""Qwen2 / Qwen2.5 (incl. *-1M): the Llama decoder with q/k/v biases (config.attention_bias,
set by ModelArchitecture for the qwen2 family)."""
from __future__ import annotations

from turboctx.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    pass
