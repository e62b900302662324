"""EngineConfig: the whole configuration of an engine, built from keyword options and checked
before anything is loaded (`from_options`), then completed from the model's architecture and
the device (`resolve`): nothing below it reads an option that was not checked here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from turboctx.attention.dca import DCAConfig
from turboctx.attention.sparse.config import SparseConfig
from turboctx.config.architecture import ModelArchitecture
from turboctx.config.options import OptionTable
from turboctx.config.sections import (CPU_BATCHED_TOKENS, GPU_BATCHED_TOKENS, SECTIONS,
                                      AttentionConfig, CacheConfig, ModelConfig, ParallelConfig,
                                      SchedulerConfig, specs_of)
from turboctx.errors import InvalidRequestError
from turboctx.kv_cache.fp8 import FP8_DTYPE

ENGINE_OPTIONS = OptionTable([s for cls in SECTIONS.values() for s in specs_of(cls)])
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    # what runs, set by resolve(): None = plain RoPE positions / dense prefill
    dca: DCAConfig | None = None
    sparse: SparseConfig | None = None
    is_resolved: bool = False        # resolve() has run: every value above is concrete

    @classmethod
    def from_options(cls, **options: Any) -> "EngineConfig":
        """Keyword options by name (ENGINE_OPTIONS), each checked: an unknown name is an error
        naming the closest known one; a bad value names the option and what it allows."""
        parts = ENGINE_OPTIONS.by_section(options)
        return cls(**{name: SECTIONS[name](**parts.get(name, {})) for name in SECTIONS})

    # -- resolution ----------------------------------------------------------------------------
    def resolve(self, arch: ModelArchitecture, model_dir: str | Path | None = None,
                cuda_available: bool | None = None) -> "EngineConfig":
        """Every derived value made concrete: device, dtype, max_model_len, the step budget, and
        the attention setup (DCA from the model's config unless asked otherwise; sparse budgets
        from the given file, else the model folder's sparse_attention_config.json)."""
        if self.is_resolved:
            return self
        cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
        m = self.model
        device = resolve_device(m.device, cuda)
        on_gpu = device.startswith("cuda")
        if arch.quantization and m.ignored_projections:
            raise InvalidRequestError(
                f"the checkpoint ships its projections in {arch.quantization}: "
                f"quantization_ignored_layers={m.quantization_ignored_layers!r} applies to "
                f"quantizing a full-precision checkpoint at load; leave it unset")
        if arch.quantization and m.quantization is None:   # what the checkpoint ships (as vLLM)
            m = replace(m, quantization=arch.quantization)
        if m.quantization == "fp8":
            check_fp8_device(device)
        model = replace(m, device=device, dtype=dtype_name(m.dtype, on_gpu),
                        max_model_len=m.max_model_len or arch.max_position_embeddings)
        budget = self.scheduler.max_num_batched_tokens or (
            GPU_BATCHED_TOKENS if on_gpu else CPU_BATCHED_TOKENS)
        return replace(self, model=model,
                       scheduler=replace(self.scheduler, max_num_batched_tokens=budget),
                       dca=resolve_dca(self.attention, arch),
                       sparse=resolve_sparse(self.attention, on_gpu, model_dir, arch),
                       is_resolved=True)

    # -- what the engine reads -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.model.dtype]

    @property
    def kv_cache_dtype(self) -> torch.dtype:
        """What the KV cache stores: the model's dtype (auto) or float8_e4m3fn (fp8)."""
        return self.dtype if self.cache.kv_cache_dtype == "auto" else FP8_DTYPE

    @property
    def max_model_len(self) -> int:
        return self.model.max_model_len

    @property
    def max_num_batched_tokens(self) -> int:
        return self.scheduler.max_num_batched_tokens

    @property
    def attention_name(self) -> str:
        """dense | dca | sparse | dca+sparse: the positions and the prefill pattern in force."""
        if self.dca is not None:
            return "dca+sparse" if self.sparse is not None else "dca"
        return "sparse" if self.sparse is not None else "dense"


def dtype_name(dtype: str | None, on_gpu: bool) -> str:
    """A dtype option's value made concrete: auto (or None) is bfloat16 on CUDA, float32 on the CPU."""
    name = ENGINE_OPTIONS["dtype"].check(dtype or "auto")
    return name if name != "auto" else ("bfloat16" if on_gpu else "float32")


def torch_dtype(dtype: str | None, on_gpu: bool) -> torch.dtype:
    return TORCH_DTYPES[dtype_name(dtype, on_gpu)]


def resolve_device(device: str, cuda_available: bool) -> str:
    if device == "auto":
        return "cuda:0" if cuda_available else "cpu"
    if device.startswith("cuda") and not cuda_available:
        raise InvalidRequestError(f"device {device!r} asked for, but CUDA is not available; use "
                                  "device='cpu'")
    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return device


def check_fp8_device(device: str) -> None:
    """quantization='fp8' on a device without FP8 tensor cores: an error naming what is needed.
    (A CUDA device named where CUDA is absent, as in planning tests, is not examined.)"""
    from turboctx.models.fp8_linear import fp8_support_problem
    if device.startswith("cuda") and not torch.cuda.is_available():
        return
    problem = fp8_support_problem(torch.device(device))
    if problem:
        raise InvalidRequestError(problem)


def resolve_dca(a: AttentionConfig, arch: ModelArchitecture) -> DCAConfig | None:
    """DCA is on when asked (dca=True) or when the model ships a dual_chunk_attention_config
    (Qwen2.5-*-1M), unless dca=False. From that config: chunk_size / local_size /
    original_max_position_embeddings (vLLM's defaults 8192 / 1024 for missing keys; YaRN on iff
    original_max_position_embeddings is given, as in vLLM). Otherwise, with T the trained length:
    chunk_size = T (every distance inside the trained range), local_size = chunk_size // 8
    (vLLM's 8192 / 1024 ratio), YaRN relative to T."""
    on = a.dca if a.dca is not None else arch.dual_chunk_attention_config is not None
    given = a.dca_options
    if not on:
        if given:
            raise InvalidRequestError(f"{', '.join(given)} given but DCA is off; add dca=True")
        return None
    trained = arch.max_position_embeddings
    shipped = arch.dual_chunk_attention_config
    if shipped is not None:
        chunk = int(shipped.get("chunk_size", 8192))
        local = int(shipped.get("local_size", 1024))
        orig = shipped.get("original_max_position_embeddings")
        yarn, orig = bool(orig), int(orig) if orig else max(trained, chunk)
    else:
        chunk, local, orig, yarn = trained, None, trained, True
    chunk = given.get("dca_chunk_size", chunk)
    local = given.get("dca_local_size", chunk // 8 if local is None else local)
    try:
        return DCAConfig(chunk, local, given.get("dca_original_max_position_embeddings", orig),
                         yarn_scaling=yarn)
    except ValueError as err:
        raise InvalidRequestError(str(err)) from None


def resolve_sparse(a: AttentionConfig, on_gpu: bool, model_dir: str | Path | None,
                   arch: ModelArchitecture | None = None) -> SparseConfig | None:
    """attention='dense': exact attention everywhere (sparse options are then an error).
    attention='sparse': vertical-slash prefill for the prompt rows from sparse_threshold on, on any
    device; attention='auto' (the default): the same on CUDA, where the kernels pay, dense on the
    CPU (where sparse options are then an error). Per-head budgets must match the model."""
    given = a.sparse_options
    if a.attention == "dense" or a.attention == "auto" and not on_gpu:
        if given:
            where = "" if a.attention == "dense" else " (auto runs dense off a GPU)"
            raise InvalidRequestError(f"{', '.join(given)} given but attention='{a.attention}'"
                                      f"{where}; use attention='sparse'")
        return None
    overrides = {"threshold": a.sparse_threshold, "dense_tail": a.sparse_dense_tail}
    try:
        cfg = SparseConfig.for_model_dir(model_dir, **{k: v for k, v in overrides.items()
                                                       if v is not None})
        cfg = cfg.with_file(a.sparse_config) if a.sparse_config else cfg
        if arch is not None:
            cfg.check_model(arch.num_hidden_layers, arch.num_attention_heads)
        return cfg
    except (ValueError, OSError) as err:
        raise InvalidRequestError(f"sparse attention config: {err}") from None
