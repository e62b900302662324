"""Compare runs of the same samples on several targets: score per (task, length) for each, and
how many samples got a different answer than the reference target's.

Layout read: OUT/<target>/<bench>/samples.jsonl (what eval_suite.py writes). Only samples
listed in OUT/manifest.json (key -> prompt_sha256) count when it exists, so records left by an
earlier configuration in a resumed directory are ignored.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from turboctx.eval.runner import load_done

BENCHES = ("passkey", "niah", "ruler")


def load_manifest(out: Path) -> dict[str, dict[str, str]] | None:
    p = out / "manifest.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def load_records(out: Path, target: str, bench: str,
                 manifest: dict[str, dict[str, str]] | None) -> dict[str, dict]:
    recs = load_done(out / target / bench / "samples.jsonl")
    if manifest is None or bench not in manifest:
        return recs
    want = manifest[bench]
    return {k: r for k, r in recs.items() if want.get(k) == r.get("prompt_sha256")}


def _pct(xs: list[float]) -> float | None:
    return round(100 * sum(xs) / len(xs), 2) if xs else None


def compare_bench(by_target: dict[str, dict[str, dict]], reference: str) -> list[dict]:
    """Rows per (task, length): n, per-target score (errors count as misses) and errors, answers
    differing from the reference's."""
    cells: dict[tuple[str, int], set[str]] = defaultdict(set)
    for recs in by_target.values():
        for k, r in recs.items():
            cells[(r["task"], r["length"])].add(k)
    ref = by_target.get(reference, {})
    rows = []
    for (task, length), keys in sorted(cells.items()):
        row = {"task": task, "length": length, "n": len(keys), "scores": {}, "errors": {},
               "differ": {}, "compared": {}}
        for t, recs in by_target.items():
            got = [recs[k] for k in keys if k in recs]
            # an error (no score) is a miss, as in the run's own summary
            row["scores"][t] = _pct([r.get("score") or 0.0 for r in got])
            row["errors"][t] = sum(1 for r in got if r.get("score") is None)
            if t == reference:
                continue
            both = [k for k in keys if k in recs and k in ref
                    and recs[k].get("answer") is not None and ref[k].get("answer") is not None]
            row["compared"][t] = len(both)
            row["differ"][t] = sum(1 for k in both if recs[k]["answer"] != ref[k]["answer"])
        rows.append(row)
    return rows


def compare_runs(out: str | Path, targets: list[str], reference: str = "engine",
                 benches: tuple[str, ...] = BENCHES) -> dict:
    """compare.json's content: rows per bench, and totals per target against the reference."""
    out = Path(out)
    manifest = load_manifest(out)
    result: dict = {"reference": reference, "targets": targets, "benches": {}, "totals": {}}
    for bench in benches:
        by_target = {t: load_records(out, t, bench, manifest) for t in targets}
        if not any(by_target.values()):
            continue
        result["benches"][bench] = compare_bench(by_target, reference)
    for t in targets:
        if t == reference:
            continue
        rows = [r for rows in result["benches"].values() for r in rows]
        result["totals"][t] = {"compared": sum(r["compared"].get(t, 0) for r in rows),
                               "differ": sum(r["differ"].get(t, 0) for r in rows),
                               "cells_score_equal": sum(r["scores"].get(t) == r["scores"].get(reference)
                                                        for r in rows),
                               "cells": len(rows)}
    return result


def bench_scores(rows: list[dict], target: str) -> dict[str, float | None]:
    """Mean over tasks of the task score, per length (RULER's average row)."""
    by_len: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        s = r["scores"].get(target)
        if s is not None:
            by_len[r["length"]].append(s)
    return {str(L): round(sum(v) / len(v), 2) for L, v in sorted(by_len.items())}


def grid(out: Path, target: str, bench: str) -> dict[str, dict[str, float | None]]:
    """depth -> length -> score (%), from the target's summary.json (passkey, niah)."""
    p = out / target / bench / "summary.json"
    if not p.exists():
        return {}
    tasks = json.loads(p.read_text(encoding="utf-8")).get("tasks", {})
    return next((t["grid"] for t in tasks.values() if "grid" in t), {})


def manifest_entry(samples) -> dict[str, str]:
    from turboctx.eval.common import sha256
    return {s.key: sha256(s.prompt) for s in samples}

