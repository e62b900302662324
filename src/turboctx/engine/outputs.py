"""What generate() returns."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_cached_tokens: int = 0          # prompt tokens reused from the cache (prefix reuse)
    ttft_s: float | None = None         # arrival -> first token
    prefill_s: float | None = None      # first scheduled -> first token
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    e2e_s: float | None = None
    peak_memory_bytes: int | None = None  # GPU: max allocated; CPU: process peak RSS


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] | None = None
    prompt_logprobs: list[dict[int, float] | None] | None = None
    finished: bool = False
    finish_reason: str | None = None    # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
