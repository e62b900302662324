"""Picks and builds the attention backend from the engine's options."""
from __future__ import annotations

from pathlib import Path

import torch

from turboctx.attention.backend import AttentionBackend
from turboctx.attention.dca import DCAAttentionBackend, DCAConfig
from turboctx.attention.dense import DenseAttentionBackend
from turboctx.attention.sparse import SparseAttentionBackend
from turboctx.attention.sparse_config import CONFIG_FILENAME as SPARSE_CONFIG_FILENAME, SparseConfig
from turboctx.config import EngineConfig, ModelConfig
from turboctx.errors import InvalidRequestError
from turboctx.models.layers import RotaryEmbedding


ENGINE_ATTENTION_OPTIONS = ("dca", "dca_chunk_size", "dca_local_size", "dca_yarn",
                            "original_max_position_embeddings", "sparse_threshold", "sparse_config")


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
    sparse = sparse_config(e, options, model_dir)
    if dca is not None and sparse is not None:
        raise InvalidRequestError("attention='sparse' together with DCA is not implemented yet; "
                                  "use attention='dense' with DCA, or sparse without DCA (dca=False)")
    if dca is not None:
        return DCAAttentionBackend(rotary, m.head_dim, dca)
    if sparse is not None:
        return SparseAttentionBackend(rotary, m.head_dim, sparse)
    return DenseAttentionBackend(rotary, m.head_dim)


def sparse_config(e: EngineConfig, options: dict, model_dir: str | None) -> SparseConfig | None:
    """'sparse': vertical-slash above the threshold; 'auto': the same when the checkpoint ships a
    calibrated sparse_attention_config.json, else dense; 'dense': never."""
    has_file = model_dir is not None and (Path(model_dir) / SPARSE_CONFIG_FILENAME).is_file()
    if e.attention == "dense" or (e.attention == "auto" and not has_file):
        if options.get("sparse_threshold") is not None and e.attention == "dense":
            raise InvalidRequestError("sparse_threshold given but attention='dense'; add attention='sparse'")
        return None
    overrides = {}
    if options.get("sparse_threshold") is not None:
        overrides["threshold"] = options["sparse_threshold"]
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
        extra = [k for k in ("dca_chunk_size", "dca_local_size", "dca_yarn") if options.get(k) is not None]
        if extra:
            raise InvalidRequestError(f"{', '.join(extra)} given but DCA is off; add dca=True")
        return None
    overrides = {"chunk_size": options.get("dca_chunk_size"),
                 "local_size": options.get("dca_local_size"),
                 "original_max_position_embeddings": options.get("original_max_position_embeddings"),
                 "yarn_scaling": options.get("dca_yarn")}
    try:
        return DCAConfig.from_model(m, overrides)
    except ValueError as err:
        raise InvalidRequestError(str(err)) from None
