"""`turboctx info`: what a model needs under a configuration, from its config alone (no weights)."""
from __future__ import annotations

import torch

from turboctx.config import EngineConfig
from turboctx.engine.memory import (GiB, activation_bytes, available_memory, dequantized_prefix_bytes,
                                    fitting_options, kv_budget_bytes, kv_bytes_per_token,
                                    max_step_tokens)
from turboctx.weights import open_checkpoint


def weights_bytes(m, e: EngineConfig) -> int:
    """The model's weight bytes in e's dtype; with quantization='fp8' the projections but those
    of quantization_ignored_layers (or a checkpoint's ignored layers) take one byte each plus a
    float32 scale per output row."""
    size = torch.empty((), dtype=e.dtype).element_size()
    if e.model.quantization != "fp8":
        return m.num_parameters() * size
    h, i = m.hidden_size, m.intermediate_size
    q, kv = m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim
    shapes = {"qkv_proj": (q + 2 * kv, h), "o_proj": (h, q), "gate_up_proj": (2 * i, h),
              "down_proj": (h, i)}                                  # [out, in] of each kind
    shipped = [p.rsplit(".", 1)[1] for p in m.quantization_ignored]   # a checkpoint's own
    layers = {k: 0 if k in e.model.ignored_projections else m.num_hidden_layers - shipped.count(k)
              for k in shapes}                                  # layers whose k is in FP8
    lin = sum(layers[k] * o * n for k, (o, n) in shapes.items())
    rows = sum(layers[k] * o for k, (o, _) in shapes.items())
    return (m.num_parameters() - lin) * size + lin + 4 * rows


def memory_plan(config: EngineConfig) -> dict:
    ckpt = open_checkpoint(config.model.model)
    m = ckpt.config
    e = config.resolve(m, ckpt.source if ckpt.kind == "hf" else None)
    dev, dt = e.device, e.dtype
    weights = weights_bytes(m, e)
    per_tok = kv_bytes_per_token(m, e)
    budget = kv_budget_bytes(m, e, dev, weights_bytes=weights if dev.type == "cuda" else 0)
    fit = max(0, int(budget // per_tok))
    plan = {
        "model": ckpt.source, "kind": ckpt.kind, "family": m.family,
        "parameters": f"{m.num_parameters() / 1e9:.3f} B",
        "layers / heads / kv heads / head dim": f"{m.num_hidden_layers} / {m.num_attention_heads} / "
                                                 f"{m.num_key_value_heads} / {m.head_dim}",
        "trained context": m.max_position_embeddings,
        "dual chunk attention config": m.dual_chunk_attention_config,
        "attention": e.attention_name,
        "device": str(dev), "dtype": e.model.dtype, "quantization": e.model.quantization,
        "weights GiB": round(weights / GiB, 3),
        "kv_cache_dtype": str(e.kv_cache_dtype).removeprefix("torch."),
        "KV bytes per token": per_tok,
        "max_model_len": e.max_model_len,
        "KV GiB at max_model_len": round(per_tok * e.max_model_len / GiB, 3),
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "activation reserve GiB": round((activation_bytes(m, max_step_tokens(e), dt)
                                         + dequantized_prefix_bytes(m, e)) / GiB, 3),
        "memory available GiB": round(available_memory(dev) / GiB, 2),
        "max tokens that fit": fit,
    }
    if fit < e.max_model_len:
        plan["to fit max_model_len"] = fitting_options(m, e, budget)
    return plan
