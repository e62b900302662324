"""A model's architecture: the fields of its HF config.json (or of a GGUF's metadata)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turboctx.config.checkpoint_quantization import (checkpoint_ignored_layers,
                                                     checkpoint_quantization, hf_ignored_layers)
from turboctx.errors import UnsupportedModelError

# HF `architectures` / `model_type` values we run, mapped to our model family.
ARCHITECTURE_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "llama",
}
MODEL_TYPE_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "mistral": "llama"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

@dataclass
class ModelArchitecture:
    """The architecture of a Qwen2 / Llama-family decoder (the fields of HF config.json)."""
    family: str                      # "llama" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False     # q/k/v projections carry a bias (Qwen2)
    o_proj_bias: bool = False        # the output projection too (Llama with attention_bias)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str = "float32"     # the checkpoint's dtype
    dual_chunk_attention_config: dict | None = None
    quantization: str | None = None  # "fp8": the checkpoint ships e4m3 projections (checkpoint_quantization)
    quantization_ignored: tuple[str, ...] = ()   # of those, the ones it ships in full precision
                                                 # ("model.layers.3.self_attn.qkv_proj")
    name: str = "model"

    def __post_init__(self):
        if self.family not in ("llama", "qwen2"):
            raise UnsupportedModelError(
                f"model family {self.family!r} is not supported; supported: llama, qwen2")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim",
                    "max_position_embeddings"):
            if int(getattr(self, key)) < 1:
                raise UnsupportedModelError(f"config {key}={getattr(self, key)} must be >= 1")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedModelError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}")
        if self.rope_scaling is not None:
            rtype = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if rtype not in SUPPORTED_ROPE_TYPES:
                raise UnsupportedModelError(
                    f"rope_scaling type {rtype!r} is not supported; supported: "
                    f"{', '.join(SUPPORTED_ROPE_TYPES)}")

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def num_linear_weights(self) -> int:
        """Weights of the decoder layers' projections (q/k/v, o, gate/up, down): what
        quantization='fp8' stores in one byte each."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return self.num_hidden_layers * (h * (q + 2 * kv) + q * h + 3 * h * i)

    def num_parameters(self) -> int:
        h, i, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.attention_bias else 0)
        per_layer = attn + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + emb + h

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], name: str = "model") -> "ModelArchitecture":
        archs = cfg.get("architectures") or []
        family = next((ARCHITECTURE_FAMILIES[a] for a in archs if a in ARCHITECTURE_FAMILIES), None)
        if family is None:
            family = MODEL_TYPE_FAMILIES.get(cfg.get("model_type", ""))
        if family is None:
            raise UnsupportedModelError(
                f"architecture {archs or cfg.get('model_type')!r} is not supported; supported: "
                f"{', '.join(ARCHITECTURE_FAMILIES)}")
        heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        bias = cfg.get("attention_bias", family == "qwen2")
        # transformers >= 5 writes rope settings as `rope_parameters`; older files as rope_theta/rope_scaling
        rope_params = dict(cfg.get("rope_parameters") or {})
        theta = cfg.get("rope_theta", rope_params.pop("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling")
        if scaling is None and rope_params.get("rope_type", "default") != "default":
            scaling = rope_params
        return cls(
            family=family,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=bool(bias),
            o_proj_bias=bool(bias) and family == "llama",
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            dual_chunk_attention_config=cfg.get("dual_chunk_attention_config"),
            quantization=checkpoint_quantization(cfg.get("quantization_config")),
            quantization_ignored=checkpoint_ignored_layers(cfg.get("quantization_config"),
                                                           cfg["num_hidden_layers"]),
            name=name,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The config as HF transformers reads it (reference models in tests, random folders)."""
        arch = "Qwen2ForCausalLM" if self.family == "qwen2" else "LlamaForCausalLM"
        d = {
            "architectures": [arch], "model_type": self.family,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling, "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else self.eos_token_ids,
            "hidden_act": "silu", "torch_dtype": self.torch_dtype,
        }
        if self.family == "llama":
            d["attention_bias"] = self.attention_bias
            d["mlp_bias"] = False
        if self.dual_chunk_attention_config is not None:
            d["dual_chunk_attention_config"] = dict(self.dual_chunk_attention_config)
        if self.quantization == "fp8":
            d["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
            if self.quantization_ignored:
                d["quantization_config"]["ignored_layers"] = hf_ignored_layers(self.quantization_ignored)
        return d
