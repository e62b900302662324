"""Which request gets how many tokens this step.

vLLM v1's rule: a request has tokens computed and tokens total; each step gives it
`min(remaining, budget)`. Running decodes take one token each first, so a long prefill, cut into
chunks of the budget, never stalls them. Admission reserves the KV blocks a request can ever need
(prompt + max_tokens), so a running request can never run out of cache.

Sparse prefill (`aligned_from`): a sparse chunk's pattern comes from the chunk's own last queries,
so its output depends on where the chunk ends. From that sequence length on, a prefill chunk ends
on the request's own grid of `token_budget` tokens (or at the prompt's end), whatever else runs:
it can shrink to the next grid line or grow to it past the step's budget (by less than one chunk,
and past the caps that keep decodes fast). Prefix reuse then stops at a grid line too. A prompt's
output is then the same alone, batched, or beside a server's other requests. The prompt's dense
tail (`tail_dependent` tokens, SparseConfig.dense_tail) is computed unlike the same positions of
a longer prompt, so the grid chunks it touches are not offered to the prefix cache.

Prefix caching: at admission a request takes the cached blocks of the longest prefix of its full
prompt blocks (always leaving its last prompt token to compute) and starts with those tokens
computed; the full prompt blocks it computes are offered to the cache as they complete.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from turboctx.engine.request import Request, RequestStatus
from turboctx.kv_cache import BlockAllocator, SeqSlots, block_hashes


DECODE_STEP_PREFILL_MIN = 256   # prefill tokens a step may still carry beside running decodes


@dataclass
class ScheduledChunk:
    request: Request
    num_tokens: int          # new tokens computed this step
    sample: bool             # this chunk ends at the last known token: sample the next one


SchedulerOutput = list[ScheduledChunk]   # one step: decodes first, then prefill chunks


class Scheduler:
    def __init__(self, allocator: BlockAllocator, block_size: int, token_budget: int, max_num_seqs: int,
                 enable_prefix_caching: bool = True, aligned_from: int | None = None,
                 tail_dependent: int = 0):
        self.allocator, self.block_size = allocator, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.aligned_from = aligned_from     # backend.chunk_dependent_from(): see the module doc
        self.tail_dependent = tail_dependent  # backend.prompt_tail_dependent(): likewise
        self.token_budget, self.max_num_seqs = token_budget, max_num_seqs
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def num_blocks_for(self, req: Request) -> int:
        return math.ceil(req.max_total_tokens() / self.block_size)

    def schedule(self) -> SchedulerOutput:
        budget = self.token_budget
        out: list[ScheduledChunk] = []
        for req in self.running:
            self._register_computed_blocks(req)
        # 1. decodes of running requests (one token each)
        for req in self.running:
            if budget == 0:
                break
            if not req.is_prefill:
                out.append(ScheduledChunk(req, 1, True))
                budget -= 1
        # 2. prefill chunks. While requests wait, a running prefill takes at most half the budget,
        #    so a long prompt never keeps short ones out (vLLM's long-prefill threshold idea).
        # While decodes run, all prefill in a step is capped too, so their inter-token latency is
        # bounded by a fraction of a full chunk (vLLM's long_prefill_token_threshold, in spirit).
        waiting = bool(self.waiting) and len(self.running) < self.max_num_seqs
        cap = max(1, self.token_budget // 2) if waiting else self.token_budget
        if out:
            budget = min(budget, max(DECODE_STEP_PREFILL_MIN, self.token_budget // 4))
        prefills: list[ScheduledChunk] = []
        for req in self.running:
            if budget == 0:
                break
            if req.is_prefill:
                prefills.append(self._prefill_chunk(req, min(budget, cap)))
                budget = max(0, budget - prefills[-1].num_tokens)
        # 3. admit waiting requests, first come first served, while their KV blocks fit
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            need, reuse = self.num_blocks_for(req), self._match_prefix(req)
            if not self.allocator.can_allocate(need, reuse):
                break          # wait for memory
            self.waiting.popleft()
            req.slots = SeqSlots(self.allocator.allocate(need, reuse), self.block_size)
            if reuse:
                req.num_computed_tokens = req.num_cached_tokens = len(reuse) * self.block_size
                req.num_registered_blocks = len(reuse)
            req.status = RequestStatus.RUNNING
            req.first_scheduled_time = time.perf_counter()
            self.running.append(req)
            prefills.append(self._prefill_chunk(req, budget))
            budget = max(0, budget - prefills[-1].num_tokens)
        # 4. budget left over goes back to the capped prefills
        for i, c in enumerate(prefills):
            if budget == 0:
                break
            extra = min(budget, c.request.num_prompt_tokens - c.request.num_computed_tokens - c.num_tokens)
            if extra > 0:
                prefills[i] = self._prefill_chunk(c.request, c.num_tokens + extra)
                budget = max(0, budget - (prefills[i].num_tokens - c.num_tokens))
        return out + prefills

    def _hashes(self, req: Request) -> list[bytes]:
        if req.block_hashes is None:
            req.block_hashes = block_hashes(req.prompt_token_ids, self.block_size)
        return req.block_hashes

    def _match_prefix(self, req: Request) -> list[int]:
        """Cached blocks this request can start from. Prompt logprobs come from the prefill, so a
        request that wants them computes its whole prompt."""
        if not self.enable_prefix_caching or req.prompt_logprobs is not None:
            return []
        usable = (req.num_prompt_tokens - 1) // self.block_size   # the last token must run
        reuse = self.allocator.match(self._hashes(req)[:usable])
        if self.aligned_from is not None:     # whole grid chunks only (module doc)
            grid = self.token_budget
            reuse = reuse[:len(reuse) * self.block_size // grid * grid // self.block_size]
        return reuse

    def _register_computed_blocks(self, req: Request) -> None:
        """Offers the full prompt blocks whose KV this request has computed to the prefix cache."""
        if not self.enable_prefix_caching or req.slots is None:
            return
        full = min(req.num_computed_tokens, self._shareable_tokens(req)) // self.block_size
        if full <= req.num_registered_blocks:
            return
        hashes = self._hashes(req)
        for i in range(req.num_registered_blocks, full):
            self.allocator.register(req.slots.block_table[i], hashes[i])
        req.num_registered_blocks = full

    def _shareable_tokens(self, req: Request) -> int:
        """Prompt tokens whose KV a longer prompt with this prefix would compute the same way:
        all of them, except (sparse) from the grid chunk where the dense tail starts, unless
        that chunk and those after it are too short to run sparse in a longer prompt either."""
        total = req.num_prompt_tokens
        if self.aligned_from is None or not self.tail_dependent or total < self.aligned_from:
            return total
        grid = self.token_budget
        tail_chunk = max(0, total - self.tail_dependent) // grid * grid
        first_sparse = (self.aligned_from - 1) // grid * grid   # first grid chunk ending >= aligned_from
        return min(total, max(tail_chunk, first_sparse))

    def _prefill_chunk(self, req: Request, budget: int) -> ScheduledChunk:
        start, total = req.num_computed_tokens, req.num_prompt_tokens
        n = min(total - start, budget)
        if self.aligned_from is not None and start + n >= self.aligned_from:
            grid = self.token_budget           # the chunk ends on the grid line after start
            n = min(total, (start // grid + 1) * grid) - start
        return ScheduledChunk(req, n, start + n == total)

    def finish(self, req: Request, reason: str) -> None:
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.finish_time = time.perf_counter()
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        if req.slots is not None:
            self._register_computed_blocks(req)
            self.allocator.free(req.slots.block_table)
            req.slots = None
