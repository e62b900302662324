"""`turboctx bench serve --long-prompt-len L`: one long prompt among streaming clients.

Three phases against one server: (1) the long prompt alone, twice with other words (the first
warms the server's kernels for these shapes; the second is its TTFT alone); (2) C clients
streaming short requests back to back for `baseline_s` seconds (their ITL and TTFT without it);
(3) the same clients go on while a second long prompt (other random words, so the prefix cache
cannot serve it) prefills, until its first token (their ITL and TTFT during it, and its TTFT
beside them). JSON, and optionally a PNG of every short inter-token gap over time with the long
prefill's span marked. The long prompt goes out as a body serialized beforehand, from a thread,
so that sending it does not stall the streams being timed.
"""
from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from turboctx.bench.serve_client import (completion_body, make_prompt, percentiles, post_completion,
                                         stream_completion)


async def run_long_prompt_bench(client, model: str, *, url: str, api_key: str | None,
                                concurrency: int, prompt_len: int, max_tokens: int,
                                long_prompt_len: int, baseline_s: float, ignore_eos: bool, seed: int,
                                token_ids: bool = False, timeout_s: float = 1800.0,
                                progress=None) -> dict:
    """`progress(line)`, when given, hears each phase as it ends (with seconds since the start)."""
    t_start = time.perf_counter()

    def note(what: str) -> None:
        if progress:
            progress(f"[{time.perf_counter() - t_start:7.1f} s] {what}")
    rng = random.Random(seed)
    errors: list[str] = []
    cold_body, alone_body, beside_body = (completion_body(model, make_prompt(long_prompt_len, rng, token_ids))
                                          for _ in range(3))
    note(f"three {long_prompt_len}-token prompts prepared")

    async def long(body: bytes) -> dict:
        return await post_completion(url, api_key, body, timeout_s)
    cold = await long(cold_body)
    note(f"long prompt, cold: {cold['end'] - cold['start']:.2f} s")
    alone = await long(alone_body)
    note(f"long prompt alone: {alone['end'] - alone['start']:.2f} s")
    results: list[dict] = []
    issued = [0]
    stop = asyncio.Event()

    async def worker(k: int):
        wrng = random.Random(seed * 1000 + k + 1)
        while not stop.is_set():
            issued[0] += 1
            try:
                results.append(await stream_completion(client, model, make_prompt(prompt_len, wrng, token_ids),
                                          max_tokens, ignore_eos))
            except Exception as e:          # count it, keep going
                errors.append(f"short request: {type(e).__name__}: {e}")

    workers = []
    for k in range(concurrency):            # staggered starts, as independent users arrive
        workers.append(asyncio.create_task(worker(k)))
        await asyncio.sleep(0.05)
    base_start = time.perf_counter()
    await asyncio.sleep(baseline_s)
    note(f"{concurrency} clients streamed {baseline_s:g} s; the long prompt goes out")
    try:
        beside = await long(beside_body)
    except Exception as e:
        errors.append(f"long request: {type(e).__name__}: {e}")
        beside = None
    note("long prompt beside the clients: " + (f"{beside['end'] - beside['start']:.2f} s" if beside else "failed"))
    stop.set()
    await asyncio.gather(*workers)
    note("clients done")
    res = summarize_long(results, errors, issued[0], alone, beside, base_start, dict(
        model=model, concurrency=concurrency, prompt_len=prompt_len, max_tokens=max_tokens,
        long_prompt_len=long_prompt_len, baseline_s=baseline_s))
    res["long_ttft_first_s"] = (cold["token_times"] or [cold["end"]])[0] - cold["start"]
    return res


def _gaps(rs: list[dict]) -> list[tuple[float, float]]:
    """(start, end) of every inter-token gap of the short requests."""
    return [(a, b) for r in rs for a, b in zip(r["token_times"], r["token_times"][1:])]


