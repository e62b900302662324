"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral-style): the shared decoder of this package.

Qwen2 differs only by q/k/v biases (models/qwen2.py). Parameter names follow HF transformers,
with q/k/v and gate/up fused (`load_weights` maps the checkpoint's separate tensors onto them).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from turboctx.attention.backend import AttentionBackend, AttentionBatch
from turboctx.config.architecture import ModelArchitecture
from turboctx.errors import ModelLoadError
from turboctx.models.layers import GatedMLP, RMSNorm
from turboctx.weights.kv_scales import KVScales

log = logging.getLogger("turboctx")


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelArchitecture, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_proj_bias)
        self.backend: AttentionBackend | None = None
        self.split_matmuls = False    # see GatedMLP.split_matmuls

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        N = x.shape[0]
        sizes = [self.q_size, self.kv_size, self.kv_size]
        if self.split_matmuls:
            q, k, v = split_linear(x, self.qkv_proj, sizes)
        else:
            q, k, v = self.qkv_proj(x).split(sizes, dim=-1)
        q = q.view(N, self.num_heads, self.head_dim)        # [N, H, D]
        k = k.view(N, self.num_kv_heads, self.head_dim)     # [N, Hkv, D]
        v = v.view(N, self.num_kv_heads, self.head_dim)
        out = self.backend.forward(self.layer, q, k, v, batch)   # [N, H, D]
        return self.o_proj(out.reshape(N, self.q_size))


