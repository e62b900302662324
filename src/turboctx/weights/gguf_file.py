"""GGUF files (llama.cpp): config from metadata, tensors dequantized one at a time to HF names."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from turboctx.config.architecture import ModelArchitecture
from turboctx.errors import ModelLoadError, UnsupportedModelError
from turboctx.tokenizer import Tokenizer, gguf_value
from turboctx.weights.checkpoint import Checkpoint
from turboctx.weights.gguf_reader import GGUFFile

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# Tensor types we dequantize (through gguf.quants.dequantize).
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_PER_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_SKIPPED = {"rope_freqs.weight"}  # llama.cpp's precomputed rope factors; not a HF parameter
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF parameter name of a GGUF tensor, or None if it has none."""
    m = _LAYER_RE.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part in _PER_LAYER:
            return f"model.layers.{layer}.{_PER_LAYER[part]}.{kind}"
        return None
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _TOP_LEVEL and kind in ("weight", "bias"):
        return f"{_TOP_LEVEL[stem]}.{kind}"
    return None


def open_gguf(path: Path, kind: str = "gguf") -> Checkpoint:
    if not is_gguf(path):
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with b'GGUF'); "
                             f"give a .gguf file, a Hugging Face folder or random:<preset>")
    try:
        reader = GGUFFile(path)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt header raises all sorts
        raise ModelLoadError(f"cannot read GGUF file {path}: {e}") from e
    arch = gguf_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} in {path} is not supported; "
                                    f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    names = _check_tensors(reader, path)
    tokenizer = Tokenizer.from_gguf(reader) if "tokenizer.ggml.model" in reader.fields else None
    config = gguf_config(reader, arch, names, tokenizer, name=str(
        gguf_value(reader, "general.name") or path.stem))
    if "rope_freqs.weight" in names:
        warnings.warn(f"{path.name} carries rope_freqs (Llama 3.1-style rope scaling), which GGUF "
                      f"loading ignores; load the Hugging Face folder for contexts past "
                      f"{config.max_position_embeddings} tokens", stacklevel=3)
    return Checkpoint(config=config, tokenizer=tokenizer, source=str(path), kind=kind,
                      tensor_stream=lambda: _stream(reader, config))


def _check_tensors(reader, path: Path) -> set[str]:
    names = set()
    for t in reader.tensors:
        if t.name in _SKIPPED:
            names.add(t.name)
            continue
        if t.type_name not in SUPPORTED_TENSOR_TYPES:
            raise UnsupportedModelError(
                f"tensor {t.name} in {path} has type {t.type_name}, which is not supported; "
                f"supported: {', '.join(SUPPORTED_TENSOR_TYPES)}")
        if hf_tensor_name(t.name) is None:
            raise UnsupportedModelError(f"tensor {t.name} in {path} has no Llama/Qwen2 counterpart")
        names.add(t.name)
    return names


def gguf_config(reader, arch: str, names: set[str], tokenizer: Tokenizer | None,
                name: str) -> ModelArchitecture:
    def meta(key, default=None):
        return gguf_value(reader, f"{arch}.{key}", default)

    hidden, heads = meta("embedding_length"), meta("attention.head_count")
    if hidden is None or heads is None or meta("block_count") is None:
        raise ModelLoadError(f"GGUF metadata lacks {arch}.embedding_length / attention.head_count "
                             f"/ block_count")
    vocab = meta("vocab_size")
    if vocab is None:
        tokens = gguf_value(reader, "tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else next(
            int(t.shape[0]) for t in reader.tensors if t.name == "token_embd.weight")
    rope_scaling = None
    rtype = meta("rope.scaling.type")
    if rtype not in (None, "none"):
        rope_scaling = {"rope_type": rtype, "factor": float(meta("rope.scaling.factor", 1.0))}
        orig = meta("rope.scaling.original_context_length")
        if orig is not None:
            rope_scaling["original_max_position_embeddings"] = int(orig)
    eos_ids = [] if tokenizer is None else tokenizer.eos_token_ids
    eos = gguf_value(reader, "tokenizer.ggml.eos_token_id")
    if eos is not None and eos not in eos_ids:
        eos_ids = [eos, *eos_ids]
    return ModelArchitecture(
        family=arch, vocab_size=int(vocab), hidden_size=int(hidden),
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")), num_attention_heads=int(heads),
        num_key_value_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=int(meta("attention.key_length", hidden // heads)),
        max_position_embeddings=int(meta("context_length", 4096)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(meta("rope.freq_base", 10000.0)), rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=gguf_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=list(eos_ids), torch_dtype="float32", name=name)


def _stream(reader, config: ModelArchitecture):
    from gguf.quants import dequantize

    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        if name is None:
            continue
        arr = np.asarray(dequantize(t.data, t.qtype), dtype=np.float32).reshape(t.shape)
        if config.family == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
            n = config.num_attention_heads if ".attn_q." in t.name else config.num_key_value_heads
            arr = unpermute_rope(arr, n)
        if not (arr.flags.writeable and arr.flags.c_contiguous):  # a view of the read-only map
            arr = np.array(arr, dtype=np.float32, copy=True)
        yield name, torch.from_numpy(arr)


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rope pairs -> HF's half-split layout)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
