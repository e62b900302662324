"""The engine: a model, its KV cache and a scheduler. `step()` is schedule() -> execute() ->
update(): which request gets how many tokens, the model run and sampling, the requests'
advance. The server, benchmarks and calibration use the public methods below, never the parts.
"""
from __future__ import annotations

import itertools
import logging
import time
import weakref
from dataclasses import dataclass

import torch

from turboctx.attention.sparse.stats import RecallObserver
from turboctx.config import EngineConfig, ModelArchitecture
from turboctx.config.sections import CPU_ITL_DECODE_FACTOR, GPU_MAX_ITL_MS
from turboctx.engine.memory import peak_memory
from turboctx.engine.outputs import RequestOutput
from turboctx.engine.request import Request
from turboctx.engine.runner import RunnerOutput
from turboctx.engine.sampling_params import SamplingParams
from turboctx.engine.scheduler import Scheduler, SchedulerOutput
from turboctx.engine.worker import Worker
from turboctx.errors import InvalidRequestError, PromptTooLongError, TurboctxError
from turboctx.kv_cache import BlockAllocator, block_hashes
from turboctx.weights import open_checkpoint
from turboctx.weights.generation_config import generation_defaults

log = logging.getLogger("turboctx")


@dataclass(frozen=True)
class KVCacheUsage:
    used_blocks: int
    total_blocks: int
    block_size: int

    @property
    def ratio(self) -> float:
        return self.used_blocks / max(self.total_blocks, 1)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        """config: from EngineConfig.from_options (checked); it is resolved here against the
        model's architecture before any weight is loaded."""
        ckpt = open_checkpoint(config.model.model)
        self.checkpoint, self.tokenizer = ckpt, ckpt.tokenizer
        self.config = config = config.resolve(ckpt.config, ckpt.source if ckpt.kind == "hf" else None)
        self.device = config.device
        self.executor = self._start_ranks()
        group = self.executor.group if self.executor is not None else None
        if group is not None:
            self.device = group.device
        t0 = time.perf_counter()
        try:
            self.worker = Worker(ckpt, config, self.device, group)
            t_load = time.perf_counter()
            kv_tokens = self.worker.plan_kv_tokens()
            if self.executor is not None:
                kv_tokens = self.executor.agree_kv_tokens(kv_tokens)
            num_blocks = self.worker.init_cache(kv_tokens, self.executor)
            # seconds per phase of the start (warm_up() adds its own)
            self.startup = {"load_s": t_load - t0, "kv_cache_s": time.perf_counter() - t_load}
            if self.executor is not None:
                self.executor.ready()
        except BaseException as e:
            if self.executor is None or self.executor.stopped is not None:
                raise
            err = self.executor.fail(e, "while starting")    # rank 0 failed: stop the others
            if err is e:
                raise
            raise err from e
        self.runner = self.worker.runner
        self.allocator = BlockAllocator(num_blocks)
        backend = self.worker.backend
        itl_ms = config.scheduler.max_itl_ms
        if itl_ms is not None and self.executor is None:
            self._check_itl_target(itl_ms)
        if itl_ms is None and self.device.type == "cuda":
            itl_ms = GPU_MAX_ITL_MS
        self.scheduler = Scheduler(
            self.allocator, config.cache.block_size, config.max_num_batched_tokens,
            config.scheduler.max_num_seqs, config.cache.enable_prefix_caching,
            backend.chunk_dependent_from(), backend.prompt_tail_dependent(),
            num_layers=self.architecture.num_hidden_layers,
            max_itl_s=itl_ms / 1e3 if itl_ms is not None else None,
            itl_decode_factor=CPU_ITL_DECODE_FACTOR if itl_ms is None else None,
            attention_pairs=backend.attention_pairs,
            attention_share=self.worker.model.attention_share(),
            clocked=self.device.type == "cpu" and self.executor is None)
        self.eos_token_ids = sorted(set(ckpt.config.eos_token_ids) | set(
            self.tokenizer.eos_token_ids if self.tokenizer else []))
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self.kept_contexts = None          # engine/kept_contexts.py, once a store is attached
        self._match_kept_contexts = False
        self.generation_defaults = generation_defaults(
            config.model.generation_config, ckpt.source if ckpt.kind == "hf" else None)
        if self.generation_defaults:
            log.info("sampling defaults from the generation config: %s", self.generation_defaults)

    def warm_up(self) -> dict[str, float]:
        """One short request through prefill and decode before any user's: compiles the
        kernels small steps use (torch.compile'd norms, Triton launches) and captures the batch-1
        decode graph, so the first request does not pay for them. Adds warmup_s (and, of it,
        graph_capture_s) to `startup`; returns `startup`."""
        t0 = time.perf_counter()
        graphs = self.runner.graphs
        captured = graphs.capture_s if graphs is not None else 0.0
        req = self.make_request([1] * 16, SamplingParams(max_tokens=2, temperature=0,
                                                         ignore_eos=True), request_id="warm-up")
        self.add_request(req)
        while not req.finished:
            self.step()
        self.reset_prefix_cache()
        self.startup["warmup_s"] = time.perf_counter() - t0
        self.startup["graph_capture_s"] = (graphs.capture_s if graphs is not None else 0.0) - captured
        return self.startup

    def _check_itl_target(self, itl_ms: float) -> None:
        """A latency target below the fastest step this engine can run is an error at start."""
        fastest = self.runner.time_smallest_step()
        if fastest * 1e3 > itl_ms:
            raise InvalidRequestError(
                f"max_itl_ms={itl_ms:g} cannot be met: the smallest step (one decode token) takes "
                f"{fastest * 1e3:.1f} ms here; give max_itl_ms above that")

    def _start_ranks(self):
        """Tensor parallelism: the other ranks, started (or joined, under torchrun) and stopped
        with this engine. Under torchrun, ranks > 0 never return from here."""
        tp = self.config.parallel.tensor_parallel_size
        if tp == 1:
            return None
        from turboctx.distributed.executor import TPExecutor
        from turboctx.distributed.partition import check_tensor_parallel
        from turboctx.distributed.worker import RankSpec
        check_tensor_parallel(self.checkpoint.config, tp)
        executor = TPExecutor.launch(RankSpec(self.config), self.device)
        weakref.finalize(self, executor.shutdown)    # also runs at interpreter exit
        return executor

    def shutdown(self) -> None:
        """Stops the other tensor-parallel ranks (nothing to do with one rank); idempotent."""
        if self.executor is not None:
            self.executor.shutdown()

    def collective_rpc(self, method: str, *args) -> list:
        """Worker.<method>(*args) on every rank; the results, by rank."""
        if self.executor is None:
            return [getattr(self.worker, method)(*args)]
        return self.executor.collective_rpc(method, args, getattr(self.worker, method))

    # -- what the engine is ---------------------------------------------------------------------
    @property
    def architecture(self) -> ModelArchitecture:
        return self.checkpoint.config

    @property
    def model_name(self) -> str:
        """The model's own name: its folder or file name, or random:<preset>."""
        return self.architecture.name

    def attention_setup(self) -> dict:
        """The attention in force: its name (dense, dca, sparse, dca+sparse) and settings."""
        from dataclasses import asdict
        c = self.config
        out = {"attention": c.attention_name, "decode_in_cuda_graphs": self.runner.graphs is not None,
               "kv_cache_dtype": c.cache.kv_cache_dtype}
        if c.dca is not None:
            out["dca"] = asdict(c.dca)
        if c.sparse is not None:
            s = self.sparse_config()
            out["sparse"] = {"threshold": s.threshold, "dense_tail": s.dense_tail,
                             "budgets": "per head" if s.head_budgets is not None else
                             f"{s.vertical_size} vertical / {s.slash_size} slash"}
        return out

    def default_sampling_params(self, **fields) -> SamplingParams:
        """SamplingParams with `fields`, the rest from the model's generation config (when
        `generation_config` is auto or a folder), then SamplingParams' own defaults."""
        return SamplingParams.from_defaults(self.generation_defaults, **fields)

    def captured_graph_sizes(self) -> list[int]:
        """Decode batch sizes replayed from CUDA graphs so far (empty: all decode ran eagerly)."""
        return self.runner.captured_graph_sizes

    # -- load -----------------------------------------------------------------------------------
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    def num_running(self) -> int:
        return self.scheduler.num_running

    def kv_cache_usage(self) -> KVCacheUsage:
        a = self.allocator
        return KVCacheUsage(a.num_blocks - a.num_free, a.num_blocks, self.config.cache.block_size)

    # -- sparse prefill: statistics and calibration ---------------------------------------------
    def _sparse(self):
        pattern = self.worker.backend.pattern
        if self.config.sparse is None:
            raise TurboctxError("sparse prefill is off in this engine (attention='dense', or "
                                "'auto' off a GPU)")
        return pattern

    def sparse_config(self):
        """The sparse budgets in force (after calibration, the calibrated ones)."""
        return self._sparse().config

    def sparse_stats(self) -> dict | None:
        """Counts, density and timing of sparse prefill since the last reset (None: no sparse
        prefill). Under tensor parallelism, rank 0's heads."""
        return self._sparse().stats.as_dict() if self.config.sparse is not None else None

    def reset_sparse_stats(self, timing: bool = False) -> None:
        """Starts counting afresh; timing=True also times estimation and attention on CUDA
        (events read at the next sparse_stats())."""
        from turboctx.attention.sparse.stats import SparseStats
        pattern = self._sparse()
        pattern.stats, pattern.timing = SparseStats(), timing

    def observe_sparse_recall(self, observer: RecallObserver | None) -> None:
        """Each sparse (chunk, layer) reports its heads' attention recall to `observer` (None:
        stop). One rank only."""
        if self.executor is not None:
            raise TurboctxError("recall is observed on one rank; calibrate with tensor_parallel_size=1")
        self._sparse().observer = observer

    def set_sparse_budgets(self, budgets: list[list[tuple[int, int]]],
                           scores: list[list[float]] | None = None) -> None:
        """Per-head (vertical, slash) budgets, budgets[layer][head], from now on. One rank only."""
        if self.executor is not None:
            raise TurboctxError("sparse budgets are set on one rank; use tensor_parallel_size=1")
        pattern = self._sparse()
        pattern.config = pattern.config.with_budgets(budgets, scores)

    # -- requests -------------------------------------------------------------------------------
    def make_request(self, prompt: str | list[int], params: SamplingParams,
                     request_id: str | None = None, chat: bool = False) -> Request:
        """Validate and tokenize; raises InvalidRequestError / PromptTooLongError."""
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt is empty; give at least one token")
            if self.tokenizer is None:
                raise InvalidRequestError(
                    f"model {self.checkpoint.source} has no tokenizer; pass prompts as token id lists")
            ids = self.tokenizer.encode(prompt, add_special_tokens=not chat)
            text = prompt
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            ids, text = list(prompt), None
            bad = [t for t in ids if not 0 <= t < self.architecture.vocab_size]
            if bad:
                raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary "
                                          f"[0, {self.architecture.vocab_size})")
        else:
            raise InvalidRequestError(
                f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise InvalidRequestError("prompt is empty after tokenization; give at least one token")
        vocab = self.architecture.vocab_size
        outside = [t for t in [*params.logit_bias, *params.stop_token_ids] if t >= vocab]
        if outside:
            raise InvalidRequestError(f"token id {outside[0]} in logit_bias / stop_token_ids is "
                                      f"outside the vocabulary [0, {vocab})")
        limit = self.config.max_model_len
        if len(ids) + params.max_tokens > limit:
            raise PromptTooLongError(len(ids), params.max_tokens, limit)
        rid = request_id if request_id is not None else str(next(self._ids))
        if rid in self.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in use")
        grammar = self._grammar_matcher(params) if params.structured_outputs is not None else None
        return Request(rid, text, ids, params, self.eos_token_ids, self.tokenizer, grammar=grammar)

    def compile_grammar(self, spec):
        """A StructuredOutputsParams compiled for this model's vocabulary (cached per spec);
        InvalidRequestError names what is wrong with a bad schema, regex or grammar."""
        from turboctx.structured import TokenizerInfo, compile_grammar
        if self.tokenizer is None:
            raise InvalidRequestError("structured output needs the model's tokenizer; this model has none")
        return compile_grammar(spec, TokenizerInfo.for_tokenizer(self.tokenizer, self.eos_token_ids))

    def _grammar_matcher(self, params: SamplingParams):
        """The request's grammar state (turboctx.structured)."""
        from turboctx.structured import GrammarMatcher
        if params.ignore_eos:
            raise InvalidRequestError("structured output ends where its grammar ends; it cannot be "
                                      "combined with ignore_eos")
        return GrammarMatcher(self.compile_grammar(params.structured_outputs))

    # -- kept contexts --------------------------------------------------------------------------
    def attach_context_store(self, store=None, match_prompts: bool = False):
        """Kept contexts (contexts/store.py; None: the default store). match_prompts: every
        request whose prompt starts with a kept context of this setup loads it first (serve)."""
        from turboctx.contexts.store import ContextStore
        from turboctx.engine.kept_contexts import KeptContexts
        self.kept_contexts = KeptContexts(self, store if store is not None else ContextStore())
        self._match_kept_contexts = match_prompts
        return self.kept_contexts

    def keep_context(self, name: str, token_ids: list[int]):
        """Saves the KV of token_ids (in the prefix cache after a prompt that starts with them)
        as context `name`; a KeepResult."""
        return (self.kept_contexts or self.attach_context_store()).keep(name, token_ids)

    def load_context(self, name: str, token_ids: list[int] | None = None):
        """Loads context `name` into the prefix cache (checked against token_ids when given); a
        LoadResult, or None when nothing is kept under that name."""
        return (self.kept_contexts or self.attach_context_store()).load(name, token_ids)

    def add_request(self, req: Request, *, precomputed_tokens: int = 0) -> None:
        """Queues a request. precomputed_tokens: prompt tokens whose KV is taken as already in the
        cache (decode benchmarks on a synthetic context); the rest is prefilled."""
        if precomputed_tokens:
            if not 0 < precomputed_tokens < req.num_prompt_tokens:
                raise InvalidRequestError(f"precomputed_tokens={precomputed_tokens} must be in "
                                          f"[0, {req.num_prompt_tokens})")
            req.num_computed_tokens = precomputed_tokens
        elif self.kept_contexts is not None and self._match_kept_contexts and \
                req.prompt_logprobs is None:
            if req.block_hashes is None:
                req.block_hashes = block_hashes(req.prompt_token_ids, self.config.cache.block_size)
            self.kept_contexts.load_for_prompt(req.block_hashes)
        self.requests[req.request_id] = req
        self.scheduler.add(req)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None or req.finished:
            return None
        self.scheduler.finish(req, "abort")
        return req.to_output()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def reset_prefix_cache(self) -> int:
        """Forgets the cached prefixes no running request uses; returns the blocks freed."""
        return self.allocator.reset_prefix_cache()

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """schedule -> execute -> update. Returns outputs of requests that advanced this step."""
        sched = self.scheduler.schedule()
        if not sched:
            return []
        t0 = time.perf_counter()
        out = self.runner.execute(sched)
        if self.device.type == "cuda" and not out.token_ids:
            torch.cuda.synchronize(self.device)      # a step that sampled nothing is still queued
        self.scheduler.observe_step(sched, time.perf_counter() - t0)
        return self.update(sched, out)

    def update(self, sched: SchedulerOutput, out: RunnerOutput) -> list[RequestOutput]:
        """Advances every scheduled request by its chunk and appends the sampled tokens."""
        self.scheduler.advance(sched)
        outputs: list[RequestOutput] = []
        for req, tok, lp in zip((c.request for c in sched if c.sample), out.token_ids, out.logprobs):
            reason = req.append_token(tok, lp)
            if reason is not None:
                self.scheduler.finish(req, reason)
                self.requests.pop(req.request_id, None)
            outputs.append(req.to_output(peak_memory(self.device) if req.finished else None))
        return outputs
