"""One long prompt among streaming clients, in-process (turboctx.bench.long_prefill): TTFT alone
and beside them, the clients' ITL without it and while it prefills, the slowest steps.
usage: python tools/long_prompt_mix.py --model random:qwen2.5-7b-1m --long 1048576 [--json F]
"""
from __future__ import annotations

import argparse
import json

from turboctx.bench.long_prefill import long_prompt_among_clients
from turboctx.config import EngineConfig
from turboctx.engine.llm_engine import LLMEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:qwen2.5-7b-1m")
    ap.add_argument("--long", type=int, default=131072)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--baseline-s", type=float, default=8.0)
    ap.add_argument("--warm-runs", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    engine = LLMEngine(EngineConfig.from_options(model=a.model, max_model_len=a.long + 4096))
    res = {"model": a.model, **long_prompt_among_clients(
        engine, a.long, clients=a.clients, baseline_s=a.baseline_s, warm_runs=a.warm_runs)}
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
