"""`random:<preset>`: real architectures (from the models' config.json) with random weights, for benchmarks."""
from __future__ import annotations

from turboctx.config.architecture import ModelArchitecture
from turboctx.errors import UnsupportedModelError

_QWEN = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1e6,
         "rms_norm_eps": 1e-6, "bos_token_id": 151643, "eos_token_id": [151645, 151643],
         "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
         "vocab_size": 152064}
_QWEN_SMALL = {**_QWEN, "vocab_size": 151936, "tie_word_embeddings": True}
_DCA_1M = {"chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}
_QWEN_1M = {**_QWEN, "max_position_embeddings": 1010000, "rope_theta": 1e7, "rms_norm_eps": 1e-5,
            "dual_chunk_attention_config": _DCA_1M}
_LLAMA3 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
           "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
           "rms_norm_eps": 1e-5, "bos_token_id": 128000, "eos_token_id": [128001, 128009],
           "max_position_embeddings": 8192, "tie_word_embeddings": False, "attention_bias": False,
           "torch_dtype": "bfloat16"}
_SMOLLM2 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
            "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
            "max_position_embeddings": 8192, "tie_word_embeddings": True, "attention_bias": False,
            "torch_dtype": "bfloat16"}


def _shape(hidden, inter, layers, heads, kv):
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv}


PRESETS: dict[str, dict] = {
    "qwen2.5-0.5b": {**_QWEN_SMALL, **_shape(896, 4864, 24, 14, 2)},
    "qwen2.5-1.5b": {**_QWEN_SMALL, **_shape(1536, 8960, 28, 12, 2)},
    "qwen2.5-3b": {**_QWEN_SMALL, **_shape(2048, 11008, 36, 16, 2)},
    "qwen2.5-7b": {**_QWEN, **_shape(3584, 18944, 28, 28, 4)},
    "qwen2.5-14b": {**_QWEN, **_shape(5120, 13824, 48, 40, 8)},
    "qwen2.5-32b": {**_QWEN, **_shape(5120, 27648, 64, 40, 8)},
    "qwen2.5-72b": {**_QWEN, **_shape(8192, 29568, 80, 64, 8)},
    "qwen2.5-7b-1m": {**_QWEN_1M, **_shape(3584, 18944, 28, 28, 4)},
    "qwen2.5-14b-1m": {**_QWEN_1M, **_shape(5120, 13824, 48, 40, 8)},
    "llama-3-8b": dict(_LLAMA3),
    "llama-3.1-8b": {**_LLAMA3, "max_position_embeddings": 131072,
                     "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}},
    "smollm2-135m": {**_SMOLLM2, **_shape(576, 1536, 30, 9, 3)},
    "smollm2-360m": {**_SMOLLM2, **_shape(960, 2560, 32, 15, 5)},
    "smollm2-1.7b": {**_SMOLLM2, **_shape(2048, 8192, 24, 32, 32), "rope_theta": 130000.0},
}


def preset_config(name: str) -> ModelArchitecture:
    key = name.lower()
    if key not in PRESETS:
        raise UnsupportedModelError(
            f"unknown random preset {name!r}; presets: {', '.join(PRESETS)} (use random:<preset>)")
    return ModelArchitecture.from_hf_dict(dict(PRESETS[key]), name=f"random:{key}")
