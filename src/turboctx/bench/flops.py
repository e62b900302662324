"""FLOP and byte counts of a forward pass, and the device ceilings measured in the same run."""
from __future__ import annotations

import statistics
import time

import torch

from turboctx.attention.ops import attend
from turboctx.config.architecture import ModelArchitecture
from turboctx.kv_cache import KVCache


def linear_params(m: ModelArchitecture) -> int:
    """Parameters that take part in a matmul per token (not the embedding lookup, not lm_head)."""
    q, kv = m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim
    return m.num_hidden_layers * (m.hidden_size * (q + 2 * kv) + q * m.hidden_size
                                  + 3 * m.hidden_size * m.intermediate_size)


def prefill_flops(m: ModelArchitecture, n: int) -> tuple[float, float]:
    """(linear, attention) FLOPs of a causal prefill of n tokens (logits for one position)."""
    linear = 2.0 * linear_params(m) * n + 2.0 * m.hidden_size * m.vocab_size
    # causal: QK^T and PV each n^2/2 * D multiply-adds per head
    attention = 2.0 * n * n * m.head_dim * m.num_attention_heads * m.num_hidden_layers
    return linear, attention


def decode_bytes(m: ModelArchitecture, context: int, dtype: torch.dtype,
                 kv_dtype: torch.dtype | None = None) -> float:
    """Bytes one decode step must read: the KV of `context` tokens (stored as kv_dtype, default
    the model's dtype; FP8 with its scales) and every weight once."""
    e = torch.empty((), dtype=dtype).element_size()
    kv = KVCache.bytes_per_token(m.num_hidden_layers, m.num_key_value_heads, m.head_dim,
                                 kv_dtype or dtype) * context
    return kv + (linear_params(m) + m.vocab_size * m.hidden_size) * e


def timed(fn, repeat: int, device: torch.device) -> list[float]:
    """Seconds per call: CUDA events on GPU (after a warm-up), perf_counter on CPU."""
    fn()
    out = []
    for _ in range(repeat):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize(device)
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul ceiling on random data (8192^3 on GPU, 1024^3 on CPU), median of runs."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    t = statistics.median(timed(lambda: a @ b, 10 if device.type == "cuda" else 3, device))
    return 2 * n ** 3 / t / 1e12


def attention_tflops(m: ModelArchitecture, device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """Our dense causal kernel on the model's head shape (32K tokens on GPU, 2K on CPU)."""
    n = 32768 if device.type == "cuda" else 2048
    H, Hkv, D = m.num_attention_heads, m.num_key_value_heads, m.head_dim
    q = torch.randn(n, H, D, device=device).to(dtype)
    k, v = (torch.randn(Hkv, n, D, device=device).to(dtype) for _ in range(2))
    t = statistics.median(timed(lambda: attend(q, k, v, causal=True, scale=D ** -0.5), 5, device))
    return 2.0 * n * n * D * H / t / 1e12, n


def copy_gbps(device: torch.device) -> float:
    """Memory bandwidth ceiling: a large device copy, bytes read + written (GPU 4 GiB, CPU 256 MiB)."""
    n = (1 << 30) if device.type == "cuda" else (1 << 26)
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    t = statistics.median(timed(lambda: b.copy_(a), 10 if device.type == "cuda" else 3, device))
    return 2 * a.nbytes / t / 1e9
