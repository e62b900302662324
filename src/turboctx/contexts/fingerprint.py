"""What a kept context's KV depends on, as one digest: the model and its weights, dtypes, the
cache's shape, the attention setup and the tokenizer. A context is loaded only into an engine
whose fingerprint is the same."""
from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import xxhash

FORMAT_VERSION = 1
EDGE_BYTES = 8 << 20    # a weight file is fingerprinted by its size, head and tail


@lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """xxh3-128 of a file's size, first and last EDGE_BYTES (headers carry tensor offsets)."""
    h = xxhash.xxh3_128(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > 2 * EDGE_BYTES:
            f.seek(size - EDGE_BYTES)
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def weights_digest(source: str, kind: str, seed: int) -> str:
    """Random weights: the preset and seed. Files: the digest of each weight and config file."""
    if kind == "random":
        return xxhash.xxh3_128(f"{source}:{seed}".encode()).hexdigest()
    path = Path(source)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir()
        if p.suffix in (".safetensors", ".bin", ".gguf", ".json") and p.is_file())
    h = xxhash.xxh3_128()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{_file_digest(str(p), st.st_size, st.st_mtime_ns)};".encode())
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    return xxhash.xxh3_128(tokenizer.backend.to_str().encode()).hexdigest()


def engine_fingerprint(engine) -> dict:
    """Everything that changes the KV an engine computes for a prompt (LLMEngine)."""
    c, cache = engine.config, engine.worker.kv_cache
    ckpt = engine.checkpoint
    sparse = None
    if c.sparse is not None:
        s = engine.sparse_config()
        fields = {k: v for k, v in dataclasses.asdict(s).items() if k != "head_scores"}
        sparse = {"budgets": xxhash.xxh3_128(json.dumps(fields, sort_keys=True, default=str)
                                             .encode()).hexdigest(),
                  "max_num_batched_tokens": c.max_num_batched_tokens}   # the chunk grid
    fp = {
        "format": FORMAT_VERSION,
        "model": ckpt.source,
        "weights": weights_digest(ckpt.source, ckpt.kind, c.model.seed),
        "architecture": xxhash.xxh3_128(json.dumps(dataclasses.asdict(ckpt.config), sort_keys=True,
                                                   default=str).encode()).hexdigest(),
        "device": engine.device.type,
        "dtype": str(c.dtype).removeprefix("torch."),
        "kv_cache_dtype": str(cache.dtype).removeprefix("torch."),
        "cache": [cache.num_layers, cache.num_kv_heads, cache.head_dim, cache.block_size],
        "tensor_parallel_size": c.parallel.tensor_parallel_size,
        "attention": c.attention_name,
        "dca": dataclasses.asdict(c.dca) if c.dca is not None else None,
        "sparse": sparse,
        "tokenizer": tokenizer_digest(engine.tokenizer),
    }
    if cache.quantized:     # FP8: where the scales come from
        fp["kv_cache_scales"] = "checkpoint" if cache.static_scales is not None else "per token"
    return fp


def fingerprint_digest(fp: dict) -> str:
    return xxhash.xxh3_128(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def differences(a: dict, b: dict) -> list[str]:
    """The fields in which two fingerprints differ (for the warning a mismatch gives)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
