"""Model runner: turns a step's scheduled chunks into tensors, runs the model (a captured CUDA graph
for plain decode steps, where one can run), and samples the next token of each sampled chunk."""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import torch

from turboctx.attention.backend import AttentionBackend, AttentionBatch, SeqChunk
from turboctx.engine.sampler import sample, top_logprobs
from turboctx.engine.scheduler import ScheduledChunk, SchedulerOutput
from turboctx.kv_cache import KVCache, SeqSlots

log = logging.getLogger("turboctx")

LOGITS_ROWS = 1024   # prompt logprobs are computed this many positions at a time


@dataclass
class SeqInput:
    request_id: str
    num_new: int           # tokens computed this step
    start_pos: int         # tokens already in the cache
    prompt_len: int        # the prompt's length (sparse prefill's dense tail is its end)
    block_table: list[int]
    units: tuple[int, int] | None = None    # layered prefill: only these units run (scheduler.py)
    time_limit_s: float | None = None       # clocked units: none starts that would end past this


@dataclass
class ModelInput:
    """What every rank needs to run the model for one step (rank 0 broadcasts it under tensor
    parallelism): plain Python values, small when pickled."""
    token_ids: list[int]   # [N] the new tokens of every sequence, back to back
    seqs: list[SeqInput]


@dataclass
class RunnerOutput:
    """The tokens sampled in one step, one per sampled chunk in chunk order."""
    token_ids: list[int]
    logprobs: list[dict | None]


@dataclass
class LayeredPrefill:
    """A prefill chunk between the units it runs in (engine/scheduler.py: layered prefill)."""
    hidden: torch.Tensor      # [n, hidden] the residual stream entering unit `next_unit`
    batch: AttentionBatch     # prepared once for the chunk
    next_unit: int = 0
    unit_s: list[float] = field(default_factory=lambda: [0.0, 0.0])  # clocked: the last attention
                                                                     # and MLP unit's seconds


def model_input(chunks: list[ScheduledChunk]) -> ModelInput:
    ids: list[int] = []
    seqs: list[SeqInput] = []
    for c in chunks:
        r, start = c.request, c.request.num_computed_tokens
        ids.extend(r.token_ids_slice(start, start + c.num_tokens))
        seqs.append(SeqInput(r.request_id, c.num_tokens, start, r.num_prompt_tokens,
                             r.slots.block_table, c.units, c.time_limit_s))
    return ModelInput(ids, seqs)


def in_chunk_order(chunks: SchedulerOutput, groups) -> torch.Tensor | None:
    """Logits of the sampled chunks in chunk order, from (chunks, their logits) groups."""
    found: dict[int, tuple[torch.Tensor, int]] = {}
    for members, logits in groups:
        for row, c in enumerate(c for c in members if c.sample):
            found[id(c)] = (logits, row)
    picked = [found[id(c)] for c in chunks if c.sample]
    if not picked:
        return None
    return torch.stack([logits[row] for logits, row in picked])


