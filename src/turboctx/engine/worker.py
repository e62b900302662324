"""One rank's share of an engine: its weights, attention backend, KV cache and model runner.

Without tensor parallelism the engine has one Worker holding the whole model. With it, every rank
builds a Worker from the same EngineConfig and its TPShard (distributed/partition.py): local heads,
local MLP rows, and a KV cache for its own KV heads. Rank 0's Worker lives in the LLMEngine; the
others run in worker processes (distributed/worker.py).
"""
from __future__ import annotations

import logging

import torch

from turboctx.attention.factory import build_attention_backend
from turboctx.attention.rotary import RotaryEmbedding
from turboctx.config import EngineConfig, ModelArchitecture
from turboctx.engine.memory import peak_memory, plan_kv_tokens
from turboctx.engine.runner import ModelRunner
from turboctx.kv_cache import KVCache
from turboctx.errors import ModelLoadError
from turboctx.models import build_model, fp8_linear
from turboctx.models.layers import FusedOps
from turboctx.weights import Checkpoint

log = logging.getLogger("turboctx")


class Worker:
    def __init__(self, ckpt: Checkpoint, config: EngineConfig, device: torch.device, group=None):
        from turboctx.distributed.partition import local_architecture, plan_shard, shard_sparse_config
        self.config, self.device, self.group = config, device, group
        m = ckpt.config
        self.shard = plan_shard(m, group.rank, group.world_size) if group is not None else None
        self.architecture: ModelArchitecture = m if self.shard is None else local_architecture(m, self.shard)
        self.model = load_model(ckpt, self.architecture, config, device, self.shard, group)
        sparse = config.sparse
        if self.shard is not None and sparse is not None:
            sparse = shard_sparse_config(sparse, self.shard)     # this rank's heads' budgets
        a = self.architecture
        rotary = RotaryEmbedding(a.head_dim, a.rope_theta, a.rope_scaling, a.max_position_embeddings)
        self.backend = build_attention_backend(rotary, a.head_dim, config.dca, sparse, device)
        self.kv_cache: KVCache | None = None
        self.runner: ModelRunner | None = None

    def plan_kv_tokens(self) -> int:
        """Cache tokens this rank's memory allows (for its own KV heads)."""
        return plan_kv_tokens(self.architecture, self.config, self.device)

    def init_cache(self, kv_tokens: int, executor=None) -> int:
        """Allocates the KV cache and the runner; returns the number of blocks."""
        cfg, m = self.config, self.architecture
        num_blocks = -(-kv_tokens // cfg.cache.block_size)
        self.kv_cache = KVCache(m.num_hidden_layers, m.num_key_value_heads, m.head_dim,
                                num_blocks, cfg.cache.block_size, cfg.dtype, self.device,
                                storage_dtype=cfg.kv_cache_dtype, static_scales=self._kv_scales())
        # a captured graph would replay rank 0's step alone: with tensor parallelism every rank
        # runs each step eagerly
        graphs = not cfg.model.enforce_eager and self.group is None
        rng = torch.Generator(device=self.device).manual_seed(cfg.model.seed)
        self.runner = ModelRunner(self.model, self.backend, self.kv_cache, self.device, cfg.dtype,
                                  cuda_graphs=graphs, max_model_len=cfg.max_model_len,
                                  executor=executor, generator=rng)
        return num_blocks

    def _kv_scales(self) -> dict[str, torch.Tensor] | None:
        """The checkpoint's KV-cache scales ([L, Hkv] for k and v), for the FP8 cache only."""
        found = getattr(self.model, "kv_scales", None)
        if found is None or not (found.found or found.skipped):
            return None
        if self.config.cache.kv_cache_dtype == "auto":
            log.info("the checkpoint ships attention scales; its k_scale / v_scale are used with "
                     "kv_cache_dtype='fp8'")
            return None
        if found.skipped:
            log.info("%d q_scale / prob_scale tensors of the checkpoint are not used (they are for "
                     "FP8 attention kernels)", len(found.skipped))
        m = self.architecture
        return found.tensors(m.num_hidden_layers, m.num_key_value_heads)

    # -- what rank 0 can ask of every rank (LLMEngine.collective_rpc) ---------------------------
    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int:
        return peak_memory(self.device)

    def fill_kv_cache_random(self, seed: int) -> None:
        """Random (never zero) cache contents, for decode benchmarks on a synthetic context."""
        g = torch.Generator(device=self.device).manual_seed(seed + (self.group.rank if self.group else 0))
        c = self.kv_cache
        for t in (c.k, c.v):
            if c.quantized:     # N(0, 1) values with scale 1 (set at allocation)
                for layer in t:
                    layer.copy_(torch.randn(layer.shape, generator=g, device=self.device,
                                            dtype=c.compute_dtype).clamp_(-448, 448))
            else:
                t.normal_(0, 1, generator=g)


def load_model(ckpt: Checkpoint, m: ModelArchitecture, config: EngineConfig, device: torch.device,
               shard=None, group=None):
    """Builds the model of architecture m (the rank's local one under tensor parallelism) and
    loads its weights."""
    seed = config.model.seed
    with torch.device("meta"):
        model = build_model(m)
        if shard is not None:
            from turboctx.distributed.parallel_layers import parallelize_model
            parallelize_model(model, shard, group.device_group)
    model = model.to(config.dtype)
    if m.quantization == "fp8":      # the checkpoint ships e4m3 projections: FP8 layers to load into
        if shard is not None:
            raise ModelLoadError("an FP8 checkpoint under tensor parallelism is not supported yet; "
                                 "use its bf16 checkpoint with quantization='fp8', or one GPU")
        fp8_linear.quantize_linear_layers(model, keep_modules=m.quantization_ignored)  # shapes only
    model = model.to_empty(device=device)
    if m.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if shard is None:
        if ckpt.kind == "random":
            model.init_random_(seed)
        else:
            model.load_weights(ckpt.iter_tensors())
    else:
        from turboctx.distributed.partition import shard_tensors
        from turboctx.models.llama import random_hf_tensors
        full = ckpt.config
        tensors = (random_hf_tensors(full, seed, config.dtype, device) if ckpt.kind == "random"
                   else ckpt.iter_tensors())
        model.load_weights(shard_tensors(tensors, full, shard))
    model.set_split_matmuls(device.type == "cpu")
    if config.model.quantization == "fp8":
        if m.quantization != "fp8":
            kept = config.model.ignored_projections
            n = fp8_linear.quantize_linear_layers(model, keep=kept)
            log.info("quantization=fp8: %d linear layers in e4m3 with per-channel scales%s", n,
                     f" ({', '.join(kept)} in {config.model.dtype})" if kept else "")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            if not config.model.enforce_eager:
                fp8_linear.enable_compiled()
    if device.type == "cuda" and not config.model.enforce_eager:
        FusedOps.enable_compiled()
    return model.eval().requires_grad_(False)
