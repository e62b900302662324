"""Where do FP8 linear layers lose accuracy? NLL over a window of the ASV text with the model's own
linear layers, then with FP8 (e4m3, per-output-channel weight scales, per-token activation
scales: models/fp8_linear.py) in one group of layers at a time: everywhere, each kind of
projection in every layer, every kind but one, and each decoder layer's four projections. Off FP8 GPUs the layers
run fp8_linear_reference (the same quantized values, multiplied in float32).

usage: PYTHONPATH=src python3 tools/fp8_layer_study.py [--model SPEC] [--device cpu] [--length 2048]
                                                       [--dca] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

from fp8_scale_study import token_logprobs     # tools/, the script's own folder
from turboctx import LLM
from turboctx.eval.ppl import windows
from turboctx.models.fp8_linear import QUANTIZED_LAYERS, Fp8Linear


def with_fp8(llm, ids: list[int], layers: list[int], kinds: tuple[str, ...]) -> list[float]:
    """Token logprobs with the `kinds` projections of decoder `layers` in FP8; restored after."""
    decoder = llm.engine.worker.model.model.layers
    swapped = []
    for i in layers:
        for parent in (decoder[i].self_attn, decoder[i].mlp):
            for name in kinds:
                lin = getattr(parent, name, None)
                if lin is not None and not isinstance(lin, Fp8Linear):
                    swapped.append((parent, name, lin, getattr(parent, "split_matmuls", False)))
                    setattr(parent, name, Fp8Linear.from_linear(lin))
                    parent.split_matmuls = False     # the split products read the full weight
    try:
        return token_logprobs(llm, ids)        # prefix caching is off: every run computes it all
    finally:
        for parent, name, lin, split in swapped:
            setattr(parent, name, lin)
            parent.split_matmuls = split


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--dca", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    opts = dict(model=a.model, device=a.device, max_model_len=a.length + 64, enable_prefix_caching=False)
    if a.dca:
        opts["dca"] = True
    llm = LLM(**opts)
    ids = windows(llm.tokenizer.encode, a.length, 1)[0]
    n_layers = len(llm.engine.worker.model.model.layers)
    every = list(range(n_layers))
    base = token_logprobs(llm, ids)
    mean_nll = lambda lps: -sum(lps) / len(lps)
    ref = mean_nll(base)
    groups = {"all": (every, QUANTIZED_LAYERS)}
    groups.update({f"{k}, every layer": (every, (k,)) for k in QUANTIZED_LAYERS})
    groups.update({f"all but {k}": (every, tuple(x for x in QUANTIZED_LAYERS if x != k))
                   for k in QUANTIZED_LAYERS})
    groups.update({f"layer {i}": ([i], QUANTIZED_LAYERS) for i in every})
    rows = {}
    print(f"model's own linear layers: NLL {ref:.4f} nats over {len(base)} tokens")
    for name, (layers, kinds) in groups.items():
        lps = with_fp8(llm, ids, layers, kinds)
        worst = max(abs(x - y) for x, y in zip(lps, base))
        rows[name] = dict(nll=mean_nll(lps), delta=mean_nll(lps) - ref, max_token_logprob_change=worst)
        print(f"{name:>24}  NLL {rows[name]['nll']:.4f}  {rows[name]['delta']:+.4f} nats  "
              f"largest change of a token's log p {worst:.3f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model or "default", "device": a.device, "length": a.length,
                       "dca": a.dca, "reference_nll": ref, "fp8": rows}, f, indent=2)


if __name__ == "__main__":
    main()