class ModelRunner:
    def __init__(self, model, backend: AttentionBackend, kv_cache: KVCache, device, dtype,
                 cuda_graphs: bool = False, max_model_len: int | None = None, executor=None,
                 generator: torch.Generator | None = None):
        self.model, self.backend, self.kv_cache = model, backend, kv_cache
        self.device, self.dtype = torch.device(device), dtype
        self.executor = executor          # rank 0 under tensor parallelism: sends each step to the others
        self.generator = generator        # draws of requests that bring no seed
        self._slots: dict[str, SeqSlots] = {}   # on the other ranks: block tables seen last step
        self._layered: dict[str, LayeredPrefill] = {}   # request id -> its chunk between units
        self._step_start = 0.0
        self._decode_stream = None        # CUDA: where decode graphs run beside a step's prefill
        self.overlap_streams = True       # False: graph decode, then the prefill, on one stream
        model.set_attention_backend(backend)
        self.graphs = self._graph_runner(max_model_len) if cuda_graphs else None

    def _graph_runner(self, max_model_len: int | None):
        """CUDA graphs for decode steps (engine/cuda_graph.py), wherever Triton runs on CUDA."""
        if self.device.type != "cuda":
            return None
        try:
            from turboctx.engine.cuda_graph import DecodeGraphRunner
            max_len = min(max_model_len or self.kv_cache.num_slots, self.kv_cache.num_slots)
            return DecodeGraphRunner(self.model, self.backend, self.kv_cache, self.device, self.dtype,
                                     max_len)
        except ImportError as err:
            log.warning("decoding without CUDA graphs: Triton is not available (%s)", err)
            return None

    @property
    def captured_graph_sizes(self) -> list[int]:
        """Batch sizes whose decode step has been captured (empty: every step ran eagerly)."""
        return sorted(self.graphs.graphs) if self.graphs is not None else []

    def execute(self, chunks: SchedulerOutput) -> RunnerOutput:
        """Runs one step and samples the next token of every chunk that ends at its last token."""
        logits = self.logits(chunks)
        sampled = [c.request for c in chunks if c.sample]
        if not sampled:
            return RunnerOutput([], [])
        return RunnerOutput(*sample(logits, sampled, self.generator))

    @torch.inference_mode()
    def logits(self, chunks: SchedulerOutput) -> torch.Tensor | None:
        """Runs one step. Returns logits [num sampled chunks, V] (float32) in chunk order."""
        self._step_start = time.perf_counter()
        self._keep_layered({c.request.request_id for c in chunks if c.units is not None})
        if self.graphs is not None:
            decodes = [c for c in chunks if c.units is None and c.num_tokens == 1 and c.sample]
            if decodes and self.graphs.can_run(decodes):
                if len(decodes) == len(chunks):
                    logits = self.graphs.run(decodes)
                    if logits is not None:
                        return logits
                else:
                    graphed = {id(c) for c in decodes}
                    return self._decode_beside_prefill(
                        chunks, decodes, [c for c in chunks if id(c) not in graphed])
        return self._eager_logits(chunks)

    def _decode_beside_prefill(self, chunks, decodes, prefills) -> torch.Tensor | None:
        """The decode graph on a high-priority stream while the step's prefill (chunks, layered
        units) runs eagerly on the current one: the decode's memory-bound kernels take SMs as
        the prefill's compute-bound ones free them, so a step with a prefill in it costs about
        the prefill, and no decode runs eagerly because a prompt arrived."""
        main = torch.cuda.current_stream(self.device)
        if not self.overlap_streams:           # the same work one after the other (ablation)
            decoded = self.graphs.run(decodes)
            if decoded is None:
                return self._eager_logits(chunks)
            return in_chunk_order(chunks, [(decodes, decoded), (prefills, self._eager_logits(prefills))])
        if self._decode_stream is None:
            # the highest priority there is (out-of-range values map to the nearest valid one)
            self._decode_stream = torch.cuda.Stream(self.device, priority=-100)
        hi = self._decode_stream
        hi.wait_stream(main)
        with torch.cuda.stream(hi):
            decoded = self.graphs.run(decodes)
        if decoded is None:                   # graphs became unusable: all eager
            main.wait_stream(hi)
            return self._eager_logits(chunks)
        rest = self._eager_logits(prefills)
        main.wait_stream(hi)
        decoded.record_stream(main)
        return in_chunk_order(chunks, [(decodes, decoded), (prefills, rest)])

    def _eager_logits(self, chunks: SchedulerOutput) -> torch.Tensor | None:
        inp = model_input(chunks)
        slots = [c.request.slots for c in chunks]
        if self.executor is None:
            hidden, seqs = self.forward(inp, slots)
        else:   # every rank runs the same step; rank 0 alone goes on to logits
            hidden, seqs = self.executor.execute_model(inp, lambda: self.forward(inp, slots))
        for c in chunks:                    # clocked chunks record the units that ran
            state = self._layered.get(c.request.request_id) if c.units is not None else None
            if state is not None and state.next_unit < c.units[1]:
                c.units, c.sample = (c.units[0], state.next_unit), False
        for c, s in zip(chunks, seqs):
            if c.request.prompt_logprobs is not None and c.request.is_prefill and s.num_new:
                self._prompt_logprobs(c, hidden[s.rows])
        rows = [s.row_end - 1 for c, s in zip(chunks, seqs) if c.sample]
        if not rows:
            return None
        return self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])

    @torch.inference_mode()
    def forward(self, inp: ModelInput, slots: list[SeqSlots] | None = None
                ) -> tuple[torch.Tensor, list[SeqChunk]]:
        """The model over one step's tokens -> final hidden states [N', hidden] and the sequences
        (their rows in it). slots: each sequence's cache slots (rank 0 has them; other ranks
        rebuild them). A layered chunk with units left to run has no rows (num_new 0)."""
        if slots is None:
            slots = self._slots_of(inp)
        whole = [i for i, s in enumerate(inp.seqs) if s.units is None]
        layered = [i for i, s in enumerate(inp.seqs) if s.units is not None]
        self._keep_layered({inp.seqs[i].request_id for i in layered})
        if not layered:
            return self._forward_whole(inp.token_ids, inp.seqs, slots)
        offsets = list(itertools.accumulate((s.num_new for s in inp.seqs), initial=0))
        ids = [t for i in whole for t in inp.token_ids[offsets[i]:offsets[i + 1]]]
        hidden, parts = self._forward_whole(ids, [inp.seqs[i] for i in whole],
                                            [slots[i] for i in whole]) if whole else (None, [])
        outs = [hidden] if hidden is not None else []
        rows = hidden.shape[0] if hidden is not None else 0
        seqs: list[SeqChunk | None] = [None] * len(inp.seqs)
        for i, c in zip(whole, parts):
            seqs[i] = c
        for i in layered:
            s = inp.seqs[i]
            h = self._forward_units(s, inp.token_ids[offsets[i]:offsets[i + 1]], slots[i])
            n = 0 if h is None else h.shape[0]
            seqs[i] = SeqChunk(rows, rows + n, s.start_pos, slots[i], prompt_len=s.prompt_len)
            rows += n
            if h is not None:
                outs.append(h)
        empty = torch.empty(0, self.model.config.hidden_size, device=self.device, dtype=self.dtype)
        return (torch.cat(outs) if outs else empty), seqs

    def _keep_layered(self, request_ids: set[str]) -> None:
        """Forgets the layered chunks this step does not go on with (their requests were aborted)."""
        for rid in set(self._layered) - request_ids:
            del self._layered[rid]

    def _forward_whole(self, token_ids: list[int], seq_inputs: list[SeqInput], slots: list[SeqSlots]
                       ) -> tuple[torch.Tensor, list[SeqChunk]]:
        batch = self._batch(seq_inputs, slots)
        input_ids = torch.tensor(token_ids, dtype=torch.long).to(self.device, non_blocking=True)
        return self.model(input_ids, batch), batch.seqs                  # [N, hidden]

    def _batch(self, seq_inputs: list[SeqInput], slots: list[SeqSlots]) -> AttentionBatch:
        pos: list[torch.Tensor] = []
        seqs: list[SeqChunk] = []
        row = 0
        for s, sl in zip(seq_inputs, slots):
            seqs.append(SeqChunk(row, row + s.num_new, s.start_pos, sl, prompt_len=s.prompt_len))
            pos.append(torch.arange(s.start_pos, s.start_pos + s.num_new))
            row += s.num_new
        positions = torch.cat(pos).to(self.device, non_blocking=True)
        batch = AttentionBatch(seqs, positions, self.kv_cache)
        self.backend.prepare(batch, self.dtype)
        return batch

    def _forward_units(self, s: SeqInput, token_ids: list[int], slots: SeqSlots
                       ) -> torch.Tensor | None:
        """Units [a, b) of a layered chunk: the hidden states between units are kept here, the
        attention batch is prepared once. Returns the final hidden states [n, hidden] after the
        last unit, else None."""
        a, b = s.units
        if a == 0:
            batch = self._batch([s], [slots])
            x = self.model.embed(torch.tensor(token_ids, dtype=torch.long).to(self.device))
            self._layered[s.request_id] = LayeredPrefill(x, batch)
        state = self._layered.get(s.request_id)
        if state is None or state.next_unit != a:
            raise RuntimeError(f"layered prefill of request {s.request_id} is at unit "
                               f"{state and state.next_unit}, the step asks for units [{a}, {b})")
        if s.time_limit_s is None:
            state.hidden = self.model.run_units(state.hidden, state.batch, a, b)
        else:
            b = self._clocked_units(state, a, b, s.time_limit_s)
        state.next_unit = b
        if b < 2 * self.model.num_layers:
            return None
        del self._layered[s.request_id]
        return self.model.final_norm(state.hidden)

    def _clocked_units(self, state: LayeredPrefill, a: int, b: int, limit_s: float) -> int:
        """Units from a on while the step's time plus the last such unit's stays within
        limit_s, at least one; returns the unit it stopped at (scheduler.py: clocked units)."""
        u = a
        while u < b:
            if u > a and time.perf_counter() - self._step_start + state.unit_s[u % 2] > limit_s:
                break
            t = time.perf_counter()
            state.hidden = self.model.run_units(state.hidden, state.batch, u, u + 1)
            state.unit_s[u % 2] = time.perf_counter() - t
            u += 1
        return u

    @torch.inference_mode()
    def time_smallest_step(self, repeats: int = 3) -> float:
        """Seconds of the least step there is: one token at position 0 (cache block 0, before
        any request holds it), through the model and the logits; the fastest of a few runs."""
        slots = SeqSlots([0], self.kv_cache.block_size)
        seq = SeqInput("", 1, 0, 1, [0])
        best = float("inf")
        for _ in range(repeats + 1):          # the first run warms up
            t0 = time.perf_counter()
            hidden, _ = self._forward_whole([0], [seq], [slots])
            self.model.compute_logits(hidden)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            best = min(best, time.perf_counter() - t0)
        return best

    def _slots_of(self, inp: ModelInput) -> list[SeqSlots]:
        """SeqSlots per sequence, reused while a request's block table stays the same (they cache
        slot indices); only the requests of the last step are remembered."""
        kept: dict[str, SeqSlots] = {}
        for s in inp.seqs:
            old = self._slots.get(s.request_id)
            kept[s.request_id] = old if old is not None and old.block_table == s.block_table else \
                SeqSlots(list(s.block_table), self.kv_cache.block_size)
        self._slots = kept
        return [kept[s.request_id] for s in inp.seqs]

    def _prompt_logprobs(self, c: ScheduledChunk, hidden: torch.Tensor) -> None:
        """Appends, for prompt positions j in (start, start+n], the logprob of token j + top-k."""
        r, start = c.request, c.request.num_computed_tokens
        end = min(start + c.num_tokens, r.num_prompt_tokens - 1)   # last predicted position
        k = r.params.prompt_logprobs
        for a in range(start, end, LOGITS_ROWS):
            b = min(a + LOGITS_ROWS, end)
            lp = torch.log_softmax(self.model.compute_logits(hidden[a - start:b - start]), dim=-1)
            actual = torch.tensor(r.prompt_token_ids[a + 1:b + 1], device=lp.device)
            r.prompt_logprobs.extend(top_logprobs(lp, k, actual))
