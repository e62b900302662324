"""HFTarget: Hugging Face transformers driven through the same harness as the engine.

The reference side of "our engine scores what transformers scores on the same prompts":
the same model spec (an HF folder, or a .gguf that transformers loads with `gguf_file=`,
the default model included), the same tokenizer (turboctx's, so both see the same token
ids), the same encoding of a prompt string as `LLM.generate` (add_special_tokens=True), the
same stop tokens (the engine's eos set), greedy decoding, and the same decoding of the answer
(special tokens skipped). Prompts longer than max_model_len (default: the model's
max_position_embeddings, as for the engine) are recorded as PromptTooLong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from turboctx.eval.targets import PromptTooLong, TokenizerMixin

LOGPROB_CHUNK = 4096   # positions per lm_head slice in token_logprobs (bounds the logits memory)


def hf_load_args(spec: str | None) -> tuple[str, dict]:
    """(path for from_pretrained, extra kwargs) for a model spec; clear errors otherwise."""
    from turboctx.weights import RANDOM_PREFIX, default_gguf_path
    if spec is None:
        gguf = default_gguf_path()
        return str(gguf.parent), {"gguf_file": gguf.name}
    text = str(spec)
    if text.startswith(RANDOM_PREFIX):
        raise ValueError(f"the HF target cannot load {text!r}: random:<preset> models exist only "
                         "inside the engine; give an HF folder, a .gguf file or nothing (the "
                         "default model)")
    path = Path(text).expanduser()
    if not path.exists():
        raise ValueError(f"model path {text!r} does not exist (HF target)")
    if path.is_dir():
        return str(path), {}
    if path.suffix == ".safetensors" or path.name == "config.json":
        return str(path.parent), {}
    return str(path.parent), {"gguf_file": path.name}


class HFTarget(TokenizerMixin):
    """transformers' AutoModelForCausalLM, greedy, batched with left padding."""

    def __init__(self, model: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 1, max_model_len: int | None = None,
                 attn_implementation: str | None = None):
        self.model_spec = model
        self._path, self._load_kwargs = hf_load_args(model)   # fails fast on random: / bad paths
        self.device_name = device
        self.dtype_name = dtype
        self.batch_size = max(1, batch_size)
        self._max_model_len = max_model_len
        self.attn_implementation = attn_implementation
        self._model = None
        self._ckpt = None
        self.name = f"hf:{model or 'default'}" + (f"[dtype={dtype}]" if dtype else "")

    # -- lazy pieces ------------------------------------------------------------------------
    @property
    def checkpoint(self):
        if self._ckpt is None:
            from turboctx.weights import open_checkpoint
            self._ckpt = open_checkpoint(self.model_spec)
            if self._ckpt.tokenizer is None:
                raise ValueError(f"model {self.model_spec!r} has no tokenizer")
        return self._ckpt

    @property
    def tokenizer(self):
        return self.checkpoint.tokenizer

    @property
    def eos_token_ids(self) -> list[int]:
        c = self.checkpoint
        return sorted(set(c.config.eos_token_ids) | set(c.tokenizer.eos_token_ids))

    @property
    def max_model_len(self) -> int:
        return self._max_model_len or self.checkpoint.config.max_position_embeddings

    @property
    def device(self):
        import torch
        return torch.device(self.device_name or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def dtype(self):
        from turboctx.config.engine import torch_dtype
        return torch_dtype(self.dtype_name, self.device.type == "cuda")

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM
            kwargs = dict(self._load_kwargs, dtype=self.dtype)
            if self.attn_implementation:
                kwargs["attn_implementation"] = self.attn_implementation
            from transformers import GenerationConfig
            model = AutoModelForCausalLM.from_pretrained(self._path, **kwargs)
            # Plain greedy like the engine: transformers would otherwise fill unset fields of
            # our GenerationConfig from the checkpoint's generation_config.json (e.g. Qwen2.5
            # Instruct's repetition_penalty 1.05).
            model.generation_config = GenerationConfig()
            self._model = model.to(self.device).eval().requires_grad_(False)
        return self._model

    def close(self) -> None:
        """Free the model (and its GPU memory)."""
        import gc

        import torch
        self._model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- Target -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        results: list[str | Exception] = [None] * len(prompts)  # type: ignore[list-item]
        todo: list[tuple[int, list[int]]] = []
        for i, p in enumerate(prompts):
            ids = self.tokenizer.encode(p, add_special_tokens=True)   # as LLM.generate(str)
            if len(ids) + max_tokens > self.max_model_len:
                results[i] = PromptTooLong(f"{len(ids)} prompt tokens + {max_tokens} > "
                                           f"max_model_len {self.max_model_len}")
            elif not ids:
                results[i] = ValueError("prompt is empty after tokenization")
            else:
                todo.append((i, ids))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            try:
                outs = self._greedy([ids for _, ids in batch], max_tokens)
            except Exception as e:  # noqa: BLE001 - recorded per sample, like the engine's
                outs = [e] * len(batch)
            for (i, _), o in zip(batch, outs):
                results[i] = o
        return results

    def _greedy(self, batch: list[list[int]], max_tokens: int) -> list[str]:
        import torch
        from transformers import GenerationConfig
        eos = self.eos_token_ids
        pad = eos[0] if eos else 0
        width = max(len(ids) for ids in batch)
        # input_ids, attention_mask: [B, width], left-padded (HF derives positions from the mask)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        gen = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                               eos_token_id=eos or None, pad_token_id=pad)
        with torch.inference_mode():
            seqs = self.model.generate(input_ids=input_ids.to(self.device),
                                       attention_mask=mask.to(self.device),
                                       generation_config=gen)   # seqs: [B, width + new]
        texts = []
        for row in seqs[:, width:].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return texts

    def token_logprobs(self, ids: Sequence[int]) -> list[float]:
        import torch
        x = torch.tensor([list(ids)], device=self.device)            # x: [1, S]
        with torch.inference_mode():
            hidden = self.model.get_decoder()(input_ids=x).last_hidden_state   # [1, S, D]
            head = self.model.get_output_embeddings()
            out: list[float] = []
            for lo in range(0, len(ids) - 1, LOGPROB_CHUNK):
                hi = min(lo + LOGPROB_CHUNK, len(ids) - 1)
                logits = head(hidden[0, lo:hi]).float()                    # [n, V]
                lp = torch.log_softmax(logits, dim=-1)
                out += lp.gather(1, x[0, lo + 1:hi + 1, None]).squeeze(1).tolist()
        return out

