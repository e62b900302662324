"""Memory plan: how many KV-cache tokens fit beside the weights and a prefill chunk's activations."""
from __future__ import annotations

import os

import torch

from turboctx.config import EngineConfig, ModelArchitecture
from turboctx.errors import OutOfCacheError
from turboctx.kv_cache import KVCache

GiB = 1 << 30


def max_step_tokens(e: EngineConfig) -> int:
    """Most tokens one step computes: the prefill budget; with sparse prefill up to twice it, as
    sparse chunks end on a grid and may pass the budget by less than a chunk (scheduler.py)."""
    return e.max_num_batched_tokens * (1 if e.sparse is None else 2)


def activation_bytes(m: ModelArchitecture, chunk: int, dtype: torch.dtype) -> int:
    """Rough peak of one layer's activations for a prefill chunk (with fp32 attention merge)."""
    e = torch.empty((), dtype=dtype).element_size()
    q = m.num_attention_heads * m.head_dim
    per_token = e * (4 * m.hidden_size + 3 * m.intermediate_size + 3 * q) + 4 * 3 * q
    return int(chunk * per_token * 1.5)   # logits are computed only for sampled rows


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            info = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f}
        return info.get("MemAvailable", 8 * GiB)
    except OSError:
        return 8 * GiB


def kv_budget_bytes(m: ModelArchitecture, e: EngineConfig, device: torch.device,
                    weights_bytes: int = 0) -> float:
    """Memory the KV cache may take: on a GPU what is free now beyond the share
    gpu_memory_utilization leaves to others (minus weights not loaded yet); on the CPU a quarter
    of the available RAM, at most 4 GiB (host RAM is shared with everything else); minus the
    activations of the largest step."""
    avail = available_memory(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        budget = avail - (1 - e.cache.gpu_memory_utilization) * total - weights_bytes
    else:
        budget = min(avail * 0.25, 4 * GiB)
    return budget - activation_bytes(m, max_step_tokens(e), e.dtype)


def plan_kv_tokens(m: ModelArchitecture, e: EngineConfig, device: torch.device) -> int:
    """Tokens the cache holds: kv_cache_tokens if given, else what the memory budget allows
    (capped at max_model_len * max_num_seqs); never fewer than max_model_len."""
    per_token = KVCache.bytes_per_token(m.num_hidden_layers, m.num_key_value_heads, m.head_dim, e.dtype)
    if e.cache.kv_cache_tokens is not None:
        tokens = e.cache.kv_cache_tokens
    else:
        tokens = min(int(kv_budget_bytes(m, e, device) // per_token),
                     e.max_model_len * e.scheduler.max_num_seqs)
    if tokens < e.max_model_len:
        raise OutOfCacheError(
            f"a KV cache for max_model_len={e.max_model_len} needs "
            f"{e.max_model_len * per_token / GiB:.2f} GiB, but only {tokens} tokens "
            f"({tokens * per_token / GiB:.2f} GiB) fit on {device}; lower max_model_len")
    return tokens


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
