#!/usr/bin/env python3
"""What a grammar costs per generated token inside the engine: greedy decode of the same number of
tokens with and without a JSON-schema grammar, at batch 1 and batch N, on any device.

The constrained run generates under a schema with a free-text field too long to end early (so
it runs its whole max_tokens); the unconstrained run then generates exactly as many tokens with ignore_eos. The
figure is their difference in ms per token, median of --repeat runs (the engine's own
decode_tokens_per_s of each request, after the first token).

usage: PYTHONPATH=src python3 tools/bench_structured_decode.py [--model SPEC] [--device cuda]
       [--tokens 64] [--batch 1,8] [--repeat 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch

from turboctx import LLM, SamplingParams
from turboctx.structured import StructuredOutputsParams



def schema(tokens: int) -> dict:
    """A title and a story too long to end before `tokens` tokens (at most ~4 characters each)."""
    return {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 40},
        "story": {"type": "string", "minLength": 4 * tokens, "maxLength": 8 * tokens + 100}},
        "required": ["title", "story"], "additionalProperties": False}

PROMPT = [{"role": "user", "content": "Write a long story as JSON with a title and the story."}]


def ms_per_token(outs) -> float:
    """Median over requests of 1000 / decode tokens per second."""
    return statistics.median(1000.0 / o.metrics.decode_tokens_per_s for o in outs)


def run(llm: LLM, batch: int, tokens: int, repeat: int) -> dict:
    spec = StructuredOutputsParams(json=schema(tokens))
    constrained, plain, counts = [], [], []
    prompt = llm.chat_prompt(PROMPT)
    for _ in range(repeat):
        outs = llm.generate([prompt] * batch, SamplingParams(max_tokens=tokens, temperature=0,
                                                             structured_outputs=spec), chat=True)
        n = min(o.num_output_tokens for o in outs)
        counts.append(n)
        constrained.append(ms_per_token(outs))
        outs = llm.generate([prompt] * batch, SamplingParams(max_tokens=n, temperature=0,
                                                             ignore_eos=True), chat=True)
        plain.append(ms_per_token(outs))
    c, p = statistics.median(constrained), statistics.median(plain)
    return {"batch": batch, "tokens": min(counts), "ms_per_token_grammar": round(c, 3),
            "ms_per_token_plain": round(p, 3), "overhead_ms_per_token": round(c - p, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    llm = LLM(a.model, device=a.device, max_model_len=2048)
    llm.generate("warm up", SamplingParams(max_tokens=4, temperature=0))
    rows = [run(llm, int(b), a.tokens, a.repeat) for b in a.batch.split(",")]
    dev = llm.engine.device
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
           or platform.machine(), "torch": torch.__version__, "dtype": llm.config.model.dtype,
           "cuda_graphs": bool(llm.engine.captured_graph_sizes())}
    print(f"{'batch':>5} {'tokens':>6} {'grammar ms/tok':>15} {'plain ms/tok':>13} {'overhead':>9}")
    for r in rows:
        print(f"{r['batch']:>5} {r['tokens']:>6} {r['ms_per_token_grammar']:>15.2f} "
              f"{r['ms_per_token_plain']:>13.2f} {r['overhead_ms_per_token']:>9.2f}")
    print(env)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model or "default", "env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
