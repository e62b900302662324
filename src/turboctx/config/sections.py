"""The parts of the engine's configuration a user sets: one frozen dataclass per part, each field
an engine option (options.py) validated on construction. Names follow vLLM where it has the
concept. `None` means "from the model or the device": EngineConfig.resolve fills it in.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from turboctx.attention.sparse.config import SparseConfig
from turboctx.config.checkpoint_quantization import FUSED_KIND_OF, PROJECTION_KINDS
from turboctx.config.options import OptionSpec, option, section_specs
from turboctx.errors import InvalidRequestError

DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "half": "float16"}
GPU_BATCHED_TOKENS, CPU_BATCHED_TOKENS = 32768, 2048
GPU_MAX_ITL_MS = 25.0         # default latency target of steps with running decodes on GPUs
# On the CPU: this many times the decodes' own step time. Higher gives a long prompt more of each
# step, lower keeps the clients' p99 nearer their own: at 7 a 12K prompt beside 4 clients had
# 1.19-1.27x its TTFT alone and their p99 2.8-3.4x; 7.5 leaves the CPU criterion's two bounds
# (1.3x, 4x) a like margin.
CPU_ITL_DECODE_FACTOR = 7.5


class Section:
    """Validates (and normalizes) every option field on construction."""

    def __post_init__(self):
        for spec in specs_of(type(self)):
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))


@lru_cache(maxsize=None)
def specs_of(cls: type) -> tuple[OptionSpec, ...]:
    return tuple(section_specs(SECTION_NAMES[cls], cls))


@dataclass(frozen=True)
class ModelConfig(Section):
    model: str | None = option(
        None, "HF folder, .gguf file or random:<preset>; default: SmolLM2-135M-Instruct",
        flags=("-m",))
    device: str = option("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    dtype: str = option("auto", "auto (bfloat16 on CUDA, float32 on the CPU) | float32 | "
                        "bfloat16 | float16",
                        choices=("auto", "float32", "bfloat16", "float16"), aliases=DTYPE_ALIASES)
    max_model_len: int | None = option(
        None, "longest prompt + output in tokens (e.g. 128k); default: the model's trained length",
        minimum=1, size=True)
    quantization: str | None = option(
        None, "linear layers: unset (as loaded) | fp8 (e4m3 weights with a scale per output "
        "channel, activations scaled per token: half the weight bytes, ~1.7x the GEMM rate; "
        "needs FP8 tensor cores, compute capability 8.9+)", choices=("fp8",))
    quantization_ignored_layers: str = option(
        "none", "with quantization=fp8: kinds of projection kept in the model's dtype, "
        "comma-separated, of qkv_proj, o_proj, gate_up_proj, down_proj (e.g. qkv_proj: "
        "the kind that loses the most per FLOP) | none", aliases={"": "none"})
    seed: int = option(0, "seed of random:<preset> weights and of requests that set none")
    enforce_eager: bool = option(
        False, "decode without CUDA graphs and run norms without torch.compile")
    generation_config: str = option(
        "auto", "sampling defaults for requests that leave a field out: auto (the model's "
        "generation_config.json) | none | a folder holding a generation_config.json")

    def __post_init__(self):
        super().__post_init__()
        gc = self.generation_config
        if gc not in ("auto", "none") and not (Path(gc) / "generation_config.json").is_file():
            raise InvalidRequestError(
                f"generation_config={gc!r} is not auto, none or a folder holding a "
                f"generation_config.json")
        dev = self.device.lower()
        if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            raise InvalidRequestError(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:N")
        object.__setattr__(self, "device", dev)
        object.__setattr__(self, "quantization_ignored_layers",
                           ",".join(self.ignored_projections) or "none")
        if self.ignored_projections and self.quantization != "fp8":
            raise InvalidRequestError(
                f"quantization_ignored_layers={self.quantization_ignored_layers!r} keeps layers "
                f"out of quantization='fp8', which is not set; set it or leave them unset")

    @property
    def ignored_projections(self) -> tuple[str, ...]:
        """quantization_ignored_layers as projection kinds, in the model's order; raises on a
        name that is not one, or when it would leave nothing to quantize."""
        text = self.quantization_ignored_layers.strip()
        names = [] if text.lower() == "none" else [n.strip() for n in text.split(",") if n.strip()]
        for n in names:
            if n not in PROJECTION_KINDS:
                fused = FUSED_KIND_OF.get(n)
                hint = f" ({n} is part of the fused {fused})" if fused else ""
                raise InvalidRequestError(
                    f"quantization_ignored_layers: {n!r} is not a kind of projection{hint}; "
                    f"allowed: {', '.join(PROJECTION_KINDS)} or none")
        kept = tuple(k for k in PROJECTION_KINDS if k in names)
        if len(kept) == len(PROJECTION_KINDS):
            raise InvalidRequestError("quantization_ignored_layers names every kind of projection: "
                                      "nothing would be FP8; leave quantization unset instead")
        return kept


@dataclass(frozen=True)
class CacheConfig(Section):
    block_size: int = option(256, "KV cache block, in tokens", minimum=1)
    kv_cache_dtype: str = option(
        "auto", "KV cache storage: auto (the model's dtype) | fp8 (e4m3 with a scale per token "
        "and KV head: half the bytes; a checkpoint's k_scale / v_scale are used when it ships "
        "them)", choices=("auto", "fp8"), aliases={"fp8_e4m3": "fp8"})
    gpu_memory_utilization: float = option(0.92, "share of GPU memory the engine may take",
                                           minimum=0.05, maximum=1.0)
    enable_prefix_caching: bool = option(
        True, "reuse the KV of a prompt prefix seen before (least recently used ones are evicted)")
    kv_cache_tokens: int | None = option(
        None, "KV cache size in tokens; default: what memory allows", minimum=1, size=True)


@dataclass(frozen=True)
class SchedulerConfig(Section):
    max_num_seqs: int = option(64, "requests running at once", minimum=1)
    max_num_batched_tokens: int | None = option(
        None, f"tokens per step, the chunked-prefill budget; default: {GPU_BATCHED_TOKENS} on "
        f"GPUs, {CPU_BATCHED_TOKENS} on the CPU", minimum=1, size=True)
    max_itl_ms: float | None = option(
        None, "inter-token latency target of steps that carry running decodes: the prefill "
        "work beside them is sized to fit, by a cost model fitted to the steps run; default: "
        f"{GPU_MAX_ITL_MS:g} on GPUs, on the CPU {CPU_ITL_DECODE_FACTOR:g}x the decodes' own "
        "step time")

    def __post_init__(self):
        super().__post_init__()
        if self.max_itl_ms is not None and not self.max_itl_ms > 0:
            raise InvalidRequestError(f"max_itl_ms={self.max_itl_ms:g} must be above 0 (the "
                                      "milliseconds a step beside running decodes may take)")


@dataclass(frozen=True)
class ParallelConfig(Section):
    tensor_parallel_size: int = option(
        1, "split the model over this many processes (GPUs), Megatron-style", minimum=1,
        flags=("-tp",))


@dataclass(frozen=True)
class AttentionConfig(Section):
    """What the user asks of attention; EngineConfig.resolve turns it into a DCAConfig and a
    SparseConfig (or None for either)."""
    attention: str = option(
        "auto", "auto | dense | sparse: vertical-slash sparse prefill for prompt rows from "
        "--sparse-threshold on (auto: on GPUs only; dense on the CPU)",
        choices=("auto", "dense", "sparse"))
    dca: bool | None = option(
        None, "Dual Chunk Attention, for prompts past the trained length; default: as the "
        "model's config says")
    dca_chunk_size: int | None = option(
        None, "DCA chunk: the longest query-key distance + 1; default: the model's "
        "dual_chunk_attention_config, else its trained length", minimum=2, size=True)
    dca_local_size: int | None = option(
        None, "DCA window of the previous chunk kept at true distances; default: the model's, "
        "else chunk size / 8", minimum=0, size=True)
    dca_original_max_position_embeddings: int | None = option(
        None, "the trained length YaRN's scale is relative to; default: the model's",
        minimum=1, size=True)
    sparse_threshold: int | None = option(
        None, f"prompt rows from this position on run sparse (default {SparseConfig.threshold})",
        minimum=1, size=True)
    sparse_dense_tail: int | None = option(
        None, f"tokens at the prompt's end that attend densely under sparse prefill (default "
        f"{SparseConfig.dense_tail}; 0: none)", minimum=0, size=True)
    sparse_config: str | None = option(
        None, "per-head sparse budgets (sparse_attention_config.json, e.g. from `turboctx "
        "calibrate`); default: the file beside HF weights, else "
        f"{SparseConfig.vertical_size} vertical / {SparseConfig.slash_size} slash lines per head")

    @property
    def dca_options(self) -> dict:
        return {k: getattr(self, k) for k in ("dca_chunk_size", "dca_local_size",
                                              "dca_original_max_position_embeddings")
                if getattr(self, k) is not None}

    @property
    def sparse_options(self) -> dict:
        return {k: getattr(self, k) for k in ("sparse_threshold", "sparse_dense_tail", "sparse_config")
                if getattr(self, k) is not None}


SECTIONS = {"model": ModelConfig, "cache": CacheConfig, "scheduler": SchedulerConfig,
            "parallel": ParallelConfig, "attention": AttentionConfig}
SECTION_NAMES = {cls: name for name, cls in SECTIONS.items()}
