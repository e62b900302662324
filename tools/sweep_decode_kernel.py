"""Sweeps the launch settings of the split-KV decode kernel (attention/decode_kernel.py) on a GPU:
GB/s of KV read per layer call, beside the eager `attend` path.

usage: PYTHONPATH=src python3 tools/sweep_decode_kernel.py [--lengths 131072,1048576] [--batch 1]
                                                            [--kv-cache-dtype fp8]
"""
from __future__ import annotations

import argparse
import itertools

import torch
from triton.testing import do_bench

from turboctx.attention import decode_kernel as dk
from turboctx.attention.ops import attend
from turboctx.kv_cache.fp8 import FP8Layer, quantize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="131072,1048576")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "fp8"))
    a = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    H, Hkv, D, B = a.heads, a.kv_heads, a.head_dim, a.batch
    for n in map(int, a.lengths.split(",")):
        k = torch.randn(Hkv, B * n, D, dtype=dt, device=dev)
        v = torch.randn_like(k)
        q = torch.randn(B, H, D, dtype=dt, device=dev)
        lens = torch.full((B,), n, dtype=torch.int32, device=dev)
        starts = torch.arange(B, dtype=torch.int32, device=dev) * n
        gb = 2 * k.numel() * k.element_size() / 1e9
        ms = do_bench(lambda: attend(q[:1].reshape(1, H, D), k[:, :n], v[:, :n], causal=False, scale=D ** -0.5))
        print(f"n={n} B={B} eager attend (B=1): {ms * 1e3:.0f} us, {gb / B / ms * 1e3:.0f} GB/s")
        fp8 = a.kv_cache_dtype == "fp8"
        if fp8:                                 # e4m3 values + bf16 scales: the bytes really read
            (kd, ks), (vd, vs) = (quantize(t.transpose(0, 1)) for t in (k, v))
            k, v = (FP8Layer(d.transpose(0, 1).contiguous(), s.T.contiguous(), dt, None)
                    for d, s in ((kd, ks), (vd, vs)))
            gb = 2 * (kd.numel() + 2 * ks.numel()) / 1e9
        blocks = (64, 128, 256) if fp8 else (32, 64, 128)
        for splits_scale, bn, nw, ns in itertools.product((1, 2), blocks, (4, 8), (2, 3, 4)):
            if fp8:
                dk.FP8_BLOCK_N, dk.FP8_NUM_WARPS, dk.FP8_NUM_STAGES = bn, nw, ns
            else:
                dk.BLOCK_N, dk.NUM_WARPS, dk.NUM_STAGES = bn, nw, ns
            S = min(dk.MAX_SPLITS, splits_scale * dk.num_splits_for(B, Hkv, n, dev))
            try:
                ms = do_bench(lambda: dk.decode_attention(q, k, v, lens, starts, D ** -0.5, S))
            except Exception as e:  # noqa: BLE001 - out of shared memory etc.: skip the setting
                print(f"  S={S} BLOCK_N={bn} warps={nw} stages={ns}: {type(e).__name__}")
                continue
            print(f"  S={S} BLOCK_N={bn} warps={nw} stages={ns}: {ms * 1e3:.0f} us, {gb / ms * 1e3:.0f} GB/s")


if __name__ == "__main__":
    main()
