"""The engine: a model, its KV cache and a scheduler; `step()` advances every request."""
from __future__ import annotations

import itertools
import logging
import time
import weakref

import torch

from turboctx.config import EngineConfig, ModelConfig, parse_dtype
from turboctx.engine.memory import peak_memory
from turboctx.engine.outputs import RequestOutput
from turboctx.engine.request import Request
from turboctx.engine.sampler import sample
from turboctx.engine.sampling_params import SamplingParams
from turboctx.engine.scheduler import Scheduler
from turboctx.engine.worker import Worker
from turboctx.errors import InvalidRequestError, PromptTooLongError
from turboctx.kv_cache import BlockAllocator
from turboctx.weights import open_checkpoint

log = logging.getLogger("turboctx")

GPU_PREFILL_CHUNK, CPU_PREFILL_CHUNK = 32768, 2048


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(f"device {device!r} asked for, but CUDA is not available; use device='cpu'")
    if d.type not in ("cuda", "cpu"):
        raise InvalidRequestError(f"device {device!r} is not supported; use 'cpu' or 'cuda[:N]'")
    return d


class LLMEngine:
    def __init__(self, model: str | None = None, *, device=None, dtype=None,
                 max_model_len: int | None = None, prefill_chunk_size: int | None = None,
                 kv_cache_tokens: int | None = None, max_num_seqs: int = 64, block_size: int = 256,
                 gpu_memory_utilization: float = 0.92, attention: str = "dense", seed: int = 0,
                 compile_kernels: bool = True, enable_prefix_caching: bool = True,
                 cuda_graphs: bool | None = None, tensor_parallel_size: int = 1, **backend_options):
        self.device = resolve_device(device)
        ckpt = open_checkpoint(model)
        self.checkpoint, self.tokenizer = ckpt, ckpt.tokenizer
        self.model_config: ModelConfig = ckpt.config
        m = self.model_config
        dt = parse_dtype(dtype) or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.config = EngineConfig(
            device=str(self.device), dtype=dt,
            max_model_len=max_model_len or m.max_position_embeddings,
            prefill_chunk_size=prefill_chunk_size or (
                GPU_PREFILL_CHUNK if self.device.type == "cuda" else CPU_PREFILL_CHUNK),
            block_size=block_size, max_num_seqs=max_num_seqs, kv_cache_tokens=kv_cache_tokens,
            gpu_memory_utilization=gpu_memory_utilization, attention=attention, seed=seed,
            enable_prefix_caching=enable_prefix_caching, cuda_graphs=cuda_graphs,
            tensor_parallel_size=tensor_parallel_size)
        cfg = self.config
        self.executor = self._start_ranks(model, backend_options, compile_kernels)
        group = self.executor.group if self.executor is not None else None
        if group is not None:
            self.device = group.device
        try:
            self.worker = Worker(ckpt, cfg, self.device, backend_options, compile_kernels, group)
            kv_tokens = self.worker.plan_kv_tokens()
            if self.executor is not None:
                kv_tokens = self.executor.agree_kv_tokens(kv_tokens)
            num_blocks = self.worker.init_cache(kv_tokens, self.executor)
            if self.executor is not None:
                self.executor.ready()
        except BaseException as e:
            if self.executor is None or self.executor.stopped is not None:
                raise
            err = self.executor.fail(e, "while starting")    # rank 0 failed: stop the others
            if err is e:
                raise
            raise err from e
        w = self.worker
        self.model, self.backend, self.kv_cache, self.runner = w.model, w.backend, w.kv_cache, w.runner
        self.allocator = BlockAllocator(num_blocks)
        self.scheduler = Scheduler(self.allocator, cfg.block_size, cfg.prefill_chunk_size, cfg.max_num_seqs,
                                   cfg.enable_prefix_caching, self.backend.chunk_dependent_from(),
                                   self.backend.prompt_tail_dependent())
        self.eos_token_ids = sorted(set(m.eos_token_ids) | set(
            self.tokenizer.eos_token_ids if self.tokenizer else []))
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()

    def _start_ranks(self, model, backend_options: dict, compile_kernels: bool):
        """Tensor parallelism: the other ranks, started (or joined, under torchrun) and stopped
        with this engine. Under torchrun, ranks > 0 never return from here."""
        if self.config.tensor_parallel_size == 1:
            return None
        from turboctx.distributed.executor import TPExecutor
        from turboctx.distributed.partition import check_tensor_parallel
        from turboctx.distributed.worker import RankSpec
        check_tensor_parallel(self.model_config, self.config.tensor_parallel_size)
        spec = RankSpec(model, self.config, dict(backend_options), compile_kernels)
        executor = TPExecutor.launch(spec, self.device)
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

    # -- requests ---------------------------------------------------------------------------
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
            bad = [t for t in ids if not 0 <= t < self.model_config.vocab_size]
            if bad:
                raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary "
                                          f"[0, {self.model_config.vocab_size})")
        else:
            raise InvalidRequestError(
                f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise InvalidRequestError("prompt is empty after tokenization; give at least one token")
        limit = self.config.max_model_len
        if len(ids) + params.max_tokens > limit:
            raise PromptTooLongError(len(ids), params.max_tokens, limit)
        rid = request_id if request_id is not None else str(next(self._ids))
        if rid in self.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in use")
        req = Request(rid, text, ids, params, self.eos_token_ids)
        req.cache_salt = self.backend.prefix_cache_salt(len(ids))
        return req

    def add_request(self, req: Request) -> None:
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

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """schedule -> execute -> update. Returns outputs of requests that advanced this step."""
        chunks = self.scheduler.schedule()
        if not chunks:
            return []
        logits = self.runner.execute(chunks)
        sampled = [c for c in chunks if c.sample]
        for c in chunks:
            c.request.num_computed_tokens += c.num_tokens
        outputs: list[RequestOutput] = []
        if sampled:
            reqs = [c.request for c in sampled]
            tokens, lps = sample(logits, reqs)
            for req, tok, lp in zip(reqs, tokens, lps):
                self._append_token(req, tok, lp)
                outputs.append(req.to_output(peak_memory(self.device) if req.finished else None))
                if req.finished:
                    self.requests.pop(req.request_id, None)
        return outputs

    def _append_token(self, req: Request, tok: int, lp: dict | None) -> None:
        now = time.perf_counter()
        if req.first_token_time is None:
            req.first_token_time = now
        req.output_token_ids.append(tok)
        if lp is not None:
            req.logprobs.append(lp)
        p = req.params
        if self.tokenizer is not None:
            req.text = self.tokenizer.decode(req.output_token_ids, skip_special_tokens=p.skip_special_tokens)
        if tok in req.eos_token_ids or tok in p.stop_token_ids:
            req.stop_reason = None if tok in req.eos_token_ids else tok
            return self.scheduler.finish(req, "stop")
        if p.stop and self._hit_stop_string(req):
            return self.scheduler.finish(req, "stop")
        if len(req.output_token_ids) >= p.max_tokens:
            return self.scheduler.finish(req, "length")

    @staticmethod
    def _hit_stop_string(req: Request) -> bool:
        for s in req.params.stop:
            i = req.text.find(s)
            if i >= 0:
                req.text = req.text[: i + len(s)] if req.params.include_stop_str_in_output else req.text[:i]
                req.stop_reason = s
                return True
        return False
