"""Model runner: turns a step's scheduled chunks into tensors, runs the model (a captured CUDA graph
for plain decode steps, where one can run), and samples the next token of each sampled chunk."""
from __future__ import annotations

import logging
from dataclasses import dataclass

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


def model_input(chunks: list[ScheduledChunk]) -> ModelInput:
    ids: list[int] = []
    seqs: list[SeqInput] = []
    for c in chunks:
        r, start = c.request, c.request.num_computed_tokens
        ids.extend(r.token_ids_slice(start, start + c.num_tokens))
        seqs.append(SeqInput(r.request_id, c.num_tokens, start, r.num_prompt_tokens,
                             r.slots.block_table))
    return ModelInput(ids, seqs)


class ModelRunner:
    def __init__(self, model, backend: AttentionBackend, kv_cache: KVCache, device, dtype,
                 cuda_graphs: bool = False, max_model_len: int | None = None, executor=None,
                 generator: torch.Generator | None = None):
        self.model, self.backend, self.kv_cache = model, backend, kv_cache
        self.device, self.dtype = torch.device(device), dtype
        self.executor = executor          # rank 0 under tensor parallelism: sends each step to the others
        self.generator = generator        # draws of requests that bring no seed
        self._slots: dict[str, SeqSlots] = {}   # on the other ranks: block tables seen last step
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
        if self.graphs is not None and self.graphs.can_run(chunks):
            logits = self.graphs.run(chunks)
            if logits is not None:
                return logits
        inp = model_input(chunks)
        slots = [c.request.slots for c in chunks]
        if self.executor is None:
            hidden, seqs = self.forward(inp, slots)
        else:   # every rank runs the same step; rank 0 alone goes on to logits
            hidden, seqs = self.executor.execute_model(inp, lambda: self.forward(inp, slots))
        for c, s in zip(chunks, seqs):
            if c.request.prompt_logprobs is not None and c.request.is_prefill:
                self._prompt_logprobs(c, hidden[s.rows])
        rows = [s.row_end - 1 for c, s in zip(chunks, seqs) if c.sample]
        if not rows:
            return None
        return self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])

    @torch.inference_mode()
    def forward(self, inp: ModelInput, slots: list[SeqSlots] | None = None
                ) -> tuple[torch.Tensor, list[SeqChunk]]:
        """The model over one step's tokens -> final hidden states [N, hidden] and the sequences.
        slots: each sequence's cache slots (rank 0 has them; other ranks rebuild them)."""
        if slots is None:
            slots = self._slots_of(inp)
        pos: list[torch.Tensor] = []
        seqs: list[SeqChunk] = []
        row = 0
        for s, sl in zip(inp.seqs, slots):
            seqs.append(SeqChunk(row, row + s.num_new, s.start_pos, sl, prompt_len=s.prompt_len))
            pos.append(torch.arange(s.start_pos, s.start_pos + s.num_new))
            row += s.num_new
        input_ids = torch.tensor(inp.token_ids, dtype=torch.long).to(self.device, non_blocking=True)
        positions = torch.cat(pos).to(self.device, non_blocking=True)
        batch = AttentionBatch(seqs, positions, self.kv_cache)
        self.backend.prepare(batch, self.dtype)
        return self.model(input_ids, batch), seqs                  # [N, hidden]

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
