"""Prefix reuse: two questions on the same long document; the second reuses the document's KV.

    python scripts/prefix_reuse_demo.py [--doc-tokens 8000] [--model SPEC] [--device cpu]

Prints each question's TTFT, cached prompt tokens and answer, the TTFT ratio (issue 7 asks for
<= 10%), and checks the second answer against an engine without prefix caching.
"""
from __future__ import annotations

import argparse
import json

from turboctx import LLM, SamplingParams
from turboctx.eval.haystack import bible_text

QUESTIONS = ["Who is the first man named in this text?", "What did God call the light?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--doc-tokens", type=int, default=8000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--no-check", action="store_true", help="skip the cold-engine comparison")
    args = ap.parse_args()

    llm = LLM(args.model, device=args.device)
    tok = llm.tokenizer
    doc = tok.decode(tok.encode(bible_text(), add_special_tokens=False)[:args.doc_tokens])
    prompts = [f"{doc}\n\nQuestion: {q}\nAnswer:" for q in QUESTIONS]
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0, logprobs=1, ignore_eos=True)
    llm.generate("warm-up", SamplingParams(max_tokens=2))   # first-call overheads out of the way
    outs = [llm.generate(p, sp)[0] for p in prompts]          # one after the other, as a client would
    rows = [{"question": q, "prompt_tokens": o.metrics.num_prompt_tokens,
             "cached_tokens": o.metrics.num_cached_tokens, "ttft_s": round(o.metrics.ttft_s, 4),
             "answer": o.text} for q, o in zip(QUESTIONS, outs)]
    for r in rows:
        print(json.dumps(r))
    ratio = outs[1].metrics.ttft_s / outs[0].metrics.ttft_s
    print(f"second TTFT / first TTFT = {ratio:.3f} ({'<=' if ratio <= 0.10 else '>'} 0.10)")
    if not args.no_check:
        cold = LLM(args.model, device=args.device, enable_prefix_caching=False).generate(prompts[1], sp)[0]
        diff = max(abs(a[t] - b[t]) for a, b in zip(outs[1].logprobs, cold.logprobs) for t in a if t in b)
        print(f"second answer vs a cold engine: same tokens {outs[1].token_ids == cold.token_ids}, "
              f"max logprob difference {diff:.2e}, cold TTFT {cold.metrics.ttft_s:.3f} s")


if __name__ == "__main__":
    main()
