"""Re-run chosen RULER (or passkey) samples under several engine settings: where did a setting
lose a sample?

    export PYTHONPATH=$PWD/src
    python3 scripts/ruler_repro.py --task niah_single_2 --length 16k --samples 20 --indices 11 \
        --run docs/results/sparse_eval_s5/ruler16k_sparse \
        --setting attention=dense \
        --setting attention=sparse,sparse_threshold=16000

    python3 scripts/ruler_repro.py --task passkey --length 16k --depth 0.15 --trials 3 --seed 9 \
        --indices 1 --run RUN/passkey_sparse --setting attention=sparse,sparse_threshold=4096

Builds the task's samples exactly as `turboctx eval ruler` / `eval passkey` do (same seed and
count; for passkey one depth of the run, --indices = trial numbers), checks each
chosen prompt against the hash that --run recorded (so the answers compare with that run's), and
prints one JSON line per (setting, sample): the answer, the expected values, that run's answer.
Settings are engine flags `key=value,...` on top of --dca/--device/--dtype/--max-model-len.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from turboctx import LLM, SamplingParams
from turboctx.eval import passkey as passkey_mod
from turboctx.eval import ruler as ruler_mod
from turboctx.eval.cli import parse_extra
from turboctx.eval.common import parse_size, sha256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the default model")
    ap.add_argument("--task", required=True)
    ap.add_argument("--length", required=True)
    ap.add_argument("--samples", type=int, default=20, help="as the run's --samples")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--depth", type=float, help="passkey: the needle depth of the chosen trials")
    ap.add_argument("--trials", type=int, default=3, help="passkey: as the run's --trials")
    ap.add_argument("--indices", required=True, help="comma-separated sample indices")
    ap.add_argument("--run", type=Path, help="an eval output directory: prompt hashes, answers")
    ap.add_argument("--setting", action="append", default=[], help="engine flags, repeatable")
    ap.add_argument("--dca", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", default="34000")
    a = ap.parse_args()
    length, indices = parse_size(a.length), [int(i) for i in a.indices.split(",")]
    seen = {}
    if a.run:
        for line in (a.run / "samples.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["task"] == a.task and r["length"] == length and (
                    a.task != "passkey" or abs(r["depth"] - a.depth) < 1e-9):
                seen[r["index"]] = r
    samples = None                                   # built once: the tokenizer is the model's
    for setting in a.setting or ["attention=dense"]:
        flags = parse_extra([f"--{kv.strip()}" for kv in setting.split(",") if kv.strip()])
        llm = LLM(a.model, dca=a.dca, device=a.device, dtype=a.dtype,
                  max_model_len=parse_size(a.max_model_len), **flags)
        if samples is None:
            count = lambda text: len(llm.tokenizer.encode(text))   # noqa: E731
            if a.task == "passkey":
                if a.depth is None:
                    raise SystemExit("--task passkey needs --depth")
                samples = passkey_mod.generate([length], [a.depth], a.trials, a.seed, count)
            else:
                samples = ruler_mod.generate(a.task, length, a.samples, a.seed, count, lambda b, p: b + p)
            for i in indices:
                prev = seen.get(i)
                if prev and prev["prompt_sha256"] != sha256(samples[i].prompt):
                    raise SystemExit(f"sample {i}: prompt differs from the one in {a.run} "
                                     "(check --samples, --seed, --model)")
        for i in indices:
            s, prev = samples[i], seen.get(i, {})
            t = time.time()
            out = llm.generate([s.prompt], SamplingParams(max_tokens=s.max_tokens, temperature=0),
                               use_tqdm=False)[0]
            print(json.dumps({"setting": setting, "index": i, "expected": s.expected,
                              "answer": out.text[:60], "run_answer": prev.get("answer", "")[:60],
                              "seconds": round(time.time() - t, 1)}), flush=True)
        del llm


if __name__ == "__main__":
    main()
