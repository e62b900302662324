"""Which request gets how many tokens this step.

vLLM v1's rule: a request has tokens computed and tokens total; each step gives it
`min(remaining, budget)`. Running decodes take one token each first, so a long prefill, cut into
chunks of the budget, never stalls them. Admission reserves the KV blocks a request can ever need
(prompt + max_tokens), so a running request can never run out of cache.

Sparse prefill (`aligned_from`): a sparse chunk's pattern comes from the chunk's own last queries,
so its output depends on where the chunk ends. From that sequence length on, a prefill chunk ends
on the request's own grid of `token_budget` tokens (or at the prompt's end), whatever else runs:
it can shrink to the next grid line or grow to it past the step's budget (by less than one chunk,
and past the caps that keep decodes fast). Prefix reuse then stops at a grid line too, unless
the chunk after the reused blocks would run dense anyway (it ends before that length). A prompt's
output is then the same alone, batched, or beside a server's other requests. The prompt's dense
tail (`tail_dependent` tokens, SparseConfig.dense_tail) is computed unlike the same positions of
a longer prompt, so the grid chunks it touches are not offered to the prefix cache.

Prefix caching: at admission a request takes the cached blocks of the longest prefix of its full
prompt blocks (always leaving its last prompt token to compute) and starts with those tokens
computed; the full prompt blocks it computes are offered to the cache as they complete.

A latency target (`max_itl_s`, engine option max_itl_ms): a step that carries running decodes
admits waiting requests first, then takes only the prefill work that a cost model of the step
(step_cost.py, fitted to the steps run so far) says fits the target beside them. A chunk runs a
few *units* per step, a unit being half a layer (a layer's attention, or its MLP): *layered
prefill*. It is the same computation in the same order as the whole chunk, at the whole chunk's
efficiency, so its output, sparse patterns included, does not depend on the slicing, and each
layer's pattern is estimated once. Every step runs at least one unit of a layered chunk. Chunk
sizes never depend on timing (only how many units a step runs does): the engine's chunk is the
one the prompt has alone (`units_per_step` 1; a larger value cuts it finer).

Clocked units (`clocked`: the CPU on one rank, where the host runs each unit before it goes on):
the step's layered chunk is offered all its remaining units with the step's time limit, and the
runner stops before a unit that its clock says would end past the limit (at least one runs). A
slow unit or a mispredicted one then costs at most itself, and a step fills to its target
whatever the cost model's error. GPUs queue work ahead of the host, so there the model decides.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from turboctx.attention.backend import causal_pairs
from turboctx.engine.request import Request, RequestStatus
from turboctx.engine.step_cost import StepCostModel, StepWork, largest_fitting
from turboctx.kv_cache import BlockAllocator, SeqSlots, block_hashes


DECODE_STEP_PREFILL_MIN = 256   # without a latency target: prefill tokens a step may carry beside decodes
PREFILL_SHARE_FLOOR = 0.5       # with one: a prefill's share of the target when decodes alone exceed it
LAYERED_MIN_TOKENS = 256        # beside decodes a CPU chunk is never cut below this many tokens
DECODES_ALONE_KEPT = 8          # recent decode-only steps kept per batch size


@dataclass
class ScheduledChunk:
    request: Request
    num_tokens: int          # new tokens computed this step (the whole chunk when layered)
    sample: bool             # this chunk ends at the last known token: sample the next one
    units: tuple[int, int] | None = None    # layered prefill: only units [a, b) run this step
                                            # (unit 2l: layer l's attention, 2l + 1: its MLP)
    time_limit_s: float | None = None       # clocked (module doc): units may stop at this step
                                            # time; the runner then sets units to those that ran


def dense_pairs(start: int, n: int, prompt_len: int) -> float:
    return causal_pairs(start, n)


SchedulerOutput = list[ScheduledChunk]   # one step: decodes first, then prefill chunks


class Scheduler:
    def __init__(self, allocator: BlockAllocator, block_size: int, token_budget: int, max_num_seqs: int,
                 enable_prefix_caching: bool = True, aligned_from: int | None = None,
                 tail_dependent: int = 0, num_layers: int = 1, max_itl_s: float | None = None,
                 itl_decode_factor: float | None = None, attention_pairs=dense_pairs,
                 attention_share: float = 0.5, units_per_step: int = 1, clocked: bool = False):
        """max_itl_s: the latency target of steps with running decodes (seconds); or
        itl_decode_factor: the target is this many times the decode part's own predicted time.
        Neither: prefill beside decodes is capped by tokens (DECODE_STEP_PREFILL_MIN).
        attention_pairs(start, n, prompt_len): the backend's attended pairs of a chunk;
        attention_share: the attention half's share of a layer's linear-layer work;
        units_per_step: beside decodes a free chunk is the budget / this (1: the chunk of the
        prompt alone, its shapes and so GPU kernels' plans and GEMM efficiency; more: finer
        packing of steps, for the CPU); clocked: layered units stop by the runner's clock
        (module doc)."""
        self.allocator, self.block_size = allocator, block_size
        self.num_layers, self.attention_pairs = num_layers, attention_pairs
        self.num_units, self.units_per_step = 2 * num_layers, units_per_step
        self._unit_share = (attention_share / num_layers, (1 - attention_share) / num_layers)
        self.max_itl_s, self.itl_decode_factor = max_itl_s, itl_decode_factor
        self.clocked = clocked
        paced = max_itl_s is not None or itl_decode_factor is not None
        self.step_cost = StepCostModel() if paced else None
        # seconds of recent steps of decodes alone, by how many decodes: what they cost beside a
        # prefill (small batches are not linear in their rows: on the CPU 1 row took 50 ms, 3
        # rows 105 ms of the default model, which one fitted line misses by 30%)
        self._decodes_alone: dict[int, deque] = {}
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
        work = StepWork()
        for req in self.running:
            if budget == 0:
                break
            if not req.is_prefill:
                out.append(ScheduledChunk(req, 1, True))
                work = work + StepWork(1, req.num_computed_tokens + 1)
                budget -= 1
        if out:
            work = work + StepWork(passes=1.0)      # the decodes' one forward
        # 2. prefill chunks. While requests wait, a running prefill takes at most half the budget,
        #    so a long prompt never keeps short ones out (vLLM's long-prefill threshold idea).
        # While decodes run, prefill in a step is sized to the latency target (module doc); with
        # no target it is capped by tokens (vLLM's long_prefill_token_threshold, in spirit).
        waiting = bool(self.waiting) and len(self.running) < self.max_num_seqs
        cap = max(1, self.token_budget // 2) if waiting else self.token_budget
        sizing = out and self.step_cost is not None and (
            self.waiting or any(r.is_prefill for r in self.running))   # else no fit to refresh
        limit = self._step_limit(work, len(out)) if sizing else None
        if out and limit is None:
            budget = min(budget, max(DECODE_STEP_PREFILL_MIN, self.token_budget // 4))
        prefills: list[ScheduledChunk] = []
        running = list(self.running)
        if limit is not None:    # beside decodes, new requests first: their TTFT is latency too
            budget, work = self._admit(budget, work, limit, prefills)
        for req in running:
            if budget == 0 and req.layered is None:
                continue
            if req.is_prefill:
                c = self._sized_chunk(req, min(budget, cap), work, limit)
                prefills.append(c)
                work = work + self.chunk_work(c)
                budget = max(0, budget - c.num_tokens)
        if limit is None:
            budget, work = self._admit(budget, work, limit, prefills)
        # 3. budget left over goes back to the capped prefills (sized ones are as large as fits)
        for i, c in enumerate(prefills):
            if budget == 0 or limit is not None:
                break
            if c.units is not None:
                continue
            extra = min(budget, c.request.num_prompt_tokens - c.request.num_computed_tokens - c.num_tokens)
            if extra > 0:
                prefills[i] = self._prefill_chunk(c.request, c.num_tokens + extra)
                budget = max(0, budget - (prefills[i].num_tokens - c.num_tokens))
        return out + prefills

    def _admit(self, budget: int, work: StepWork, limit: float | None,
               prefills: list[ScheduledChunk]) -> tuple[int, StepWork]:
        """Admits waiting requests, first come first served, while their KV blocks fit; their
        first chunks go to `prefills` (beside decodes, as many of their units as fit)."""
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
            c = self._sized_chunk(req, budget, work, limit)
            prefills.append(c)
            work = work + self.chunk_work(c)
            budget = max(0, budget - c.num_tokens)
        return budget, work

    def advance(self, chunks: SchedulerOutput) -> None:
        """After a step ran: each chunk's tokens are computed, or its layered chunk moves on."""
        for c in chunks:
            r = c.request
            if c.units is not None and c.units[1] < self.num_units:
                r.layered = (c.num_tokens, c.units[1])
                continue
            r.layered = None
            r.num_computed_tokens += c.num_tokens

    # -- sizing prefill to the latency target ---------------------------------------------------
    def chunk_work(self, c: ScheduledChunk) -> StepWork:
        r = c.request
        start, n = r.num_computed_tokens, c.num_tokens
        w = StepWork(n, self.attention_pairs(start, n, r.num_prompt_tokens),
                     start + n if n > 1 else 0)
        if c.units is None:
            return w           # whole chunks join the step's one forward (_work counts it)
        a, b = c.units
        share = sum(self._unit_share[u % 2] for u in range(a, b))
        attention = ((b - a + 1 - a % 2) // 2) / self.num_layers    # even units in [a, b)
        return StepWork(w.tokens * share, w.pairs * attention, w.keys * attention,
                        (b - a) / self.num_units)

    def observe_step(self, chunks: SchedulerOutput, seconds: float) -> None:
        """The measured time of a step (the engine calls this after each step ran)."""
        if self.step_cost is not None and chunks:
            self.step_cost.observe(self._work(chunks), seconds)
            if all(c.num_tokens == 1 and c.units is None for c in chunks):
                self._decodes_alone.setdefault(len(chunks), deque(maxlen=DECODES_ALONE_KEPT)
                                               ).append(seconds)

    def predicted_seconds(self, chunks: SchedulerOutput) -> float | None:
        """What the cost model expects a step of these chunks to take (None: no latency target)."""
        return None if self.step_cost is None else self._predict(self._work(chunks))

    def _work(self, chunks: SchedulerOutput) -> StepWork:
        # whole chunks (decodes among them) run in one forward; each layered chunk in its own
        work = StepWork(passes=1.0 if any(c.units is None for c in chunks) else 0.0)
        for c in chunks:
            work = work + self.chunk_work(c)
        return work

    def _predict(self, work: StepWork) -> float:
        t = self.step_cost.predict(work)
        return 0.0 if t is None else t

    def _step_limit(self, decode_work: StepWork, num_decodes: int) -> float:
        """Seconds this step may take: the target, or (when the decodes alone take more) the
        decodes' own time plus a share of it, so a prefill always advances. The decodes' own
        time is the median of recent steps of as many decodes alone, else the model's."""
        seen = self._decodes_alone.get(num_decodes)
        alone = sorted(seen)[len(seen) // 2] if seen else self._predict(decode_work)
        target = self.max_itl_s if self.max_itl_s is not None else self.itl_decode_factor * alone
        return max(target, alone + PREFILL_SHARE_FLOOR * target)

    def _fits(self, work: StepWork, limit: float) -> bool:
        return self.step_cost.trusted(work) and self._predict(work) <= limit

    def _sized_chunk(self, req: Request, budget: int, work: StepWork, limit: float | None
                     ) -> ScheduledChunk:
        """The request's prefill chunk, sized to `limit` seconds beside `work` (None: no limit)."""
        if req.layered is not None:          # a layered chunk goes on from its next unit
            n, first = req.layered
            return self._units_that_fit(req, n, first, work, limit)
        if limit is None:
            return self._prefill_chunk(req, max(1, budget))
        # Beside decodes a chunk's size never depends on timing, only how many of its units a
        # step runs does (bit-exact), so a prompt's output does not depend on the machine's
        # speed. The engine's: the chunk the prompt has alone (its shapes, and so the kernels'
        # plans: a new shape cost its first unit ~0.5 s on the H200; on the CPU a third of it
        # lost the prompt more time beside 4 decodes than the finer packing won: 1.24 against
        # 1.00x its TTFT alone at 6K tokens, clocked). A grid chunk's size is the grid's.
        size = self.token_budget if self.units_per_step == 1 else max(
            LAYERED_MIN_TOKENS, self.token_budget // self.units_per_step)
        # Each such chunk runs in a forward of its own, all its units in one step when they fit:
        # batched with the decodes its rows would round differently from a step that runs part.
        if self.units_per_step > 1:
            size = min(budget, size)
        n = self._prefill_chunk(req, max(1, size)).num_tokens
        return self._units_that_fit(req, n, 0, work, limit)

    def _units_that_fit(self, req: Request, n: int, first: int, work: StepWork,
                        limit: float | None) -> ScheduledChunk:
        """Units [first, last) of an n-token chunk: as many as fit, at least one (all of them
        without a limit)."""
        if limit is None:
            return self._layered(req, n, first, self.num_units)
        if self.clocked:
            c = self._layered(req, n, first, self.num_units)
            c.time_limit_s = limit
            return c
        fits = lambda k: self._fits(work + self.chunk_work(self._layered(req, n, first, first + k)),
                                    limit)
        return self._layered(req, n, first, first + largest_fitting(1, self.num_units - first, fits))

    def _layered(self, req: Request, n: int, first: int, last: int) -> ScheduledChunk:
        ends = req.num_computed_tokens + n == req.num_prompt_tokens
        return ScheduledChunk(req, n, ends and last == self.num_units, units=(first, last))

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
        if self.aligned_from is not None:     # whole grid chunks only (module doc), unless
            grid = self.token_budget           # the chunk after the reused part runs dense anyway
            start = len(reuse) * self.block_size
            if min(req.num_prompt_tokens, (start // grid + 1) * grid) >= self.aligned_from:
                reuse = reuse[:start // grid * grid // self.block_size]
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
