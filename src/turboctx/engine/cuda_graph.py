"""CUDA graphs for the decode step: one captured graph per padded batch size, replayed each step.

Eager decode at long context is launch-bound (~250 small ops per layer, each a few µs of Python
and dispatch). A captured step replays them with no CPU work, which needs every kernel to have
static shapes: here attention reads the lengths and cache offsets from device buffers
(attention/decode_kernel.py) instead of slicing the cache to the current length.

Static inputs, one int64 device buffer [4, max batch]: token ids, positions, sequence lengths
(position + 1) and the first cache slot of each sequence. A batch of n decodes runs in the graph of
the smallest captured size B >= n; rows n..B-1 get length 0, which writes nothing and attends to
nothing. The rotary tables are computed inside the graph from the positions buffer, once per
step; rotary, the cache write and attention are three Triton launches per layer.

Used for plain decode steps whose sequences each own one consecutive run of cache blocks
(ModelRunner checks `can_run`). The attention inside the graph is the backend's own decode form
(`AttentionBackend.graph_decode`: plain RoPE or DCA; sparse prefill does not change decode).
Everything else stays eager.

torch.compile'd FusedOps (RMSNorm, SiLU*mul) are captured as they are: each graph is first run
twice eagerly on a side stream (with every length 0, so the cache is not touched), which compiles
them for that batch size (size 1 is specialized by dynamo), so the capture itself only records
kernel launches. If a capture fails the runner logs it and the engine stays eager.
"""
from __future__ import annotations

import logging
import time

import torch

from turboctx.attention.backend import AttentionBackend, AttentionBatch
from turboctx.attention.decode_kernel import num_splits_for

log = logging.getLogger("turboctx")

GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class DecodeGraphRunner:
    def __init__(self, model, backend: AttentionBackend, kv_cache, device, dtype,
                 max_len: int, batch_sizes: tuple[int, ...] = GRAPH_BATCH_SIZES):
        """backend: the eager one; its decode form runs in the graphs (ImportError without Triton)."""
        self.model, self.backend, self.kv_cache = model, backend, kv_cache
        self.device, self.dtype, self.max_len = torch.device(device), dtype, max_len
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.graph_backend = backend.graph_decode()
        # rows: token id, position, sequence length, first cache slot
        self.inputs = torch.zeros(4, self.batch_sizes[-1], dtype=torch.int64, device=self.device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None                       # one memory pool shared by every captured size
        self.disabled = False
        self.capture_s = 0.0              # seconds spent capturing (and warming up) graphs

    def can_run(self, chunks) -> bool:
        if self.disabled or not chunks or len(chunks) > self.batch_sizes[-1]:
            return False
        for c in chunks:
            r = c.request
            if c.num_tokens != 1 or not c.sample or r.slots is None or r.slots.contiguous_start is None:
                return False
            if r.is_prefill and r.prompt_logprobs is not None:
                return False
        return True

    def run(self, chunks) -> torch.Tensor | None:
        """Logits [len(chunks), V] (float32) of one decode step, or None if graphs are unusable."""
        n = len(chunks)
        B = next(b for b in self.batch_sizes if b >= n)
        if B not in self.graphs and not self._capture(B):
            return None
        self._fill(chunks, B)
        graph, logits = self.graphs[B]
        graph.replay()
        return logits[:n].clone()

    def run_uncaptured(self, chunks) -> torch.Tensor:
        """The graph's body run eagerly (any device): for tests and debugging."""
        n = len(chunks)
        B = next(b for b in self.batch_sizes if b >= n)
        self._fill(chunks, B)
        self.model.set_attention_backend(self.graph_backend)
        try:
            return self._step(B)[:n]
        finally:
            self.model.set_attention_backend(self.backend)

    def _fill(self, chunks, B: int) -> None:
        rows = []
        for c in chunks:
            r, p = c.request, c.request.num_computed_tokens
            rows.append((r.token_ids_slice(p, p + 1)[0], p, p + 1, r.slots.contiguous_start))
        rows += [(0, 0, 0, 0)] * (B - len(chunks))          # padding rows: length 0
        self.inputs[:, :B].copy_(torch.tensor(rows, dtype=torch.int64).T, non_blocking=True)

    def _step(self, B: int) -> torch.Tensor:
        """The captured body: embedding -> layers -> norm -> lm_head for B rows."""
        ids, pos, lens, starts = self.inputs[:, :B]
        batch = AttentionBatch([], pos, self.kv_cache, extras=self.graph_backend.step_extras(
            pos, lens, starts, self.dtype,
            num_splits_for(B, self.kv_cache.num_kv_heads, self.max_len, self.device)))
        return self.model.compute_logits(self.model(ids, batch))          # [B, V]

    def _capture(self, B: int) -> bool:
        t0 = time.perf_counter()
        self.model.set_attention_backend(self.graph_backend)
        try:
            self.inputs[:, :B].zero_()         # length 0: warm-up and capture touch no cache slot
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):             # compiles Triton / torch.compile kernels for B
                    self._step(B)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = self._step(B)
            self.graphs[B] = (graph, logits)
            return True
        except Exception as err:               # noqa: BLE001 - any failure: stay eager, say why
            log.warning("CUDA graph capture for batch size %d failed (%s: %s); decoding eagerly",
                        B, type(err).__name__, err)
            self.disabled = True
            return False
        finally:
            self.model.set_attention_backend(self.backend)
            self.capture_s += time.perf_counter() - t0
