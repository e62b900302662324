"""Run samples against a target: samples.jsonl (append, resumable), summary.json, a table.

samples.jsonl, one line per sample: task, length (target tokens), depth, index,
prompt_tokens, prompt_sha256, prompt (with save_prompts), expected, answer, score (0..1, or
null with error when the target failed on it, e.g. a prompt over its limit: the summary counts
it as a miss, and a resumed run tries it again).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from turboctx.eval.common import Sample, sha256
from turboctx.eval.ruler.scoring import score_sample
from turboctx.eval.summary import print_table, summarize  # noqa: F401 (print_table: re-exported)
from turboctx.eval.targets import Target


def _key(rec: dict) -> str:
    d = "" if rec.get("depth") is None else f"{rec['depth']:.4f}"
    return f"{rec['task']}|{rec['length']}|{d}|{rec['index']}"


def load_done(path: Path) -> dict[str, dict]:
    """Finished records by sample key; a torn last line (killed run) is ignored."""
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[_key(rec)] = rec
    return done


def run_samples(samples: list[Sample], target: Target, out_dir: str | Path,
                save_prompts: bool = False, progress: bool = True,
                meta: dict | None = None, retry_errors: bool = True,
                not_built: dict[str, str] | None = None) -> dict:
    """Score every sample not already in out_dir/samples.jsonl; write summary.json; return it.
    not_built: what could not be built ({task or task@length: reason}), named in the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "samples.jsonl"
    done = load_done(path)
    todo = []
    for s in samples:
        rec = done.get(s.key)
        if rec is None or (retry_errors and rec.get("error")) or rec.get("prompt_sha256") != sha256(s.prompt):
            todo.append(s)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), unit="sample",
                   desc=getattr(target, "name", "eval"), dynamic_ncols=True)
    bs = max(1, getattr(target, "batch_size", 1))
    t0 = time.time()
    with path.open("a", encoding="utf-8") as f:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            f.write("\n")  # end a line torn by a killed run
        for i in range(0, len(todo), bs):
            chunk = todo[i:i + bs]
            groups: dict[int, list[Sample]] = defaultdict(list)
            for s in chunk:
                groups[s.max_tokens].append(s)
            for max_tokens, group in groups.items():
                answers = target.generate([s.prompt for s in group], max_tokens)
                for s, ans in zip(group, answers):
                    rec = _record(s, ans, save_prompts)
                    done[s.key] = rec
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    records = [done[s.key] for s in samples if s.key in done]
    summary = summarize(records, not_built)
    summary["meta"] = {**(meta or {}), "target": getattr(target, "name", None),
                       "elapsed_s": round(time.time() - t0, 2), "scored_now": len(todo)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _record(s: Sample, ans, save_prompts: bool) -> dict:
    rec = {"task": s.task, "length": s.length, "depth": s.depth, "index": s.index,
           "prompt_tokens": s.prompt_tokens, "prompt_sha256": sha256(s.prompt)}
    if save_prompts:
        rec["prompt"] = s.prompt
    rec["expected"] = s.expected
    if isinstance(ans, BaseException):
        rec.update(answer=None, score=None, error=f"{type(ans).__name__}: {ans}")
    else:
        rec.update(answer=ans, score=score_sample(ans, s.expected, s.metric))
    rec.update(s.extra)
    return rec
