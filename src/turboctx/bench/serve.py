"""`turboctx bench serve`: a load generator for any OpenAI-compatible server.

N requests from C concurrent clients (streaming /v1/completions), each with a prompt of about
P tokens (random common words; exact counts come back in `usage`) and M output tokens.
Reports throughput, latency / TTFT / inter-token-latency percentiles, and checks that every request
was answered once. With --long-prompt-len L it measures one long prompt among streaming clients
instead (serve_long.py): whether a long prefill stalls everyone else, and what they cost it.
Loopback or any URL you point it at; nothing else is contacted.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.bench.serve_client import make_prompt, percentiles, stream_completion


async def run_bench(url: str, *, model: str | None = None, concurrency: int = 8, num_requests: int = 64,
                    prompt_len: int = 128, max_tokens: int = 32, long_prompt_len: int = 0,
                    api_key: str | None = None, ignore_eos: bool = True, seed: int = 0,
                    timeout_s: float = 600.0, baseline_s: float = 10.0, token_ids: bool = False,
                    progress=None) -> dict:
    import openai
    client = openai.AsyncOpenAI(base_url=url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1"),
                                api_key=api_key or "none", max_retries=0, timeout=timeout_s)
    if model is None:
        model = (await client.models.list()).data[0].id
    if long_prompt_len:
        from turboctx.bench.serve_long import run_long_prompt_bench
        try:
            return await asyncio.wait_for(run_long_prompt_bench(
                client, model, url=url, api_key=api_key, concurrency=concurrency,
                prompt_len=prompt_len, max_tokens=max_tokens, long_prompt_len=long_prompt_len,
                baseline_s=baseline_s, ignore_eos=ignore_eos, seed=seed, token_ids=token_ids,
                timeout_s=timeout_s, progress=progress), timeout_s)
        finally:
            await client.close()
    rng = random.Random(seed)
    prompts = [make_prompt(prompt_len, rng, token_ids) for _ in range(num_requests)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(num_requests):
        queue.put_nowait(i)
    results: dict[int, dict] = {}
    errors: list[str] = []

    async def worker():
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                results[i] = await stream_completion(client, model, prompts[i], max_tokens, ignore_eos)
            except Exception as e:      # count it, keep going
                errors.append(f"request {i}: {type(e).__name__}: {e}")

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    wall = time.perf_counter() - t0
    await client.close()
    return summarize(list(results.values()), errors, wall, num_requests, dict(
        url=url, model=model, concurrency=concurrency, num_requests=num_requests, prompt_len=prompt_len,
        max_tokens=max_tokens))


def summarize(rs: list[dict], errors: list[str], wall: float, expected: int, params: dict) -> dict:
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
    for e in res["error_samples"]:
        typer.echo(f"error: {e}", err=True)


def serve(url: Annotated[str, typer.Option(help="server base URL (with or without /v1)")] = "http://127.0.0.1:8000",
          served_model: Annotated[Optional[str], typer.Option("--served-model", help="model name on the server (default: the first of /v1/models)")] = None,
          concurrency: Annotated[int, typer.Option(min=1, help="concurrent clients")] = 8,
          num_requests: Annotated[int, typer.Option("--requests", min=1, help="requests in all")] = 64,
          prompt_len: Annotated[int, typer.Option(min=1, help="approximate prompt tokens (random words)")] = 128,
          max_tokens: Annotated[int, typer.Option(min=1, help="output tokens per request")] = 32,
          long_prompt_len: Annotated[int, typer.Option(help="measure one prompt this long among the clients, alone and beside them (0: none); --requests is then unused")] = 0,
          baseline_s: Annotated[float, typer.Option(min=1.0, help="with --long-prompt-len: seconds the clients stream before the long prompt")] = 10.0,
          plot: Annotated[Optional[Path], typer.Option(help="with --long-prompt-len: PNG of the short requests' ITL over time")] = None,
          token_ids: Annotated[bool, typer.Option("--token-ids", help="prompts of random token ids (models served without a tokenizer, e.g. random:<preset>)")] = False,
          api_key: Annotated[Optional[str], typer.Option(envvar="OPENAI_API_KEY")] = None,
          ignore_eos: Annotated[bool, typer.Option(help="ask for exactly max_tokens (vLLM-style extra)")] = True,
          prompt_seed: Annotated[int, typer.Option(help="seed of the random prompts")] = 0,
          timeout_s: Annotated[float, typer.Option(help="whole-run limit")] = 1800.0,
          json_path: Annotated[Optional[Path], typer.Option("--json", help="write the results here")] = None):
    """Throughput and latency percentiles of an OpenAI-compatible server at a given concurrency."""
    if plot and not long_prompt_len:
        raise typer.BadParameter("--plot needs --long-prompt-len", param_hint="--plot")
    res = asyncio.run(run_bench(url, model=served_model, concurrency=concurrency, num_requests=num_requests,
                                prompt_len=prompt_len, max_tokens=max_tokens, long_prompt_len=long_prompt_len,
                                api_key=api_key, ignore_eos=ignore_eos, seed=prompt_seed, timeout_s=timeout_s,
                                baseline_s=baseline_s, token_ids=token_ids,
                                progress=lambda line: typer.echo(line, err=True)))
    if long_prompt_len:
        from turboctx.bench.serve_long import plot_gaps, print_long_summary
        print_long_summary(res, typer.echo)
        for e in res["error_samples"]:
            typer.echo(f"error: {e}", err=True)
        if plot:
            plot_gaps(res, plot)
    else:
        print_summary(res)
    if json_path:
        json_path.write_text(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2))
    if res["errors"] or res["lost"] or res["duplicate_ids"]:
        raise typer.Exit(1)


bench_serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
bench_serve_app.command("serve")(serve)

if __name__ == "__main__":
    bench_serve_app()