def split_linear(x: torch.Tensor, layer: nn.Linear, sizes: list[int]) -> list[torch.Tensor]:
    """One matmul per row block of a fused weight (contiguous views, contiguous outputs)."""
    w = layer.weight.split(sizes, dim=0)
    b = layer.bias.split(sizes, dim=0) if layer.bias is not None else [None] * len(sizes)
    return [F.linear(x, wi, bi) for wi, bi in zip(w, b)]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchitecture, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        return self.mlp_half(self.attention_half(x, batch))

    def attention_half(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        return x + self.self_attn(self.input_layernorm(x), batch)

    def mlp_half(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelArchitecture):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        x = self.embed_tokens(input_ids)                    # [N, hidden]
        for layer in self.layers:
            x = layer(x, batch)
        return self.norm(x)


# checkpoint name suffix -> (our parameter suffix, shard index) for fused parameters
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0), "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0), "mlp.up_proj": ("mlp.gate_up_proj", 1),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelArchitecture):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def set_attention_backend(self, backend: AttentionBackend) -> None:
        for layer in self.model.layers:
            layer.self_attn.backend = backend

    def set_split_matmuls(self, split: bool) -> None:
        """CPU BLAS runs the separate q/k/v and gate/up products faster than the fused ones
        (measured ~5% of a 2K prefill on the default model); GPUs prefer the fused ones."""
        for layer in self.model.layers:     # (FP8 layers have no full-precision weight to split)
            layer.self_attn.split_matmuls = split and type(layer.self_attn.qkv_proj) is nn.Linear
            layer.mlp.split_matmuls = split and type(layer.mlp.gate_up_proj) is nn.Linear

    def forward(self, input_ids: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        """input_ids: [N] -> final hidden states [N, hidden] (logits are computed separately)."""
        return self.model(input_ids, batch)

    # the same forward in pieces, for a prefill chunk run a few layers per step
    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)           # [N, hidden]

    def run_units(self, x: torch.Tensor, batch: AttentionBatch, first: int, last: int) -> torch.Tensor:
        """The residual stream x [N, hidden] through units [first, last): unit 2l is layer l's
        attention (with its residual), unit 2l + 1 its MLP."""
        for u in range(first, last):
            layer = self.model.layers[u // 2]
            x = layer.mlp_half(x) if u % 2 else layer.attention_half(x, batch)
        return x

    def attention_share(self) -> float:
        """The attention half's share of a layer's linear-layer parameters (q/k/v/o of all)."""
        c = self.config
        attn = c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim \
            + c.num_attention_heads * c.head_dim * c.hidden_size
        mlp = 3 * c.hidden_size * c.intermediate_size
        return attn / (attn + mlp)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [M, hidden] -> logits [M, vocab] in float32."""
        return self.lm_head(hidden).float()

    def _shard_sizes(self, fused: str) -> list[int]:
        c = self.config
        if fused.endswith("qkv_proj"):
            kv = c.num_key_value_heads * c.head_dim
            return [c.num_attention_heads * c.head_dim, kv, kv]
        return [c.intermediate_size, c.intermediate_size]

    @torch.no_grad()
    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors (HF names) into the parameters; every parameter must be set.
        FP8 projections (Fp8Linear) take the checkpoint's e4m3 `weight` as it is and its
        `weight_scale` (one per tensor, spread over the tensor's rows, or one per row); static
        activation scales (`input_scale`) are not used: activations are scaled per token."""
        params = dict(self.named_parameters(remove_duplicate=False))
        params.update(self.named_buffers())                     # FP8 weights and their scales
        missing = {n for n, p in self.named_parameters()} | {n for n, _ in self.named_buffers()}
        unused_input_scales = 0
        if self.config.tie_word_embeddings:
            missing.discard("lm_head.weight")
        self.kv_scales = KVScales()
        for name, tensor in tensors:
            if "rotary_emb" in name or self.kv_scales.add(name, tensor):
                continue
            if name.endswith(".input_scale"):
                unused_input_scales += 1
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            target, offset, size = name, 0, None
            for src, (dst, shard) in _FUSED.items():
                if f".{src}." in name:
                    target = name.replace(src, dst)
                    sizes = self._shard_sizes(dst)
                    offset, size = sum(sizes[:shard]), sizes[shard]
                    break
            if target not in params:
                raise ModelLoadError(f"checkpoint tensor {name!r} has no place in a "
                                     f"{self.config.family} model")
            p = params[target]
            dst_view = p.data if size is None else p.data.narrow(0, offset, size)
            if name.endswith(".weight_scale") and tensor.numel() in (1, dst_view.numel()):
                tensor = tensor.float().reshape(-1).expand(dst_view.numel())   # [rows]
            elif dst_view.dtype == torch.float8_e4m3fn and tensor.dtype != dst_view.dtype:
                raise ModelLoadError(f"checkpoint tensor {name!r} is {tensor.dtype}; its config's "
                                     f"quantization_config says fp8, so e4m3 was expected")
            if tuple(dst_view.shape) != tuple(tensor.shape):
                raise ModelLoadError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(dst_view.shape)}")
            dst_view.copy_(tensor)
            if size is None or (offset + size == p.shape[0]):
                missing.discard(target)
        if missing:
            raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        if unused_input_scales:
            log.info("%d static activation scales (input_scale) of the checkpoint are not used: "
                     "activations are scaled per token", unused_input_scales)

    @torch.no_grad()
    def init_random_(self, seed: int = 0, std: float = 0.02) -> None:
        """Random weights for benchmarks (`random:<preset>`); norms stay 1, biases small."""
        gen = torch.Generator(device=self.lm_head.weight.device).manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)


@torch.no_grad()
def random_hf_tensors(cfg: ModelArchitecture, seed: int, dtype: torch.dtype, device, std: float = 0.02):
    """The weights `init_random_` gives the whole model, as HF-named checkpoint tensors, one at a
    time (a tensor-parallel rank slices its part of each: every rank then holds the same model)."""
    with torch.device("meta"):
        full = LlamaForCausalLM(cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    fused_names = {dst for dst, _ in _FUSED.values()}
    for name, p in full.named_parameters():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            yield name, torch.ones(p.shape, dtype=dtype, device=device)
            continue
        t = torch.empty(p.shape, dtype=dtype, device=device).normal_(0.0, std, generator=gen)
        fused = next((dst for dst in fused_names if f".{dst}." in name), None)
        if fused is None:
            yield name, t
            continue
        parts = [src for src, (dst, _) in _FUSED.items() if dst == fused]      # in shard order
        for src, part in zip(parts, t.split(full._shard_sizes(fused), dim=0)):
            yield name.replace(fused, src), part
