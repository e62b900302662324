"""What the serve benchmarks send and time: random prompts, one streaming completion with the
arrival time of each token, one long prompt's completion, and nearest-rank percentiles."""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
import urllib.request

WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number "
         "night point home water room mother area money story fact month lot right study book eye job word "
         "business issue side kind head house service friend father power hour game line end member law car "
         "city community name president team minute idea kid body information back parent face others level "
         "office door health person art war history party result change morning reason research girl guy moment "
         "air teacher force education").split()


def make_prompt(n_words: int, rng: random.Random, token_ids: bool = False) -> str | list[int]:
    """n random common words, or (token_ids) n random token ids in [1000, 30000): for models
    served without a tokenizer (random:<preset>), where the count is then exact."""
    if token_ids:
        return [rng.randrange(1000, 30000) for _ in range(max(1, n_words))]
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n_words)))


def percentiles(xs: list[float], ps=(50, 90, 99)) -> dict[str, float | None]:
    if not xs:
        return {f"p{p}": None for p in ps}
    s = sorted(xs)
    return {f"p{p}": s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))] for p in ps}   # nearest rank


async def stream_completion(client, model: str, prompt: str | list[int], max_tokens: int, ignore_eos: bool) -> dict:
    """One streaming completion. A token-id prompt asks for logprobs too, so that each token
    arrives in a chunk of its own even where its text is empty (a model without a tokenizer)."""
    t0 = time.perf_counter()
    times, text, usage, rid, finish = [], [], None, None, None
    extra = {"ignore_eos": True} if ignore_eos else None
    lp = {"logprobs": 0} if isinstance(prompt, list) else {}
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body=extra, **lp)
    async for ch in stream:
        rid = rid or ch.id
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            if c.text or (lp and c.logprobs and c.logprobs.tokens):
                times.append(time.perf_counter())
                text.append(c.text)
            finish = c.finish_reason or finish
    t1 = time.perf_counter()
    return {"id": rid, "start": t0, "end": t1, "token_times": times, "text": "".join(text),
            "finish_reason": finish,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else len(times)}


def completion_body(model: str, prompt: str | list[int]) -> bytes:
    """The JSON body of a one-token completion, serialized once, ahead of time: the openai
    client spends ~1 s of its event loop turning a 128K-token prompt into a request (9 s at 1M),
    which would stall every other stream the benchmark is timing."""
    return json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()


async def post_completion(base_url: str, api_key: str | None, body: bytes, timeout_s: float) -> dict:
    """POSTs a prepared one-token completion from a thread (the event loop keeps timing the
    streams); its single token arrives with the response."""
    url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1") + "/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key or 'none'}"}

    def post() -> dict:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers),
                                    timeout=timeout_s) as r:
            return json.loads(r.read())
    t0 = time.perf_counter()
    out = await asyncio.to_thread(post)
    t1 = time.perf_counter()
    usage = out.get("usage") or {}
    return {"id": out.get("id"), "start": t0, "end": t1, "token_times": [t1],
            "text": out["choices"][0].get("text", ""), "finish_reason": out["choices"][0].get("finish_reason"),
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}
