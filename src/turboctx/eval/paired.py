"""Paired comparison of two runs on the same prompts (sparse against dense, say).

Two runs that scored the same samples (same key and prompt_sha256 in their samples.jsonl) differ
only where their answers differ, so the question "is B within x points of A?" is answered by the
per-sample differences d_i = score_B - score_A, not by two independent percentages:
  - diff: mean(d) in points (100 * score);
  - ci95: mean(d) +- 1.96 * se, se from the variance of d with half a pseudo-pair added each
    way (+1 and -1, weight 1/2 each; Agresti & Min 2005 do the same to the 2x2 table), so that a
    run with no discordant pair still gets an interval that shrinks with n instead of +-0;
  - a_better / b_better: samples where one scored higher; sign_p: exact two-sided sign test
    over them;
  - within(margin): the whole ci95 inside +-margin points: B is shown to be within the margin.
Several run pairs (lengths run separately, seeds, sessions) pool by concatenating their pairs.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from turboctx.eval.runner import load_done


@dataclass
class PairedStats:
    n: int
    score_a: float            # points
    score_b: float
    diff: float               # score_b - score_a, points
    ci_lo: float
    ci_hi: float
    a_better: int
    b_better: int
    sign_p: float
    same_answer: int          # pairs with identical answer text

    def within(self, margin: float) -> bool:
        return -margin <= self.ci_lo and self.ci_hi <= margin

    def as_dict(self) -> dict:
        return asdict(self)


def sign_test_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n at p = 1/2 (1.0 when n = 0)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_stats(pairs: list[tuple[dict, dict]]) -> PairedStats:
    """pairs: (record of run A, record of run B) of the same sample, both scored."""
    if not pairs:
        raise ValueError("no sample was scored by both runs: nothing to compare")
    n = len(pairs)
    a = [float(x["score"]) for x, _ in pairs]
    b = [float(y["score"]) for _, y in pairs]
    d = [y - x for x, y in zip(a, b)]
    n_adj = n + 1                                   # + half a pseudo-pair at +1 and at -1
    mean_adj = sum(d) / n_adj
    var = max(0.0, (sum(x * x for x in d) + 1.0) / n_adj - mean_adj ** 2)
    se = math.sqrt(var / n_adj)
    diff = sum(d) / n
    up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return PairedStats(
        n=n, score_a=100 * sum(a) / n, score_b=100 * sum(b) / n, diff=100 * diff,
        ci_lo=100 * (diff - 1.96 * se), ci_hi=100 * (diff + 1.96 * se),
        a_better=down, b_better=up, sign_p=sign_test_p(up, up + down),
        same_answer=sum(x.get("answer") == y.get("answer") for x, y in pairs))


def pair_runs(dir_a: Path, dir_b: Path) -> tuple[list[tuple[dict, dict]], int]:
    """Scored samples present in both runs with the same prompt -> (pairs, samples left out)."""
    ra, rb = load_done(Path(dir_a) / "samples.jsonl"), load_done(Path(dir_b) / "samples.jsonl")
    for d, r in ((dir_a, ra), (dir_b, rb)):
        if not r:
            raise FileNotFoundError(f"{d}: no samples.jsonl with scored samples (a `turboctx eval` "
                                    "output directory is expected)")
    pairs, left = [], 0
    for key in sorted(set(ra) | set(rb)):
        x, y = ra.get(key), rb.get(key)
        if (x is None or y is None or x.get("prompt_sha256") != y.get("prompt_sha256")
                or x.get("score") is None or y.get("score") is None):
            left += 1
            continue
        pairs.append((x, y))
    return pairs, left


def compare_paired(run_pairs: list[tuple[Path, Path]], margin: float = 2.0) -> dict:
    """Pool the pairs of every (A, B) run pair: stats per (task, length), per task and overall,
    each with `within`: B shown within `margin` points of A."""
    by_prompt, left = {}, 0
    for da, db in run_pairs:          # a prompt in several run pairs counts once (the last)
        p, n_left = pair_runs(da, db)
        left += n_left
        for x, y in p:
            key = (x["task"], x["length"], x.get("depth"), x["index"], x["prompt_sha256"])
            left += key in by_prompt
            by_prompt[key] = (x, y)
    pooled = list(by_prompt.values())
    cells: dict[tuple[str, int | str], list] = defaultdict(list)
    for x, y in pooled:
        cells[(x["task"], x["length"])].append((x, y))
    for task in {t for t, _ in cells}:                  # a task run at several lengths: pooled too
        if sum(t == task for t, _ in cells) > 1:
            cells[(task, "all")] = [p for (t, _), ps in list(cells.items()) if t == task for p in ps]
    order = lambda kv: (kv[0][0], kv[0][1] == "all", kv[0][1] if kv[0][1] != "all" else 0)  # noqa: E731
    def row(task, length, pairs) -> dict:
        st = paired_stats(pairs)
        return {"task": task, "length": length, **st.as_dict(), "within": st.within(margin)}

    rows = [row(t, L, p) for (t, L), p in sorted(cells.items(), key=order)]
    if len({x["task"] for x, _ in pooled}) > 1:
        rows.append(row("all", "all", pooled))
    return {"rows": rows, "left_out": left, "margin": margin,
            "runs": [[str(a), str(b)] for a, b in run_pairs]}
