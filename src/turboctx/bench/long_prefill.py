"""One long prompt among streaming clients, in-process: the engine's own step loop, no HTTP (the
server-side twin of `turboctx bench serve --long-prompt-len`). The long prompt's TTFT alone (after
`warm_runs` runs of a `warm_len`-token prompt, the long one's length unless given, that warm
kernels, threads and caches; with `alone_after`, the mean of that run and one after the rest,
so that a drift of the machine's speed cancels) and beside C clients that stream short prompts
back to back (staggered arrivals); the clients' ITL without it and while it prefills; the
slowest steps of the span with what the step cost model predicted for them.
"""
from __future__ import annotations

import random
import time

from turboctx.engine.sampling_params import SamplingParams


def _ms_percentiles(xs: list[float], ps=(50, 90, 99, 100)) -> dict[str, float | None]:
    xs = sorted(xs)
    return {f"p{p}": (round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1e3, 2) if xs else None)
            for p in ps}


def long_prompt_among_clients(engine, long_len: int, *, clients: int = 8, prompt_len: int = 64,
                              max_tokens: int = 128, baseline_s: float = 8.0, warm_runs: int = 1,
                              warm_len: int | None = None, alone_after: bool = False,
                              seed: int = 0) -> dict:
    rng = random.Random(seed)
    vocab = engine.architecture.vocab_size

    def request(n: int, out: int):
        ids = [rng.randrange(min(1000, vocab // 2), min(30000, vocab)) for _ in range(n)]
        return engine.make_request(ids, SamplingParams(max_tokens=out, ignore_eos=True))

    def alone(n: int = long_len) -> float:
        r, t = request(n, 1), time.perf_counter()
        engine.add_request(r)
        while engine.has_unfinished():
            engine.step()
        return time.perf_counter() - t
    for _ in range(warm_runs):
        alone(warm_len or long_len)
    t_alone = alone()

    steps, observe = [], engine.scheduler.observe_step

    def logged(chunks, seconds):
        steps.append((time.perf_counter(), engine.scheduler.predicted_seconds(chunks), seconds,
                      [(c.num_tokens, c.units) for c in chunks if c.num_tokens > 1]))
        observe(chunks, seconds)
    engine.scheduler.observe_step = logged
    times: dict[str, list[float]] = {}
    streaming: dict[str, object] = {}

    def step():
        outs, now = engine.step(), time.perf_counter()
        for o in outs:
            times.setdefault(o.request_id, []).append(now)
        for rid, r in list(streaming.items()):
            if r.finished:                      # a client sends its next request at once
                del streaming[rid]
                new = request(prompt_len, max_tokens)
                engine.add_request(new)
                streaming[new.request_id] = new
    try:
        for _ in range(clients):                # staggered arrivals, as independent users
            r = request(prompt_len, max_tokens)
            engine.add_request(r)
            streaming[r.request_id] = r
            for _ in range(max(1, max_tokens // clients)):
                step()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < baseline_s:
            step()
        long, l0 = request(long_len, 1), time.perf_counter()
        engine.add_request(long)
        while not long.finished:
            step()
        l1 = time.perf_counter()
    finally:
        engine.scheduler.observe_step = observe
        for rid in list(engine.requests):
            engine.abort_request(rid)
    alone_runs = [t_alone] + ([alone()] if alone_after else [])
    t_alone = sum(alone_runs) / len(alone_runs)
    gaps = [(a, b) for ts in times.values() for a, b in zip(ts, ts[1:])]
    without = [b - a for a, b in gaps if a >= t0 and b <= l0]
    during = [b - a for a, b in gaps if a < l1 and b > l0]
    span = [s for s in steps if l0 <= s[0] <= l1]
    res = dict(long_prompt_tokens=long_len, clients=clients, prompt_len=prompt_len,
               max_tokens=max_tokens, ttft_alone_s=round(t_alone, 3),
               ttft_alone_runs_s=[round(t, 3) for t in alone_runs],
               ttft_beside_s=round(l1 - l0, 3), ttft_ratio=round((l1 - l0) / t_alone, 3),
               itl_without_ms=_ms_percentiles(without), itl_during_ms=_ms_percentiles(during),
               n_gaps_without=len(without), n_gaps_during=len(during), steps_during=len(span),
               slowest_steps=[dict(predicted_ms=p and round(p * 1e3, 1), ms=round(s * 1e3, 1),
                                   prefill=str(c))
                              for _, p, s, c in sorted(span, key=lambda s: -s[2])[:8]])
    w, d = res["itl_without_ms"]["p99"], res["itl_during_ms"]["p99"]
    res["itl_p99_ratio"] = round(d / w, 3) if w and d else None
    return res
