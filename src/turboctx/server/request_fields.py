"""From a request body to SamplingParams: every field is honoured or refused with a 400 naming it.

OpenAI fields we do not implement are accepted only at their neutral value (what the field means
when left out). Fields left out take the model's generation-config defaults (the engine's
`generation_defaults`), then OpenAI's.
"""
from __future__ import annotations

from turboctx.engine.sampling_params import SamplingParams
from turboctx.errors import InvalidRequestError
from turboctx.server.errors import APIError, from_engine_error
from turboctx.server.protocol import CompletionRequest, _SamplingFields

MIN_TOP_P = 1e-30
MAX_LOGIT_BIAS = 100.0

# field -> (is it at its neutral value?, why it is refused otherwise)
NEUTRAL = {
    "store": (lambda v: not v, "this server stores no completions; leave store false"),
    "metadata": (lambda v: not v, "metadata is kept only for stored completions, which this "
                 "server does not keep"),
    "service_tier": (lambda v: v in (None, "auto", "default"), "this server has one service tier: "
                     "'auto' or 'default'"),
    "modalities": (lambda v: v in (None, [], ["text"]), "this server answers in text only"),
    "audio": (lambda v: v is None, "audio output is not supported"),
    "prediction": (lambda v: v is None, "predicted outputs are not supported"),
    "reasoning_effort": (lambda v: v is None, "reasoning_effort is not supported by these models"),
    "web_search_options": (lambda v: v is None, "web search is not supported"),
    "functions": (lambda v: not v, "the deprecated 'functions' field is not supported; use tools"),
    "function_call": (lambda v: v is None, "the deprecated 'function_call' field is not supported; "
                      "use tool_choice"),
    "suffix": (lambda v: not v, "suffix (insertion) is not supported"),
}


def bad(param: str, msg: str) -> APIError:
    return APIError(msg, 400, param=param, code="unsupported_parameter")


def check_neutral_fields(body: _SamplingFields) -> None:
    for name, (neutral, why) in NEUTRAL.items():
        if name in type(body).model_fields and not neutral(getattr(body, name)):
            raise bad(name, f"{name}={getattr(body, name)!r}: {why}")
    if body.stream_options is not None and not body.stream:
        raise bad("stream_options", "stream_options is only allowed when stream is true")
    if isinstance(body, CompletionRequest) and body.best_of not in (None, 1, body.n):
        raise bad("best_of", f"best_of={body.best_of} is not supported; leave it out or make it "
                  f"equal to n (every choice is returned)")


def logit_bias(body: _SamplingFields, vocab_size: int) -> dict[int, float]:
    out = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise APIError(f"logit_bias key {key!r} is not a token id in [0, {vocab_size})", 400,
                           param="logit_bias")
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise APIError(f"logit_bias[{key}]={value} must be in [-100, 100]", 400, param="logit_bias")
        out[int(key)] = float(value)
    return out


def _top_p(top_p: float) -> float:
    """The sampler compares top_p in float32, where a top_p under ~1e-45 rounds to 0 and would drop
    every token. Any top_p under 1/vocab keeps only the top token anyway, so raising a tiny positive
    top_p to 1e-30 changes nothing else; 0 still reaches the engine's validation (a 400)."""
    return max(top_p, MIN_TOP_P) if top_p > 0 else top_p


def sampling_params(body: _SamplingFields, *, defaults: dict, max_tokens: int | None,
                    prompt_len: int, max_model_len: int, vocab_size: int,
                    logprobs: int | None, prompt_logprobs: int | None = None,
                    seed: int | None = None, **extra) -> SamplingParams:
    """The engine's SamplingParams for one choice. max_tokens None: as many as fit (OpenAI), or
    the generation config's max_new_tokens. seed: this choice's seed (n > 1 derives one per
    choice). extra: further SamplingParams fields (structured output)."""
    given = {name: getattr(body, name) for name in
             ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
              "frequency_penalty", "min_tokens") if getattr(body, name) is not None}
    if "top_p" in given:
        given["top_p"] = _top_p(given["top_p"])
    if max_tokens is None:
        max_tokens = defaults.get("max_tokens") or max(1, max_model_len - prompt_len)
    try:
        return SamplingParams.from_defaults(
            defaults, **given, max_tokens=max_tokens, seed=seed, stop=body.stop,
            stop_token_ids=body.stop_token_ids or [], ignore_eos=bool(body.ignore_eos),
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            logit_bias=logit_bias(body, vocab_size),
            skip_special_tokens=body.skip_special_tokens is not False,
            include_stop_str_in_output=bool(body.include_stop_str_in_output), **extra)
    except InvalidRequestError as e:
        raise from_engine_error(e) from None


def choice_seed(seed: int | None, j: int) -> int | None:
    """The seed of choice j of n: seed + j (wrapping in int64), so choices differ yet repeat."""
    if seed is None or j == 0:
        return seed
    return (seed + j + 2 ** 63) % 2 ** 64 - 2 ** 63

