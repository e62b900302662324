"""A request's state as it moves through the engine (vLLM v1: two counters drive everything)."""
from __future__ import annotations

import enum
import time

import torch

from turboctx.engine.detokenizer import IncrementalDetokenizer
from turboctx.engine.outputs import Grown, RequestMetrics, RequestOutput
from turboctx.engine.sampling_params import SamplingParams
from turboctx.kv_cache import SeqSlots


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, eos_token_ids: list[int], tokenizer=None, grammar=None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.eos_token_ids = set() if params.ignore_eos else set(eos_token_ids)
        self.output_token_ids: list[int] = []
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.prompt_logprobs: list | None = [None] if params.prompt_logprobs is not None else None
        self.num_computed_tokens = 0          # tokens whose KV is in the cache
        self.num_cached_tokens = 0            # of those, reused from an earlier request
        self.block_hashes: list[bytes] | None = None   # chained hashes of the full prompt blocks
        self.num_registered_blocks = 0        # leading prompt blocks offered to the prefix cache
        self.layered: tuple[int, int] | None = None   # a prefill chunk run a few layers per step:
                                              # (its tokens, the next layer to run)
        self.status = RequestStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.slots: SeqSlots | None = None
        self.generator: torch.Generator | None = None
        self.penalty_state = None             # engine/penalties.py, made on first sample if needed
        self.grammar = grammar                # turboctx.structured.GrammarMatcher, or None
        self.detokenizer = IncrementalDetokenizer(tokenizer, params) if tokenizer is not None else None
        self.arrival_time = time.perf_counter()
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_prefill(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    @property
    def text(self) -> str:
        return self.detokenizer.text if self.detokenizer is not None else ""

    def append_token(self, token: int, logprobs: dict | None) -> str | None:
        """Records one generated token; returns why the request ends now ("stop", "length") or
        None. The detokenizer and the stop checks look at the new token only."""
        p = self.params
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.output_token_ids.append(token)
        if logprobs is not None:
            self.logprobs.append(logprobs)
        stop = self.detokenizer.add(token) if self.detokenizer is not None else None
        if token in self.eos_token_ids or token in p.stop_token_ids:
            self.stop_reason = None if token in self.eos_token_ids else token
            reason = "stop"
        elif stop is not None:
            self.stop_reason = stop
            return "stop"
        elif self.grammar is not None and self.grammar.is_terminated():
            reason = "stop"                   # the grammar is complete: only EOS could follow
        elif len(self.output_token_ids) >= p.max_tokens:
            reason = "length"
        else:
            return None
        if self.detokenizer is not None:
            self.detokenizer.finish(self.output_token_ids)
        return reason

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        p = self.num_prompt_tokens
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:                      # decode: never copy the (possibly 1M-token) prompt
            return self.output_token_ids[start - p:end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - p]

    def max_total_tokens(self) -> int:
        return self.num_prompt_tokens + self.params.max_tokens

    def to_output(self, peak_memory: int | None = None) -> RequestOutput:
        m = RequestMetrics(num_prompt_tokens=self.num_prompt_tokens,
                           num_generated_tokens=len(self.output_token_ids),
                           num_cached_tokens=self.num_cached_tokens,
                           peak_memory_bytes=peak_memory)
        if self.first_token_time is not None:
            m.ttft_s = self.first_token_time - self.arrival_time
            if self.first_scheduled_time is not None:
                m.prefill_s = self.first_token_time - self.first_scheduled_time
                computed = self.num_prompt_tokens - self.num_cached_tokens
                m.prefill_tokens_per_s = computed / max(m.prefill_s, 1e-9)
        if self.finish_time is not None:
            m.e2e_s = self.finish_time - self.arrival_time
            n = len(self.output_token_ids) - 1
            if n > 0 and self.first_token_time is not None:
                m.decode_tokens_per_s = n / max(self.finish_time - self.first_token_time, 1e-9)
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids, prompt_logprobs=self.prompt_logprobs,
            finished=self.finished, finish_reason=self.finish_reason, stop_reason=self.stop_reason,
            metrics=m, grown_token_ids=Grown.of(self.output_token_ids),
            grown_logprobs=Grown.of(self.logprobs) if self.logprobs is not None else None,
            grown_text=self.detokenizer.grown_text() if self.detokenizer is not None else "")
