"""Where the time of one sparse prefill chunk-layer goes, on the GPU: variants side by side.

    export PYTHONPATH=$PWD/src:$PWD/tests
    python3 scripts/sparse_profile.py --out $OUT            # one 32K chunk at the end of 1M keys

Parts (each prints rows; one table last, JSON to --out/sparse_profile.json):
  estimator  the fused scores kernel over (BLOCK_N, warps, stages)
  flex       FlexAttention: the engine's call, then its slash and vertical calls alone,
             slash with every block listed full (the kernel's ceiling on these blocks),
             slash compiled for static shapes, kernel option sweeps
  triton     our single-kernel vertical-slash attention (sparse_triton.py) over its options,
             checked against the flex output
Shapes: Qwen2.5-7B attention (28 query heads, 4 kv heads, D=128), default budgets (1000, 6096).
Status: written in session 3 and smoke-run on the CPU only (where compiled FlexAttention does not
run); its first GPU run is still to come.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from turboctx.attention import sparse_attention as sa
from turboctx.attention.sparse_blocks import (band_table, causal_entries, count_attended,
                                              covered, kv_block_lists)
from turboctx.attention.sparse_config import SparseConfig
from turboctx.attention.sparse_pattern import estimate_vertical_slash

import sparse_gpu                                  # scripts/: the timer and table of the GPU script
from sparse_gpu import cuda_ms, table

DEV, BF16 = torch.device("cuda"), torch.bfloat16
H, HKV, D = 28, 4, 128


def run(rows, what, fn, flops=None, **extra):
    try:
        ms = cuda_ms(fn)
        row = {"what": what, "ms": ms, **extra}
        if flops:
            row["tflops"] = flops / ms / 1e9
    except Exception as e:   # a configuration the compiler refuses: say so, go on
        row = {"what": what, "error": f"{type(e).__name__}: {str(e)[:90]}"}
    rows.append(row)
    print(row, flush=True)
    return row


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/out")
    ap.add_argument("--chunk", type=int, default=32768)
    ap.add_argument("--context", type=int, default=1 << 20)
    ap.add_argument("--parts", default="estimator,flex,triton")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run at tiny sizes")
    a = ap.parse_args()
    global DEV
    DEV = sparse_gpu.DEV = torch.device(a.device)
    parts = a.parts.split(",")
    n, m = a.chunk, a.context
    start = m - n
    g = torch.Generator(device=DEV).manual_seed(1)
    q = torch.randn(n, H, D, device=DEV, generator=g).to(BF16)
    k = torch.randn(HKV, m, D, device=DEV, generator=g).to(BF16)
    v = torch.randn(HKV, m, D, device=DEV, generator=g).to(BF16)
    cfg = SparseConfig()
    B, scale, L = cfg.block_size, D ** -0.5, cfg.last_q
    budgets = [(cfg.vertical_size, cfg.slash_size)] * H
    rows: list[dict] = []

    if "estimator" in parts:
        from turboctx.attention import sparse_estimate_kernel as sek
        f = sek.flops(L, H, m, D)
        for bn in (32, 64):
            for nw in (2, 4):
                for ns in (1, 2, 3):
                    run(rows, f"scores BN={bn} w={nw} s={ns}", lambda: sek.vertical_slash_scores_triton(
                        q[-L:], k, m - L, scale=scale, block_size=B, block_n=bn, num_warps=nw,
                        num_stages=ns), f)
        run(rows, "estimation (defaults, scores + select)", lambda: estimate_vertical_slash(
            q[-L:], k, m - L, budgets, scale=scale, block_size=B, kernel="triton"))

    pat = estimate_vertical_slash(q[-L:], k, m - L, budgets, scale=scale, block_size=B)
    kept = int(count_attended(pat, n, start).sum())
    pn, pi, fn_, fi = kv_block_lists(pat, start, 0, n, 0, m)
    blocks = int(pn.sum() + fn_.sum())
    vp = (pat.vertical.shape[1] + B - 1) // B * B
    slash_flops = blocks * B * B * 4 * D
    vert_flops = H * n * vp * 4 * D
    useful = kept * 4 * D
    print(f"density {kept / (H * causal_entries(n, start)):.4f}, keys/query {kept / H / n:.0f}, "
          f"slash blocks/qblock {blocks / H / (n // B):.1f} (partial {int(pn.sum()) / H / (n // B):.2f})")
    run(rows, "block lists (kv_block_lists)", lambda: kv_block_lists(pat, start, 0, n, 0, m))

    ref = None
    if "flex" in parts:
        from torch.nn.attention.flex_attention import flex_attention
        run(rows, "flex: engine call (slash + vertical + merge)", lambda: sa.vertical_slash_attention_flex(
            q, k, v, pat, start=start, scale=scale), slash_flops + vert_flops)
        ref = sa.vertical_slash_attention_flex(q, k, v, pat, start=start, scale=scale)
        f = sa.flex_inputs(q, k, v, pat, start=start)
        dyn = sa._flex_fn(True)
        run(rows, "flex slash alone (dynamic compile)", lambda: sa._flex_call(
            dyn, f.q4, *f.slash_kv, f.slash_mask, scale, True, None), slash_flops)
        allf = sa._block_mask(torch.zeros_like(pn), torch.zeros_like(pi), pn + fn_,
                              torch.cat([fi, pi], -1), B, f.slash_mask.mask_mod, (n, m))
        run(rows, "flex slash, every block full (no mask_mod)", lambda: sa._flex_call(
            dyn, f.q4, *f.slash_kv, allf, scale, True, None), slash_flops)
        static = torch.compile(flex_attention, dynamic=False)
        run(rows, "flex slash, static compile", lambda: sa._flex_call(
            static, f.q4, *f.slash_kv, f.slash_mask, scale, True, None), slash_flops)
        for opts in ({"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
                     {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
                     {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
                     {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}):
            run(rows, f"flex slash static {opts}", lambda: sa._flex_call(
                static, f.q4, *f.slash_kv, f.slash_mask, scale, True, opts), slash_flops)
        run(rows, "flex vertical alone (gathered, every block masked)", lambda: sa._flex_call(
            dyn, f.q4, *f.vert_kv, f.vert_mask, scale, False, None), vert_flops)
        # the same with a precomputed coverage table in the mask_mod instead of band lookups
        t0 = time.time()
        bt = band_table(pat, m)
        vert = torch.nn.functional.pad(pat.vertical, (0, vp - pat.vertical.shape[1]), value=-1)
        vblk = vert.clamp(min=0) // B
        nvb = vp // B
        excl = covered(bt, torch.arange(H, device=DEV)[:, None, None],
                       (start // B + torch.arange(n // B, device=DEV))[None, :, None], vblk[:, None, :])
        ok_tab = (vert >= 0)[:, None, :] & ~excl                                  # [H, nqb, vp]

        def vert_mask2(b, h, q_idx, kv_idx):
            return (vert[h, kv_idx] <= q_idx + start) & ok_tab[h, q_idx // B, kv_idx]
        vbm2 = sa._block_mask(torch.full((1, H, n // B), nvb, dtype=torch.int32, device=DEV),
                              torch.arange(nvb, dtype=torch.int32, device=DEV).expand(1, H, n // B, nvb).contiguous(),
                              None, None, B, vert_mask2, (n, vp))
        run(rows, "flex vertical, coverage table mask", lambda: sa._flex_call(
            dyn, f.q4, *f.vert_kv, vbm2, scale, False, None), vert_flops)
        print(f"(vertical set-up {time.time() - t0:.1f} s incl. compiles)")

    if "triton" in parts:
        try:
            from turboctx.attention.sparse_triton import vertical_slash_attention_triton
        except ImportError as e:
            print("no triton kernel:", e)
            vertical_slash_attention_triton = None
        if vertical_slash_attention_triton is not None:
            if ref is None:
                ref = sa.vertical_slash_attention_flex(q, k, v, pat, start=start, scale=scale)
            o, lse = vertical_slash_attention_triton(q, k, v, pat, start=start, scale=scale)
            err = float((o.float() - ref[0].float()).abs().max())
            lerr = float((lse - ref[1]).abs().max())
            print(f"triton vs flex: max |out| diff {err:.3g}, max |lse| diff {lerr:.3g}")
            for bn in (64, 128):
                for nw in (8,):
                    for ns in (2, 3, 4):
                        run(rows, f"triton BN={bn} w={nw} s={ns}", lambda: vertical_slash_attention_triton(
                            q, k, v, pat, start=start, scale=scale, block_n=bn, num_warps=nw,
                            num_stages=ns), slash_flops + vert_flops, out_err=err, lse_err=lerr)

    table(f"one {n}-query chunk at the end of {m} keys; H={H} Hkv={HKV} D={D} B={B}; "
          f"{blocks / H / (n // B):.1f} slash blocks per query block, {vp} vertical keys; "
          f"useful FLOP {useful:.3g}", rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sparse_profile.json").write_text(json.dumps({
        "rows": rows, "chunk": n, "context": m, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))


if __name__ == "__main__":
    main()
