"""Attention over one key range, returning the log-sum-exp, and the exact LSE merge.

`attend` is the primitive every backend composes: a causal square (a prefill chunk against
itself) or a full rectangle (queries against older keys). Two partial results over disjoint key
ranges merge exactly by their log-sum-exp (the flash-attention merge), which is how a chunk
attends to cache + itself at full kernel speed, and how DCA combines its three parts.
"""
from __future__ import annotations

import torch

_BROKEN: set[tuple] = set()  # (device type, dtype, kernel) combinations that raised once
# On the CPU, PyTorch's flash kernel has a fixed cost of milliseconds (buffer set-up per call);
# below this many scores per head the plain matmul path is far faster (decode, short prompts).
CPU_MATH_MAX_SCORES = 1 << 18


def _math_lse(q, k, v, causal: bool, scale: float):
    """q: [B, H, n, D]; k, v: [B, H, m, D] -> out [B, H, n, D], lse [B, H, n] (fp32 math)."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        n, m = s.shape[-2:]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse[..., None]), v.float())
    return out.to(q.dtype), lse


def _cuda_kernels(q, k, v, causal, scale):
    if q.dtype in (torch.bfloat16, torch.float16):
        yield "cudnn", lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, causal, False, scale=scale)[:2]
        yield "flash", lambda: torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)[:2]
    yield "efficient", lambda: torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale)[:2]


def _sdpa_lse(q, k, v, causal: bool, scale: float):
    """Fastest available kernel that also returns the log-sum-exp. Shapes as `_math_lse`."""
    B, H, n, _ = q.shape
    if q.device.type == "cpu":
        key = ("cpu", q.dtype, "flash_cpu")
        if key not in _BROKEN and n * k.shape[-2] > CPU_MATH_MAX_SCORES:
            try:
                out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, 0.0, causal, scale=scale)
                return out, lse.float()
            except RuntimeError:
                _BROKEN.add(key)
    elif q.device.type == "cuda":
        for name, run in _cuda_kernels(q, k, v, causal, scale):
            key = ("cuda", q.dtype, name)
            if key in _BROKEN:
                continue
            try:
                out, lse = run()
                return out, lse.reshape(B, H, -1)[..., :n].float()
            except RuntimeError:
                _BROKEN.add(key)
    return _math_lse(q, k, v, causal, scale)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of n queries over m keys of one sequence.

    q: [n, H, D]; k, v: [Hkv, m, D] (the cache layout); H = G * Hkv, query head h reads kv head
    h // G. causal=True needs n == m (a chunk against itself); causal=False attends to all keys.
    Returns out [n, H, D] (q.dtype) and lse [n, H] (float32).
    """
    n, H, D = q.shape
    Hkv, m, _ = k.shape
    G = H // Hkv
    if causal:
        assert n == m, "causal attention here is the square of a chunk against itself"
        if G > 1:
            k, v = k.repeat_interleave(G, 0), v.repeat_interleave(G, 0)
        out, lse = _sdpa_lse(q.transpose(0, 1)[None], k[None], v[None], True, scale)
        return out[0].transpose(0, 1), lse[0].transpose(0, 1)
    # Fold the G query heads that share a kv head into the query length: no KV copy.
    qf = q.view(n, Hkv, G, D).permute(1, 2, 0, 3).reshape(Hkv, G * n, D)
    out, lse = _sdpa_lse(qf[None], k[None], v[None], False, scale)
    out = out[0].view(Hkv, G, n, D).permute(2, 0, 1, 3).reshape(n, H, D)
    lse = lse[0].view(Hkv, G, n).permute(2, 0, 1).reshape(n, H)
    return out, lse


def merge_attention(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor,
                    lse2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact combination of attention over two disjoint key sets. o: [n, H, D]; lse: [n, H]."""
    lse = torch.logaddexp(lse1, lse2)
    w1 = torch.exp(lse1 - lse).nan_to_num_(0.0)[..., None]
    w2 = torch.exp(lse2 - lse).nan_to_num_(0.0)[..., None]
    out = o1.float() * w1 + o2.float() * w2
    return out.to(o1.dtype), lse
