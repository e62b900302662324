"""Model runner: turns a step's scheduled chunks into tensors, runs the model, returns logits."""
from __future__ import annotations

import logging

import torch

from turboctx.attention.backend import AttentionBackend, AttentionBatch, SeqChunk
from turboctx.engine.sampler import top_logprobs
from turboctx.engine.scheduler import ScheduledChunk
from turboctx.kv_cache import KVCache

log = logging.getLogger("turboctx")

LOGITS_ROWS = 1024   # prompt logprobs are computed this many positions at a time


class ModelRunner:
    def __init__(self, model, backend: AttentionBackend, kv_cache: KVCache, device, dtype,
                 cuda_graphs: bool | None = None, max_model_len: int | None = None):
        self.model, self.backend, self.kv_cache = model, backend, kv_cache
        self.device, self.dtype = torch.device(device), dtype
        model.set_attention_backend(backend)
        self.graphs = None if cuda_graphs is False else self._graph_runner(max_model_len, cuda_graphs)

    def _graph_runner(self, max_model_len: int | None, asked: bool | None):
        """CUDA graphs for decode steps (engine/cuda_graph.py): CUDA and the dense backend only.
        asked=None (the default) uses them where they run and says nothing where they do not."""
        from turboctx.attention.dense import DenseAttentionBackend
        why = ("the device is not CUDA" if self.device.type != "cuda" else
               f"the {self.backend.name} attention backend decodes eagerly"
               if type(self.backend) is not DenseAttentionBackend else None)
        if why is None:
            try:
                from turboctx.engine.cuda_graph import DecodeGraphRunner
            except ImportError as err:
                why = f"Triton is not available ({err})"
        if why is not None:
            if asked:
                log.warning("cuda_graphs=True ignored: %s", why)
            return None
        max_len = min(max_model_len or self.kv_cache.num_slots, self.kv_cache.num_slots)
        return DecodeGraphRunner(self.model, self.backend, self.kv_cache, self.device, self.dtype, max_len)

    @torch.inference_mode()
    def execute(self, chunks: list[ScheduledChunk]) -> torch.Tensor | None:
        """Runs one step. Returns logits [num sampled chunks, V] (float32) in chunk order."""
        if self.graphs is not None and self.graphs.can_run(chunks):
            logits = self.graphs.run(chunks)
            if logits is not None:
                return logits
        ids: list[int] = []
        pos: list[torch.Tensor] = []
        seqs: list[SeqChunk] = []
        for c in chunks:
            r, start = c.request, c.request.num_computed_tokens
            seqs.append(SeqChunk(len(ids), len(ids) + c.num_tokens, start, r.slots))
            ids.extend(r.token_ids_slice(start, start + c.num_tokens))
            pos.append(torch.arange(start, start + c.num_tokens))
        input_ids = torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)
        positions = torch.cat(pos).to(self.device, non_blocking=True)
        batch = AttentionBatch(seqs, positions, self.kv_cache)
        # the length YaRN scaling (DCA) sees: the whole prompt, so chunking does not change it
        batch.extras["seq_lens"] = [max(c.request.num_prompt_tokens, s.start_pos + s.num_new)
                                    for c, s in zip(chunks, seqs)]
        self.backend.prepare(batch, self.dtype)
        hidden = self.model(input_ids, batch)                       # [N, hidden]
        for c, s in zip(chunks, seqs):
            if c.request.prompt_logprobs is not None and c.request.is_prefill:
                self._prompt_logprobs(c, hidden[s.rows])
        rows = [s.row_end - 1 for c, s in zip(chunks, seqs) if c.sample]
        if not rows:
            return None
        return self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])

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
