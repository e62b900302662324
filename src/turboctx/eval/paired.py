"""Paired comparison of two runs on the same prompts (sparse against dense, say).

Two runs that scored the same samples (same key and prompt_sha256 in their samples.jsonl) differ
only where their answers differ, so the question "is B within x points of A?" is answered by the
per-sample differences d_i = score_B - score_A, not by two independent percentages:
  - diff: mean(d) in points (100 * score);
  - ci95: mean(d) +- q * se, with se the larger of two:
      - from the variance of d with half a pseudo-pair added each way (+1 and -1, weight 1/2
        each; Agresti & Min 2005 do the same to the 2x2 table), so that a run with no discordant
        pair still gets an interval that shrinks with n instead of +-0;
      - cluster-robust (CR1, Liang & Zeger 1986): prompts that share a task, length and needle
        depth share their haystack and needle position (passkey's filler is fixed; RULER's essay
        haystack is the same text, its depths come from a grid of 40) and differ only in the key,
        so their flips are not independent: the clusters, not the prompts, are the samples.
    q is 1.96 when every prompt is its own cluster, else Student's t at G - 1 degrees of freedom
    for G clusters (few clusters: a wider interval);
  - a_better / b_better: samples where one scored higher; sign_p: exact two-sided sign test
    over them;
  - within(margin): the whole ci95 inside +-margin points: B is shown to be within the margin.
Several run pairs (lengths run separately, seeds, separate runs) pool by concatenating their pairs.
"""
from __future__ import annotations

import glob
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
    clusters: int             # independent units: prompts sharing (task, length, depth) are one
    iid_ci_lo: float          # the interval as if every prompt were independent (for reference)
    iid_ci_hi: float

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


def t_quantile_975(dof: int) -> float:
    """Student's t 0.975 quantile: exact for 1 and 2 degrees of freedom, else the Cornish-Fisher
    expansion in 1/dof (Abramowitz & Stegun 26.7.5; within 0.004 at 3, 1e-6 from 19 on)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    if dof == 1:
        return math.tan(math.pi * 0.475)
    if dof == 2:
        return 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
    z = 1.959963984540054
    g = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
         (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
         (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(gi / dof ** (i + 1) for i, gi in enumerate(g))


def cluster_of(rec: dict) -> tuple:
    """Prompts with one (task, length, depth) share haystack and needle position; a prompt
    without a single needle depth (several needles, or none recorded) is a cluster of its own."""
    if rec.get("depth") is None:
        return (rec["task"], rec["length"], None, rec["index"], rec.get("prompt_sha256"))
    return (rec["task"], rec["length"], round(float(rec["depth"]), 6))


def paired_stats(pairs: list[tuple[dict, dict]]) -> PairedStats:
    """pairs: (record of run A, record of run B) of the same sample, both scored."""
    if not pairs:
        raise ValueError("no sample was scored by both runs: nothing to compare")
    n = len(pairs)
    a = [float(x["score"]) for x, _ in pairs]
    b = [float(y["score"]) for _, y in pairs]
    d = [y - x for x, y in zip(a, b)]
    diff = sum(d) / n
    n_adj = n + 1                                   # + half a pseudo-pair at +1 and at -1
    mean_adj = sum(d) / n_adj
    var = max(0.0, (sum(x * x for x in d) + 1.0) / n_adj - mean_adj ** 2)
    se_iid = math.sqrt(var / n_adj)
    groups: dict[tuple, float] = defaultdict(float)  # cluster -> sum of (d_i - mean)
    for (x, _), di in zip(pairs, d):
        groups[cluster_of(x)] += di - diff
    g = len(groups)
    se_cr = math.sqrt(g / (g - 1) * sum(v * v for v in groups.values())) / n if g > 1 else math.inf
    se, q = max(se_iid, se_cr), (1.96 if g == n else t_quantile_975(max(g - 1, 1)))
    up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return PairedStats(
        n=n, score_a=100 * sum(a) / n, score_b=100 * sum(b) / n, diff=100 * diff,
        ci_lo=100 * (diff - q * se), ci_hi=100 * (diff + q * se),
        a_better=down, b_better=up, sign_p=sign_test_p(up, up + down),
        same_answer=sum(x.get("answer") == y.get("answer") for x, y in pairs),
        clusters=g, iid_ci_lo=100 * (diff - 1.96 * se_iid), iid_ci_hi=100 * (diff + 1.96 * se_iid))


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


def expand_run_pairs(a: list[str], b: list[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """--a / --b as given, in pairs; or one glob each ('runs/seed*/ruler_dense' against
    'runs2/seed*/ruler_sparse'), whose matches pair up by their parent folder's name (seed7 with
    seed7) -> (run pairs, the matches left without a partner, to be reported)."""
    if len(a) == 1 and len(b) == 1 and any(c in a[0] + b[0] for c in "*?["):
        ma, mb = ({Path(x).parent.name: Path(x) for x in sorted(glob.glob(pat))} for pat in (a[0], b[0]))
        for pat, m in ((a[0], ma), (b[0], mb)):
            if not m:
                raise ValueError(f"{pat!r} matches no run directory")
        both = sorted(set(ma) & set(mb))
        if not both:
            raise ValueError(f"no folder name in common between {a[0]!r} and {b[0]!r}: glob matches "
                             "pair by their parent folder (e.g. seed7 in both)")
        alone = [str(m[k]) for m in (ma, mb) for k in sorted(set(m) - set(both))]
        return [(ma[k], mb[k]) for k in both], alone
    if len(a) != len(b):
        raise ValueError(f"{len(a)} --a but {len(b)} --b; give them in pairs (--a DENSE --b SPARSE "
                         "per run), or one glob each")
    return [(Path(x), Path(y)) for x, y in zip(a, b)], []


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
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)   # JSON: no Infinity
             for k, v in st.as_dict().items()}                                  # (one cluster: None)
        return {"task": task, "length": length, **d, "within": st.within(margin)}

    rows = [row(t, L, p) for (t, L), p in sorted(cells.items(), key=order)]
    if len({x["task"] for x, _ in pooled}) > 1:
        rows.append(row("all", "all", pooled))
    return {"rows": rows, "left_out": left, "margin": margin,
            "runs": [[str(a), str(b)] for a, b in run_pairs]}
