"""Attention over one key range, returning the log-sum-exp, and the exact LSE merge: the dense
primitives every attention path composes (on CUDA through cuDNN / flash-attention, on the CPU
through PyTorch's flash kernel or plain matmuls; reference: reference.reference_attention).

`attend` runs a causal square (a prefill chunk against itself) or a full rectangle (queries
against older keys). Two partial results over disjoint key ranges merge exactly by their
log-sum-exp (the flash-attention merge), which is how a chunk attends to cache + itself at full
kernel speed, and how DCA combines its three parts.
"""
from __future__ import annotations

import torch

_BROKEN: set[tuple] = set()  # (device type, dtype, kernel) combinations that raised once
# On the CPU, PyTorch's flash kernel has a fixed cost of milliseconds (buffer set-up per call);
# below this many scores per head the plain matmul path is far faster (decode, short prompts).
CPU_MATH_MAX_SCORES = 1 << 18
FEW_QUERIES = 128


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
        cudnn = ("cudnn", lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, causal, False, scale=scale)[:2])
        flash = ("flash", lambda: torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)[:2])
        # cuDNN is fastest on long query blocks (prefill) but builds an execution plan for every
        # new shape; decode changes the key length every step, so few queries go to flash.
        yield from ((cudnn, flash) if q.shape[-2] > FEW_QUERIES else (flash, cudnn))
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
    if q.device.type == "cuda" and G * n <= SPLIT_KV_MAX_QUERIES and m >= 2 * SPLIT_KV_SEGMENT:
        out, lse = _split_kv(qf, k, v, scale)
    else:
        out, lse = _sdpa_lse(qf[None], k[None], v[None], False, scale)
        out, lse = out[0], lse[0]
    out = out.view(Hkv, G, n, D).permute(2, 0, 1, 3).reshape(n, H, D)
    lse = lse.view(Hkv, G, n).permute(2, 0, 1).reshape(n, H)
    return out, lse


# Split-KV ("flash-decoding", Dao et al. 2023): a few queries over a long cache would occupy only
# Hkv thread blocks; cutting the keys into segments, attending to each as its own batch entry and
# merging by LSE puts the whole GPU on it. Segments are zero-copy views of the cache.
SPLIT_KV_SEGMENT = 8192
SPLIT_KV_MAX_QUERIES = 128


def _split_kv(qf: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """qf: [Hkv, nq, D]; k, v: [Hkv, m, D] -> out [Hkv, nq, D], lse [Hkv, nq]."""
    Hkv, nq, D = qf.shape
    m = k.shape[1]
    S = m // SPLIT_KV_SEGMENT
    body = S * SPLIT_KV_SEGMENT
    # [Hkv, m, D] -> [Hkv, S, seg, D]: a zero-copy view; the kernel sees Hkv as the batch and the
    # S segments as heads (flattening them would copy the whole cache, the head stride being the
    # cache's, not m's).
    kb = k[:, :body].unflatten(1, (S, SPLIT_KV_SEGMENT))
    vb = v[:, :body].unflatten(1, (S, SPLIT_KV_SEGMENT))
    qb = qf[:, None].expand(Hkv, S, nq, D).contiguous()                      # small
    o, l = _sdpa_lse(qb, kb, vb, False, scale)                               # [Hkv, S, nq, *]
    if body < m:
        ot, lt = _sdpa_lse(qf[None], k[None, :, body:], v[None, :, body:], False, scale)
        o = torch.cat([o, ot[0][:, None]], 1)
        l = torch.cat([l, lt[0][:, None]], 1)
    lse = torch.logsumexp(l, dim=1)                                          # [Hkv, nq]
    w = torch.exp(l - lse[:, None])[..., None]                               # [Hkv, S', nq, 1]
    return (o.float() * w).sum(1).to(qf.dtype), lse


def merge_attention(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor,
                    lse2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact combination of attention over two disjoint key sets. o: [n, H, D]; lse: [n, H]."""
    lse = torch.logaddexp(lse1, lse2)
    w1 = torch.exp(lse1 - lse).nan_to_num_(0.0)[..., None]
    w2 = torch.exp(lse2 - lse).nan_to_num_(0.0)[..., None]
    out = o1.float() * w1 + o2.float() * w2
    return out.to(o1.dtype), lse


def merge_parts(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Exact log-sum-exp merge of attention over disjoint key sets, in float32: outs [B, H, D],
    lses [B, H] (-inf: no keys). Rows with no keys at all give 0."""
    lse = torch.stack(lses)                                              # [P, B, H]
    m = lse.max(0).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse - m)                                               # [P, B, H], 0 where -inf
    acc = sum(o.float() * w[i][..., None] for i, o in enumerate(outs))
    return acc / w.sum(0).clamp(min=torch.finfo(torch.float32).tiny)[..., None]
