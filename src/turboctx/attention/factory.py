"""Picks and builds the attention backend from the engine's options."""
from __future__ import annotations

import torch

from turboctx.attention.backend import AttentionBackend
from turboctx.attention.dca import DCAAttentionBackend, DCAConfig
from turboctx.attention.dense import DenseAttentionBackend
from turboctx.attention.sparse import SparseAttentionBackend
from turboctx.attention.sparse_config import SparseConfig
from turboctx.attention.sparse_dca import DCASparseAttentionBackend
from turboctx.config import EngineConfig, ModelConfig
from turboctx.errors import InvalidRequestError
from turboctx.models.layers import RotaryEmbedding


ENGINE_ATTENTION_OPTIONS = ("dca", "dca_chunk_size", "dca_local_size", "dca_yarn", "dca_yarn_per_position",
                            "original_max_position_embeddings", "sparse_threshold", "sparse_config",
                            "sparse_dense_tail")


def make_rotary(m: ModelConfig, device: torch.device) -> RotaryEmbedding:
    return RotaryEmbedding(m.head_dim, m.rope_theta, m.rope_scaling, m.max_position_embeddings).to(device)


def make_attention_backend(m: ModelConfig, e: EngineConfig, options: dict,
                           device: torch.device, model_dir: str | None = None) -> AttentionBackend:
    options = dict(options)
    unknown = set(options) - set(ENGINE_ATTENTION_OPTIONS)
    if unknown:
        raise InvalidRequestError(f"unknown engine option(s) {sorted(unknown)}; known: "
                                  f"{', '.join(ENGINE_ATTENTION_OPTIONS)}")
    rotary = make_rotary(m, device)
    dca = dca_config(m, options)
    sparse = sparse_config(e, options, model_dir, device)
    if dca is not None and sparse is not None:
        return DCASparseAttentionBackend(rotary, m.head_dim, dca, sparse)
    if dca is not None:
        return DCAAttentionBackend(rotary, m.head_dim, dca)
    if sparse is not None:
        return SparseAttentionBackend(rotary, m.head_dim, sparse)
    return DenseAttentionBackend(rotary, m.head_dim)


def sparse_config(e: EngineConfig, options: dict, model_dir: str | None,
                  device: torch.device) -> SparseConfig | None:
    """attention='dense': exact attention everywhere (sparse_threshold is then an error).
    attention='sparse': vertical-slash prefill for every chunk whose sequence length at the
    chunk's end reaches sparse_threshold (default 32768), on any device; dense below it and for
    decode. attention='auto': the same on CUDA, where the kernels pay; dense on the CPU (there the
    sparse path is the slow reference-grade one, kept for tests).
    Budgets: the sparse_config file option, else sparse_attention_config.json inside an HF
    weights folder (Qwen2.5-*-1M ship one; a GGUF's folder is not searched: it may hold other
    models), else 1000 vertical / 6096 slash lines per head. sparse_dense_tail: the prompt's last
    tokens that attend densely (SparseConfig.dense_tail, default 512)."""
    threshold = options.get("sparse_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int)
                                  or threshold < 1):
        raise InvalidRequestError(f"sparse_threshold={threshold!r} must be a positive int "
                                  "(tokens), e.g. 32768")
    tail = options.get("sparse_dense_tail")
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 0):
        raise InvalidRequestError(f"sparse_dense_tail={tail!r} must be an int >= 0 (tokens at the "
                                  "prompt's end that attend densely; 0: none)")
    if e.attention == "dense" or (e.attention == "auto" and device.type != "cuda"):
        given = [k for k in ("sparse_threshold", "sparse_config", "sparse_dense_tail")
                 if options.get(k) is not None]
        if given and e.attention == "dense":
            raise InvalidRequestError(f"{', '.join(given)} given but attention='dense'; use "
                                      "attention='sparse' (or 'auto' on a GPU)")
        return None
    overrides = {k: v for k, v in (("threshold", threshold), ("dense_tail", tail)) if v is not None}
    try:
        cfg = SparseConfig.for_model_dir(model_dir, **overrides)
        if options.get("sparse_config"):
            cfg = cfg.with_file(options["sparse_config"])
        return cfg
    except (ValueError, OSError) as err:
        raise InvalidRequestError(f"sparse attention config: {err}") from None


def dca_config(m: ModelConfig, options: dict) -> DCAConfig | None:
    """DCA is on when asked (dca=True) or when the model ships a dual_chunk_attention_config
    (Qwen2.5-*-1M), unless dca=False."""
    on = options.get("dca")
    if on is None:
        on = m.dual_chunk_attention_config is not None
    if not on:
        extra = [k for k in ("dca_chunk_size", "dca_local_size", "dca_yarn", "dca_yarn_per_position")
                 if options.get(k) is not None]
        if extra:
            raise InvalidRequestError(f"{', '.join(extra)} given but DCA is off; add dca=True")
        return None
    overrides = {"chunk_size": options.get("dca_chunk_size"),
                 "local_size": options.get("dca_local_size"),
                 "original_max_position_embeddings": options.get("original_max_position_embeddings"),
                 "yarn_scaling": options.get("dca_yarn"),
                 "yarn_per_position": options.get("dca_yarn_per_position")}
    try:
        return DCAConfig.from_model(m, overrides)
    except ValueError as err:
        raise InvalidRequestError(str(err)) from None
