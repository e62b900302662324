"""Are per-token FP8 KV scales worth their bytes? NLL by position over a window of the ASV text
with the model's dtype cache, the FP8 cache with per-token scales (the default), and the FP8
cache with static scales per layer and KV head, or per layer, taken from the amax of this very
text (the best case for a static scale a checkpoint could ship).

usage: PYTHONPATH=src python3 tools/fp8_scale_study.py [--model SPEC] [--device cpu] [--length 8192]
                                                       [--dca] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch

import turboctx.attention.backend as backend_module
from turboctx import LLM
from turboctx.eval.ppl import nll_by_bin, windows
from turboctx.kv_cache.fp8 import FP8_MAX


def token_logprobs(llm, ids: list[int]) -> list[float]:
    """log p of tokens 1..n-1 given the ones before."""
    from turboctx import SamplingParams
    out = llm.generate([ids], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), use_tqdm=False)[0]
    return [float(out.prompt_logprobs[j][ids[j]]) for j in range(1, len(ids))]


def amax_per_layer_head(opts: dict, ids: list[int]) -> tuple[dict, list[float]]:
    """The model's dtype cache: token logprobs, and the amax of what each layer writes per KV head."""
    seen: dict[tuple[int, str], torch.Tensor] = {}
    original = backend_module.AttentionBackend._attend_seq

    def record(self, layer, s, queries, k, v, *rest):
        for name, x in (("k", k), ("v", v)):                       # [n, Hkv, D]
            m = x.detach().abs().amax(dim=(0, 2)).float().cpu()
            seen[(layer, name)] = torch.maximum(seen.get((layer, name), m), m)
        return original(self, layer, s, queries, k, v, *rest)

    backend_module.AttentionBackend._attend_seq = record
    try:
        lps = token_logprobs(LLM(**opts), ids)
    finally:
        backend_module.AttentionBackend._attend_seq = original
    layers = 1 + max(layer for layer, _ in seen)
    return {n: torch.stack([seen[(i, n)] for i in range(layers)]) for n in "kv"}, lps


def fp8_logprobs(opts: dict, ids: list[int], static: dict | None) -> list[float]:
    llm = LLM(kv_cache_dtype="fp8", **opts)
    if static is not None:
        llm.engine.worker.kv_cache.static_scales = {n: t.to(llm.engine.device) for n, t in static.items()}
    return token_logprobs(llm, ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--dca", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    opts = dict(model=a.model, device=a.device, max_model_len=a.length + 64)
    if a.dca:
        opts["dca"] = True
    ids = windows(LLM(**opts).tokenizer.encode, a.length, 1)[0]
    amax, base = amax_per_layer_head(opts, ids)
    per_head = {n: (t / FP8_MAX).clamp(min=1e-12) for n, t in amax.items()}         # [L, Hkv]
    per_layer = {n: t.amax(dim=1, keepdim=True).expand_as(t).contiguous() for n, t in per_head.items()}
    runs = {"model dtype": base, "fp8, per-token scales": fp8_logprobs(opts, ids, None),
            "fp8, static per layer and KV head": fp8_logprobs(opts, ids, per_head),
            "fp8, static per layer": fp8_logprobs(opts, ids, per_layer)}
    bins = {name: nll_by_bin([lps], a.length) for name, lps in runs.items()}
    ref = bins["model dtype"]
    print(f"{'position':>10} " + " ".join(f"{n:>34}" for n in bins))
    for b in ref:
        cells = [f"{ref[b]:.4f}"] + [f"{bins[n][b]:.4f} ({bins[n][b] - ref[b]:+.4f})" for n in list(bins)[1:]]
        print(f"{b:>10} " + " ".join(f"{c:>34}" for c in cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model or "default", "device": a.device, "length": a.length,
                       "dca": a.dca, "nll": bins}, f, indent=2)


if __name__ == "__main__":
    main()
