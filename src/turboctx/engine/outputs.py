"""What generate() returns.

An output of a running request is made every step; it costs the same at any output length: its
token ids, logprobs and text are read on first access from the request's append-only lists at
the length they had when the output was made (`Grown`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Grown:
    """An append-only list as it was when it held n items."""
    items: list = field(default_factory=list)
    n: int = 0

    @classmethod
    def of(cls, items: list) -> "Grown":
        return cls(items, len(items))

    def list(self) -> list:
        return self.items[:self.n]


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
    prompt_logprobs: list[dict[int, float] | None] | None = None
    finished: bool = False
    finish_reason: str | None = None    # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    grown_token_ids: Grown = field(default_factory=Grown, repr=False)
    grown_logprobs: Grown | None = field(default=None, repr=False)
    grown_text: Grown | str = field(default="", repr=False)   # text pieces, or the final text

    @cached_property
    def token_ids(self) -> list[int]:
        return self.grown_token_ids.list()

    @cached_property
    def logprobs(self) -> list[dict[int, float]] | None:
        """Per generated token: the top-k {token_id: logprob} of the full distribution."""
        return None if self.grown_logprobs is None else self.grown_logprobs.list()

    @cached_property
    def text(self) -> str:
        g = self.grown_text
        return g if isinstance(g, str) else "".join(g.list())

    @property
    def num_output_tokens(self) -> int:
        return self.grown_token_ids.n
