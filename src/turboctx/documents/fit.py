"""Whether a prompt fits: max_model_len, the KV cache the memory holds, the trained length; and
when it does not, by how much and which options would make it fit."""
from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """What the engine would run with (from turboctx.engine.plan.memory_plan)."""
    max_model_len: int
    tokens_that_fit: int          # KV-cache tokens the memory holds (or --kv-cache-tokens)
    trained_context: int
    kv_bytes_per_token: int
    device_type: str              # "cpu" | "cuda"
    dtype: str
    dca: bool
    gpu_memory_utilization: float


@dataclass(frozen=True)
class FitCheck:
    prompt_tokens: int
    max_tokens: int
    fits: bool
    over_max_model_len: int       # tokens past max_model_len (0: within)
    over_memory: int              # tokens past what fits in memory (0: within)
    engine_cannot_start: bool     # max_model_len itself needs more KV than fits
    problems: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def needed_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens

    def message(self) -> str:
        """One paragraph: what is over, by how much, and what would make it fit."""
        return ("the documents do not fit: " + "; ".join(self.problems)
                + ". To make them fit: " + "; ".join(self.remedies) + ".")


def check_fit(prompt_tokens: int, max_tokens: int, limits: Limits) -> FitCheck:
    needed = prompt_tokens + max_tokens
    over_len = max(0, needed - limits.max_model_len)
    over_memory = max(0, needed - limits.tokens_that_fit)
    cannot_start = limits.max_model_len > limits.tokens_that_fit
    problems, remedies, warnings = [], [], []
    asked = f"{prompt_tokens:,} prompt tokens + {max_tokens:,} to generate = {needed:,}"
    if over_len:
        problems.append(f"{asked} is {over_len:,} tokens over max_model_len {limits.max_model_len:,}")
    if over_memory:
        gib = over_memory * limits.kv_bytes_per_token / GiB
        problems.append(f"{'that' if over_len else asked} is {over_memory:,} tokens over what fits in "
                        f"memory ({limits.tokens_that_fit:,} tokens of KV cache at "
                        f"{limits.kv_bytes_per_token:,} bytes each; {gib:.2f} GiB more)")
    elif cannot_start:
        problems.append(f"max_model_len {limits.max_model_len:,} needs more KV cache than fits in "
                        f"memory ({limits.tokens_that_fit:,} tokens), so the engine would not start")
    if over_len or over_memory or cannot_start:
        remedies = _remedies(prompt_tokens, max_tokens, limits, over_len, over_memory)
    if not limits.dca and needed > limits.trained_context and not over_len:
        warnings.append(f"{needed:,} tokens is past the model's trained length "
                        f"({limits.trained_context:,}) with DCA off: answers may degrade; add --dca")
    return FitCheck(prompt_tokens, max_tokens, not (over_len or over_memory or cannot_start),
                    over_len, over_memory, cannot_start, problems, remedies, warnings)


def suggested_length(tokens: int) -> int:
    """A --max-model-len that holds `tokens`: rounded up to a multiple of 1024."""
    return -(-tokens // 1024) * 1024


def size_text(tokens: int) -> str:
    """9216 -> '9k', as the size options read it."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def _remedies(prompt: int, max_tokens: int, limits: Limits, over_len: int, over_memory: int) -> list[str]:
    needed = prompt + max_tokens
    length = suggested_length(needed)
    out = []
    if over_len:
        if prompt < limits.max_model_len:
            out.append(f"a smaller --max-tokens (at most {limits.max_model_len - prompt:,})")
        past_trained = length > limits.trained_context and not limits.dca
        out.append(f"--max-model-len {size_text(length)}" + (
            f" --dca (Dual Chunk Attention, for prompts past the model's trained length of "
            f"{limits.trained_context:,})" if past_trained else ""))
    elif not over_memory:        # the prompt fits memory but max_model_len does not
        out.append(f"--max-model-len {size_text(length if length <= limits.tokens_that_fit else needed)}")
    if over_memory or (over_len and length > limits.tokens_that_fit):
        if limits.device_type == "cuda":
            if limits.gpu_memory_utilization < 0.98:
                out.append(f"a larger --gpu-memory-utilization (now {limits.gpu_memory_utilization})")
            out.append("--tensor-parallel-size 2 or more (splits the KV cache over GPUs)")
        elif limits.dtype == "float32":
            out.append("--dtype bfloat16 (half the KV bytes per token)")
        out.append(f"more memory (the KV cache of {needed:,} tokens takes "
                   f"{needed * limits.kv_bytes_per_token / GiB:.1f} GiB)")
    out.append("fewer or smaller documents")
    return out
