"""Run samples against a target: samples.jsonl (append, resumable), summary.json, a table.

samples.jsonl, one line per sample: task, length (target tokens), depth, index,
prompt_tokens, prompt_sha256, prompt (with save_prompts), expected, answer, score (0..1, or
null with error when the target failed on it, e.g. a prompt over its limit).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from turboctx.eval.common import Sample, sha256
from turboctx.eval.ruler.scoring import score_sample
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
                meta: dict | None = None, retry_errors: bool = True) -> dict:
    """Score every sample not already in out_dir/samples.jsonl; write summary.json; return it."""
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
    summary = summarize(records)
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


def _mean(xs: list[float]) -> float | None:
    return round(100 * sum(xs) / len(xs), 2) if xs else None


def summarize(records: Iterable[dict]) -> dict:
    """Scores in percent: per task and length, per task, overall (mean of task means, as
    RULER averages tasks), and a depth x length grid per task when samples have depths."""
    by_tl: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    grid: dict[str, dict[str, dict[int, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    errors: dict[str, int] = defaultdict(int)
    for r in records:
        if r.get("score") is None:
            errors[r["task"]] += 1
            by_tl[r["task"]][r["length"]]  # keep the cell visible
            continue
        by_tl[r["task"]][r["length"]].append(r["score"])
        if r.get("depth") is not None:
            grid[r["task"]][f"{r['depth']:.4f}"][r["length"]].append(r["score"])
    tasks = {}
    for task, lens in by_tl.items():
        per_len = {str(L): {"score": _mean(v), "n": len(v)} for L, v in sorted(lens.items())}
        all_scores = [x for v in lens.values() for x in v]
        tasks[task] = {"score": _mean(all_scores), "n": len(all_scores), "errors": errors[task],
                       "by_length": per_len}
        if task in grid:
            tasks[task]["grid"] = {d: {str(L): _mean(v) for L, v in sorted(row.items())}
                                   for d, row in sorted(grid[task].items())}
    lengths = sorted({L for lens in by_tl.values() for L in lens})
    by_length = {}
    for L in lengths:
        ms = [_mean(by_tl[t][L]) for t in by_tl if by_tl[t].get(L)]
        by_length[str(L)] = round(sum(ms) / len(ms), 2) if ms else None
    task_means = [t["score"] for t in tasks.values() if t["score"] is not None]
    return {"tasks": tasks, "by_length": by_length,
            "overall": round(sum(task_means) / len(task_means), 2) if task_means else None,
            "errors": sum(errors.values())}


def print_table(summary: dict, title: str = "scores (%)") -> None:
    """Task rows x length columns, plus the per-length average (RULER's table shape)."""
    from rich.console import Console
    from rich.table import Table
    lengths = list(summary["by_length"])
    table = Table(title=title)
    table.add_column("task")
    for L in lengths:
        table.add_column(_fmt_len(int(L)), justify="right")
    table.add_column("all", justify="right")
    table.add_column("errors", justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    for task, t in summary["tasks"].items():
        table.add_row(task, *[fmt(t["by_length"].get(L, {}).get("score")) for L in lengths],
                      fmt(t["score"]), str(t["errors"]))
    if len(summary["tasks"]) > 1:
        table.add_row("average", *[fmt(summary["by_length"][L]) for L in lengths],
                      fmt(summary["overall"]), str(summary["errors"]))
    Console().print(table)


def _fmt_len(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)
