"""CPU speed beside HF transformers on the default model's shape, alternating runs in one process.

    python scripts/cpu_vs_hf.py [--runs 7] [--prompt 2048] [--decode 64]

Prefill: TTFT of a 2,048-token prompt (turboctx: arrival -> first token; HF: one forward with
use_cache=True, logits for the last position). Decode: ms/token over 64 greedy tokens after it.
Random weights of the SmolLM2-135M shape (speed does not depend on the values), fp32.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from turboctx import LLM, SamplingParams
from turboctx.bench.hf_compare import build_hf_model
from turboctx.bench.prefill import random_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=64)
    a = ap.parse_args()
    llm = LLM("random:smollm2-135m", device="cpu", max_model_len=a.prompt + a.decode + 8,
              enable_prefix_caching=False)
    hf = build_hf_model(llm.model_config, torch.device("cpu"), torch.float32, 0)
    ids = random_prompt(llm.model_config.vocab_size, a.prompt, 1)
    t_ids = torch.tensor([ids])

    def ours():
        out = llm.generate(ids, SamplingParams(max_tokens=a.decode + 1, temperature=0, ignore_eos=True))[0]
        return out.metrics.ttft_s, 1e3 / out.metrics.decode_tokens_per_s

    @torch.inference_mode()
    def theirs():
        t = time.perf_counter()
        out = hf(t_ids, use_cache=True, logits_to_keep=1)
        ttft = time.perf_counter() - t
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(a.decode):
            out = hf(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            tok.item()
        return ttft, (time.perf_counter() - t) / a.decode * 1e3

    ours(), theirs()                      # warm-up
    rows = {"turboctx": [], "hf": []}
    for _ in range(a.runs):
        rows["turboctx"].append(ours())
        rows["hf"].append(theirs())
    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in rows.items()}
    print(f"threads {torch.get_num_threads()}, {a.runs} alternating runs, prompt {a.prompt}, decode {a.decode}")
    for k, v in rows.items():
        print(f"{k:>9}: prefill median {med[k][0]:.3f} s  {[round(p, 2) for p, _ in v]}")
        print(f"{'':>9}  decode  median {med[k][1]:.1f} ms/token  {[round(d, 1) for _, d in v]}")
    print(f"ratio HF/turboctx (>1: turboctx faster): prefill {med['hf'][0] / med['turboctx'][0]:.3f}, "
          f"decode {med['hf'][1] / med['turboctx'][1]:.3f}")


if __name__ == "__main__":
    main()
