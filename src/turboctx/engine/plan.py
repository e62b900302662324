"""`turboctx info`: what a model needs, computed from its config without loading the weights."""
from __future__ import annotations

import torch

from turboctx.config import EngineConfig, parse_dtype
from turboctx.engine.llm_engine import CPU_PREFILL_CHUNK, GPU_PREFILL_CHUNK, resolve_device
from turboctx.engine.memory import GiB, activation_bytes, available_memory, max_step_tokens
from turboctx.kv_cache import KVCache
from turboctx.weights import open_checkpoint


def memory_plan(model=None, *, device=None, dtype=None, max_model_len=None,
                prefill_chunk_size=None) -> dict:
    dev = resolve_device(device)
    ckpt = open_checkpoint(model)
    m = ckpt.config
    dt = parse_dtype(dtype) or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    e = EngineConfig(device=str(dev), dtype=dt, max_model_len=max_model_len or m.max_position_embeddings,
                     prefill_chunk_size=prefill_chunk_size or (
                         GPU_PREFILL_CHUNK if dev.type == "cuda" else CPU_PREFILL_CHUNK))
    elem = torch.empty((), dtype=dt).element_size()
    weights = m.num_parameters() * elem
    per_tok = KVCache.bytes_per_token(m.num_hidden_layers, m.num_key_value_heads, m.head_dim, dt)
    act = activation_bytes(m, max_step_tokens(e), dt)
    avail = available_memory(dev)
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        budget = avail - (1 - e.gpu_memory_utilization) * total - weights - act
    else:
        budget = min(avail * 0.25, 4 * GiB) - act
    return {
        "model": ckpt.source, "kind": ckpt.kind, "family": m.family,
        "parameters": f"{m.num_parameters() / 1e9:.3f} B",
        "layers / heads / kv heads / head dim": f"{m.num_hidden_layers} / {m.num_attention_heads} / "
                                                 f"{m.num_key_value_heads} / {m.head_dim}",
        "trained context": m.max_position_embeddings,
        "dual chunk attention config": m.dual_chunk_attention_config,
        "device": str(dev), "dtype": str(dt).replace("torch.", ""),
        "weights GiB": round(weights / GiB, 3),
        "KV bytes per token": per_tok,
        "max_model_len": e.max_model_len,
        "KV GiB at max_model_len": round(per_tok * e.max_model_len / GiB, 3),
        "prefill chunk": e.prefill_chunk_size,
        "activation reserve GiB": round(act / GiB, 3),
        "memory available GiB": round(avail / GiB, 2),
        "max tokens that fit": max(0, int(budget // per_tok)),
    }
