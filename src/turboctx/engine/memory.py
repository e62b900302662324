"""Memory plan: how many KV-cache tokens fit beside the weights and a prefill chunk's activations."""
from __future__ import annotations

import os

import torch

from turboctx.config import EngineConfig, ModelArchitecture
from turboctx.errors import OutOfCacheError
from turboctx.kv_cache import KVCache
from turboctx.kv_cache.fp8 import FP8_DTYPE
from turboctx.models.layers import GatedMLP

GiB = 1 << 30


def max_step_tokens(e: EngineConfig) -> int:
    """Most tokens one step computes: the prefill budget; with sparse prefill up to twice it, as
    sparse chunks end on a grid and may pass the budget by less than a chunk (scheduler.py)."""
    return e.max_num_batched_tokens * (1 if e.sparse is None else 2)


def activation_bytes(m: ModelArchitecture, chunk: int, dtype: torch.dtype) -> int:
    """Rough peak of one layer's activations for a step of `chunk` tokens: hidden states, q/k/v
    and the rotated queries, the attention output with its fp32 merge buffer, and the MLP's
    intermediates, which run in slices of GatedMLP.max_rows rows; logits only for sampled rows.
    Against the H200 run of a 1M prompt on the Qwen2.5-7B shape in 32K chunks (peak 74.3 GiB,
    of which 4.1 GiB beyond weights and KV) this gives 4.4 GiB."""
    e = torch.empty((), dtype=dtype).element_size()
    q = m.num_attention_heads * m.head_dim
    kv = m.num_key_value_heads * m.head_dim
    per_token = e * (4 * m.hidden_size + 4 * q + 2 * kv) + 4 * 2 * q
    mlp = min(chunk, GatedMLP.max_rows) * 3 * m.intermediate_size * e
    return int((chunk * per_token + mlp) * 1.25)


def dequantized_prefix_bytes(m: ModelArchitecture, e: EngineConfig,
                             storage: torch.dtype | None = None) -> int:
    """With the FP8 cache (storage, default the configured one), a prefill chunk reads one
    layer's older keys and values back in the model's dtype (kv_cache/fp8.py): up to
    max_model_len tokens of both at once."""
    if (storage or e.kv_cache_dtype) != FP8_DTYPE:
        return 0
    return 2 * e.max_model_len * m.num_key_value_heads * m.head_dim * e.dtype.itemsize


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
    return budget - activation_bytes(m, max_step_tokens(e), e.dtype) - dequantized_prefix_bytes(m, e)


def kv_bytes_per_token(m: ModelArchitecture, e: EngineConfig, storage: torch.dtype | None = None) -> int:
    return KVCache.bytes_per_token(m.num_hidden_layers, m.num_key_value_heads, m.head_dim,
                                   storage or e.kv_cache_dtype)


def plan_kv_tokens(m: ModelArchitecture, e: EngineConfig, device: torch.device) -> int:
    """Tokens the cache holds: kv_cache_tokens if given, else what the memory budget allows
    (capped at max_model_len * max_num_seqs); never fewer than max_model_len."""
    per_token = kv_bytes_per_token(m, e)
    budget = kv_budget_bytes(m, e, device)
    if e.cache.kv_cache_tokens is not None:
        tokens = e.cache.kv_cache_tokens
    else:
        tokens = min(int(budget // per_token), e.max_model_len * e.scheduler.max_num_seqs)
    if tokens < e.max_model_len:
        raise OutOfCacheError(
            f"a KV cache for max_model_len={e.max_model_len} needs "
            f"{e.max_model_len * per_token / GiB:.2f} GiB ({per_token} bytes per token), but only "
            f"{tokens} tokens ({tokens * per_token / GiB:.2f} GiB) fit on {device}; "
            + fitting_options(m, e, budget))
    return tokens


def fitting_options(m: ModelArchitecture, e: EngineConfig, budget: float) -> str:
    """What would make max_model_len fit, for the out-of-cache error."""
    ways = []
    if e.cache.kv_cache_tokens is None and e.kv_cache_dtype == e.dtype:
        fp8_budget = budget - dequantized_prefix_bytes(m, e, FP8_DTYPE)
        fits = fp8_budget >= e.max_model_len * kv_bytes_per_token(m, e, FP8_DTYPE)
        ways.append("kv_cache_dtype='fp8' (--kv-cache-dtype fp8) halves the KV bytes"
                    + (" and makes it fit" if fits else ""))
    if e.model.quantization is None and e.device.type == "cuda" and e.dtype != torch.float32:
        saved = m.num_linear_weights() * (torch.empty((), dtype=e.dtype).element_size() - 1)
        ways.append(f"quantization='fp8' (--quantization fp8) stores the linear layers in one byte "
                    f"per weight ({saved / GiB:.1f} GiB less; FP8 GPUs)")
    ways.append("tensor_parallel_size=N (--tensor-parallel-size N) splits the model and its KV "
                "over N GPUs")
    if e.device.type == "cuda":
        reserve = activation_bytes(m, max_step_tokens(e), e.dtype) + dequantized_prefix_bytes(m, e)
        ways.append(f"a higher gpu_memory_utilization (now {e.cache.gpu_memory_utilization}) or a "
                    f"smaller max_num_batched_tokens (now {e.max_num_batched_tokens}; the step "
                    f"reserves {reserve / GiB:.1f} GiB)")
    ways.append("a lower max_model_len")
    if e.cache.kv_cache_tokens is not None:
        ways.insert(0, f"a kv_cache_tokens of at least {e.max_model_len}")
    return "; ".join(ways)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
