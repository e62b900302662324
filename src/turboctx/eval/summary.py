"""Scores of a run: per task and length, per task, per length and overall, and the table.

A sample the target failed on (an error: a prompt over its limit, a refused request) scores 0,
as a miss: leaving it out would score one right answer and one error as 100%, not 50%. The
errors are counted beside every score. A task (or a task at one length) that could not be
built has no samples, so it cannot score; the overall score says how many of the tasks asked
for it covers and names the ones not built, with why.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable


def not_built_key(task: str, length: int | None = None) -> str:
    """The key of a task not built: 'task' (at every length) or 'task@length'."""
    return task if length is None else f"{task}@{length}"


def _split_key(key: str) -> tuple[str, int | None]:
    task, _, length = key.partition("@")
    return task, (int(length) if length.isdigit() else None)


def _mean(xs: list[float]) -> float | None:
    return round(100 * sum(xs) / len(xs), 2) if xs else None


def format_length(n: int) -> str:
    """4096 -> '4K', 1048576 -> '1M', 1500 -> '1500'."""
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _short(reason: str, limit: int = 120) -> str:
    line = (reason.splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def summarize(records: Iterable[dict], not_built: dict[str, str] | None = None) -> dict:
    """Scores in percent: per task and length, per task, per length (mean of the task scores
    there) and overall (mean of task means, as RULER averages tasks), errors counted as misses;
    a depth x length grid per task when samples have depths.

    not_built: {not_built_key(task[, length]): reason} for what could not be built; it is kept
    in the summary and in `overall_text`, e.g. "71.2 over 11 of 13 tasks; not built: cwe (...)".
    """
    not_built = dict(not_built or {})
    by_tl: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    errs_tl: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    grid: dict[str, dict[str, dict[int, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        failed = r.get("score") is None
        score = 0.0 if failed else float(r["score"])
        by_tl[r["task"]][r["length"]].append(score)
        errs_tl[r["task"]][r["length"]] += failed
        if r.get("depth") is not None:
            grid[r["task"]][f"{r['depth']:.4f}"][r["length"]].append(score)
    tasks = {}
    for task, lens in by_tl.items():
        per_len = {str(L): {"score": _mean(v), "n": len(v), "errors": errs_tl[task][L]}
                   for L, v in sorted(lens.items())}
        all_scores = [x for v in lens.values() for x in v]
        tasks[task] = {"score": _mean(all_scores), "n": len(all_scores),
                       "errors": sum(errs_tl[task].values()), "by_length": per_len}
        if task in grid:
            tasks[task]["grid"] = {d: {str(L): _mean(v) for L, v in sorted(row.items())}
                                   for d, row in sorted(grid[task].items())}
    asked = list(tasks) + sorted({_split_key(k)[0] for k in not_built} - set(tasks))
    lengths = sorted({L for lens in by_tl.values() for L in lens}
                     | {L for k in not_built if (L := _split_key(k)[1]) is not None})
    by_length, by_length_tasks = {}, {}
    for L in lengths:
        ms = [_mean(by_tl[t][L]) for t in by_tl if by_tl[t].get(L)]
        by_length[str(L)] = round(sum(ms) / len(ms), 2) if ms else None
        by_length_tasks[str(L)] = len(ms)
    task_means = [t["score"] for t in tasks.values() if t["score"] is not None]
    overall = round(sum(task_means) / len(task_means), 2) if task_means else None
    errors = sum(t["errors"] for t in tasks.values())
    return {"tasks": tasks, "by_length": by_length, "by_length_tasks": by_length_tasks,
            "overall": overall, "overall_tasks": len(task_means), "tasks_asked": len(asked),
            "errors": errors, "not_built": not_built,
            "overall_text": overall_text(overall, len(task_means), len(asked), errors, not_built)}


def overall_text(overall: float | None, covered: int, asked: int, errors: int,
                 not_built: dict[str, str]) -> str:
    """'71.2 over 11 of 13 tasks; 3 errors counted as misses; not built: qa_1 (...), cwe at 1M (...)'."""
    score = "no score" if overall is None else f"{overall:.1f}"
    parts = [f"{score} over {covered} of {asked} task{'s' if asked != 1 else ''}"]
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''} counted as misses")
    if not_built:
        shown = []
        for key, why in not_built.items():
            task, length = _split_key(key)
            where = task if length is None else f"{task} at {format_length(length)}"
            shown.append(f"{where} ({_short(why)})")
        parts.append("not built: " + ", ".join(shown))
    return "; ".join(parts)


def print_table(summary: dict, title: str = "scores (%)") -> None:
    """Task rows x length columns, plus the per-length average (RULER's table shape), the errors
    (counted as misses) and the overall line with its coverage."""
    from rich.console import Console
    from rich.table import Table
    lengths = list(summary["by_length"])
    table = Table(title=title)
    table.add_column("task")
    for L in lengths:
        table.add_column(format_length(int(L)), justify="right")
    table.add_column("all", justify="right")
    table.add_column("errors", justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for task, t in summary["tasks"].items():
        table.add_row(task, *[fmt(t["by_length"].get(L, {}).get("score")) for L in lengths],
                      fmt(t["score"]), str(t["errors"]))
    if len(summary["tasks"]) > 1:
        table.add_row("average", *[fmt(summary["by_length"][L]) for L in lengths],
                      fmt(summary["overall"]), str(summary["errors"]))
    console = Console()
    console.print(table)
    console.print(f"overall {summary['overall_text']}", markup=False, highlight=False)