def summarize_long(rs: list[dict], errors: list[str], issued: int, alone: dict, beside: dict | None,
                   base_start: float, params: dict) -> dict:
    long_start = beside["start"] if beside else float("inf")
    long_first = (beside["token_times"] or [beside["end"]])[0] if beside else float("inf")
    gaps = _gaps(rs)
    without = [b - a for a, b in gaps if a >= base_start + 1.0 and b <= long_start]
    during = [b - a for a, b in gaps if a < long_first and b > long_start]
    ttft_without = [r["token_times"][0] - r["start"] for r in rs
                    if r["token_times"] and r["start"] >= base_start and r["token_times"][0] <= long_start]
    ttft_during = [r["token_times"][0] - r["start"] for r in rs
                   if r["token_times"] and r["start"] < long_first and r["token_times"][0] > long_start]
    t_alone = (alone["token_times"] or [alone["end"]])[0] - alone["start"]
    ids = [r["id"] for r in rs]
    res = {**params, "answered": len(rs), "issued": issued, "errors": len(errors),
           "error_samples": errors[:5], "lost": issued - len(rs) - len(errors),
           "duplicate_ids": len(ids) - len(set(ids)),
           "short_itl_without_s": percentiles(without), "short_itl_during_s": percentiles(during),
           "max_short_itl_during_s": max(during, default=None),
           "n_gaps_without": len(without), "n_gaps_during": len(during),
           "short_ttft_without_s": percentiles(ttft_without),
           "short_ttft_during_s": percentiles(ttft_during),
           "long_prompt_tokens": beside.get("prompt_tokens") if beside else None,
           "long_ttft_alone_s": t_alone,
           "long_ttft_beside_s": long_first - long_start if beside else None}
    if beside:
        res["long_ttft_ratio"] = res["long_ttft_beside_s"] / t_alone
        w, d = res["short_itl_without_s"]["p99"], res["short_itl_during_s"]["p99"]
        res["short_itl_p99_ratio"] = d / w if w and d else None
    res["_gaps"] = [(a - base_start, b - a) for a, b in gaps]        # for the plot; not in JSON
    res["_span"] = (long_start - base_start, long_first - base_start)
    return res


def print_long_summary(res: dict, echo) -> None:
    def fmt(p):
        return "  ".join(f"{k} {v * 1e3:.1f} ms" if v is not None else f"{k} -" for k, v in p.items())
    echo(f"{res['answered']}/{res['issued']} short requests answered, {res['errors']} errors, "
         f"{res['lost']} lost, {res['duplicate_ids']} duplicate ids (concurrency "
         f"{res['concurrency']}, {res['prompt_len']}-word prompts, {res['max_tokens']} tokens)")
    echo(f"long prompt ({res['long_prompt_tokens']} tokens): TTFT alone {res['long_ttft_alone_s']:.2f} s "
         f"(the first, cold: {res.get('long_ttft_first_s', float('nan')):.2f} s), "
         f"beside the clients {res['long_ttft_beside_s'] or float('nan'):.2f} s "
         f"({res.get('long_ttft_ratio') or float('nan'):.3f}x)")
    echo(f"short ITL without it:    {fmt(res['short_itl_without_s'])} ({res['n_gaps_without']} gaps)")
    echo(f"short ITL while it ran:  {fmt(res['short_itl_during_s'])} ({res['n_gaps_during']} gaps)")
    echo(f"short TTFT without / during: {fmt(res['short_ttft_without_s'])} / "
         f"{fmt(res['short_ttft_during_s'])}")


def plot_gaps(res: dict, path: Path) -> None:
    """Every short inter-token gap at the time it ended; the long prefill's span shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = [t + g for t, g in res["_gaps"]]
    ax.scatter(xs, [g * 1e3 for _, g in res["_gaps"]], s=3, alpha=0.5, label="short requests' ITL")
    lo, hi = res["_span"]
    ax.axvspan(lo, hi, color="orange", alpha=0.2,
               label=f"long prefill ({res['long_prompt_tokens']} tokens)")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the clients started")
    ax.set_ylabel("inter-token latency (ms)")
    ax.set_title(f"{res['model']}: {res['concurrency']} streaming clients and one long prompt")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
