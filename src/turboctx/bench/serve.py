"""`turboctx bench serve`: a load generator for any OpenAI-compatible server.

N requests from C concurrent clients (streaming /v1/completions), each with a prompt of about
P tokens (random common words; exact counts come back in `usage`) and M output tokens.
Reports throughput, latency / TTFT / inter-token-latency percentiles, and checks that every request
was answered once. With --long-prompt-len L, one extra request with an L-token prompt is sent once
the short ones are flowing: the short requests' inter-token latency while it prefills shows whether
a long prefill stalls everyone else (it should not: chunked prefill interleaves with decodes).
Loopback or any URL you point it at; nothing else is contacted.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number "
         "night point home water room mother area money story fact month lot right study book eye job word "
         "business issue side kind head house service friend father power hour game line end member law car "
         "city community name president team minute idea kid body information back parent face others level "
         "office door health person art war history party result change morning reason research girl guy moment "
         "air teacher force education").split()


def make_prompt(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n_words)))


def percentiles(xs: list[float], ps=(50, 90, 99)) -> dict[str, float | None]:
    if not xs:
        return {f"p{p}": None for p in ps}
    s = sorted(xs)
    return {f"p{p}": s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))] for p in ps}   # nearest rank


async def _one(client, model: str, prompt: str, max_tokens: int, ignore_eos: bool) -> dict:
    t0 = time.perf_counter()
    times, text, usage, rid, finish = [], [], None, None, None
    extra = {"ignore_eos": True} if ignore_eos else None
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body=extra)
    async for ch in stream:
        rid = rid or ch.id
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            if c.text:
                times.append(time.perf_counter())
                text.append(c.text)
            finish = c.finish_reason or finish
    t1 = time.perf_counter()
    return {"id": rid, "start": t0, "end": t1, "token_times": times, "text": "".join(text),
            "finish_reason": finish,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else len(times)}


async def run_bench(url: str, *, model: str | None = None, concurrency: int = 8, num_requests: int = 64,
                    prompt_len: int = 128, max_tokens: int = 32, long_prompt_len: int = 0,
                    api_key: str | None = None, ignore_eos: bool = True, seed: int = 0,
                    timeout_s: float = 600.0) -> dict:
    import openai
    client = openai.AsyncOpenAI(base_url=url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1"),
                                api_key=api_key or "none", max_retries=0, timeout=timeout_s)
    if model is None:
        model = (await client.models.list()).data[0].id
    rng = random.Random(seed)
    prompts = [make_prompt(prompt_len, rng) for _ in range(num_requests)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(num_requests):
        queue.put_nowait(i)
    results: dict[int, dict] = {}
    errors: list[str] = []
    started = asyncio.Event()

    async def worker():
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                results[i] = await _one(client, model, prompts[i], max_tokens, ignore_eos)
                started.set()
            except Exception as e:      # count it, keep going
                errors.append(f"request {i}: {type(e).__name__}: {e}")

    long_result: dict = {}

    async def long_request():
        await started.wait()
        try:
            long_result.update(await _one(client, model, make_prompt(long_prompt_len, rng), 1, False))
        except Exception as e:
            errors.append(f"long request: {type(e).__name__}: {e}")

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    if long_prompt_len:
        tasks.append(asyncio.create_task(long_request()))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    wall = time.perf_counter() - t0
    await client.close()
    return summarize(list(results.values()), errors, wall, num_requests, long_result, dict(
        url=url, model=model, concurrency=concurrency, num_requests=num_requests, prompt_len=prompt_len,
        max_tokens=max_tokens, long_prompt_len=long_prompt_len))


def summarize(rs: list[dict], errors: list[str], wall: float, expected: int, long_r: dict, params: dict) -> dict:
    ids = [r["id"] for r in rs]
    ttft = [r["token_times"][0] - r["start"] for r in rs if r["token_times"]]
    itl = [b - a for r in rs for a, b in zip(r["token_times"], r["token_times"][1:])]
    out_tok = sum(r["completion_tokens"] or 0 for r in rs)
    in_tok = sum(r["prompt_tokens"] or 0 for r in rs)
    res = {**params, "answered": len(rs), "errors": len(errors), "error_samples": errors[:5],
           "lost": expected - len(rs) - len(errors), "duplicate_ids": len(ids) - len(set(ids)),
           "wall_s": wall, "requests_per_s": len(rs) / wall, "output_tokens_per_s": out_tok / wall,
           "total_tokens_per_s": (in_tok + out_tok) / wall, "mean_prompt_tokens": in_tok / max(len(rs), 1),
           "latency_s": percentiles([r["end"] - r["start"] for r in rs]), "ttft_s": percentiles(ttft),
           "itl_s": percentiles(itl)}
    if long_r:
        t_start, t_first = long_r["start"], (long_r["token_times"] or [long_r["end"]])[0]
        during = [b - a for r in rs for a, b in zip(r["token_times"], r["token_times"][1:])
                  if a < t_first and b > t_start]          # gaps that overlap the long prefill
        res["long_prompt"] = {"prompt_tokens": long_r.get("prompt_tokens"), "ttft_s": t_first - t_start,
                              "short_itl_during_prefill_s": percentiles(during), "n_gaps_during": len(during),
                              "max_short_itl_during_prefill_s": max(during, default=None)}
    return res


def print_summary(res: dict) -> None:
    def fmt(p):
        return "  ".join(f"{k} {v * 1e3:.0f} ms" if v is not None else f"{k} -" for k, v in p.items())
    typer.echo(f"{res['answered']}/{res['num_requests']} answered, {res['errors']} errors, {res['lost']} lost, "
               f"{res['duplicate_ids']} duplicate ids in {res['wall_s']:.1f} s "
               f"(concurrency {res['concurrency']}, ~{res['mean_prompt_tokens']:.0f} prompt tokens, "
               f"{res['max_tokens']} max output)")
    typer.echo(f"throughput: {res['requests_per_s']:.2f} req/s, {res['output_tokens_per_s']:.1f} output tok/s, "
               f"{res['total_tokens_per_s']:.1f} total tok/s")
    typer.echo(f"latency:  {fmt(res['latency_s'])}")
    typer.echo(f"TTFT:     {fmt(res['ttft_s'])}")
    typer.echo(f"ITL:      {fmt(res['itl_s'])}")
    if "long_prompt" in res:
        lp = res["long_prompt"]
        typer.echo(f"long prompt ({lp['prompt_tokens']} tokens): TTFT {lp['ttft_s']:.2f} s; short requests' ITL "
                   f"while it prefilled: {fmt(lp['short_itl_during_prefill_s'])} over {lp['n_gaps_during']} gaps")
    for e in res["error_samples"]:
        typer.echo(f"error: {e}", err=True)


def serve(url: Annotated[str, typer.Option(help="server base URL (with or without /v1)")] = "http://127.0.0.1:8000",
          served_model: Annotated[Optional[str], typer.Option("--served-model", help="model name on the server (default: the first of /v1/models)")] = None,
          concurrency: Annotated[int, typer.Option(min=1, help="concurrent clients")] = 8,
          num_requests: Annotated[int, typer.Option("--requests", min=1, help="requests in all")] = 64,
          prompt_len: Annotated[int, typer.Option(min=1, help="approximate prompt tokens (random words)")] = 128,
          max_tokens: Annotated[int, typer.Option(min=1, help="output tokens per request")] = 32,
          long_prompt_len: Annotated[int, typer.Option(help="also send one prompt this long (0: none)")] = 0,
          api_key: Annotated[Optional[str], typer.Option(envvar="OPENAI_API_KEY")] = None,
          ignore_eos: Annotated[bool, typer.Option(help="ask for exactly max_tokens (vLLM-style extra)")] = True,
          prompt_seed: Annotated[int, typer.Option(help="seed of the random prompts")] = 0,
          timeout_s: Annotated[float, typer.Option(help="whole-run limit")] = 1800.0,
          json_path: Annotated[Optional[Path], typer.Option("--json", help="write the results here")] = None):
    """Throughput and latency percentiles of an OpenAI-compatible server at a given concurrency."""
    res = asyncio.run(run_bench(url, model=served_model, concurrency=concurrency, num_requests=num_requests,
                                prompt_len=prompt_len, max_tokens=max_tokens, long_prompt_len=long_prompt_len,
                                api_key=api_key, ignore_eos=ignore_eos, seed=prompt_seed, timeout_s=timeout_s))
    print_summary(res)
    if json_path:
        json_path.write_text(json.dumps(res, indent=2))
    if res["errors"] or res["lost"] or res["duplicate_ids"]:
        raise typer.Exit(1)


bench_serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
bench_serve_app.command("serve")(serve)

if __name__ == "__main__":
    bench_serve_app()
