"""The same prefill through Hugging Face transformers (sdpa), random weights of the same shape."""
from __future__ import annotations

import gc
import statistics
import time

import torch

from turboctx.bench.prefill import random_prompt, reset_peak
from turboctx.config.architecture import ModelArchitecture


def build_hf_model(m: ModelArchitecture, device: torch.device, dtype: torch.dtype, seed: int):
    import transformers
    cfg_dict = m.to_hf_dict()
    cls_name = "Qwen2" if m.family == "qwen2" else "Llama"
    config = getattr(transformers, f"{cls_name}Config")(**{k: v for k, v in cfg_dict.items()
                                                             if k not in ("architectures", "model_type")})
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = getattr(transformers, f"{cls_name}ForCausalLM")(config)
    model = model.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.02, generator=g)
        if hasattr(model.model, "rotary_emb"):      # buffers were left empty on meta: rebuild them
            model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)
    return model.eval()


@torch.inference_mode()
def hf_prefill(m: ModelArchitecture, lengths: list[int], repeat: int, seed: int, device, dtype) -> list[dict]:
    rows = []
    try:
        model = build_hf_model(m, device, dtype, seed)
    except Exception as e:   # noqa: BLE001 - reported in the table, not raised
        return [{"engine": "hf", "length": n, "error": f"could not build: {e}"} for n in lengths]
    model(torch.tensor([random_prompt(m.vocab_size, 1024, seed)], device=device),
          use_cache=False, logits_to_keep=1)                      # warm-up
    for n in lengths:
        ids = torch.tensor([random_prompt(m.vocab_size, n, seed + n)], device=device)
        times, peak, err = [], None, None
        try:
            for _ in range(repeat):
                reset_peak(device)
                t = time.perf_counter()
                model(ids, use_cache=True, logits_to_keep=1)   # a prefill builds the KV cache
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
        except torch.OutOfMemoryError:
            err = "out of memory"
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if err or not times:
            rows.append({"engine": "hf", "length": n, "error": err or "no run"})
        else:
            rows.append({"engine": "hf", "length": n, "repeat": repeat, "ttft_s": statistics.median(times),
                         "ttft_min_s": min(times), "ttft_max_s": max(times), "peak_memory_gib": peak})
    del model
    gc.collect()
    return rows


@torch.inference_mode()
def hf_decode(m: ModelArchitecture, lengths: list[int], steps: int, repeat: int, seed: int, device, dtype) -> list[dict]:
    """HF greedy decode after a real prefill of each context length: seconds per token."""
    model = build_hf_model(m, device, dtype, seed)
    rows = []
    for n in lengths:
        ids = torch.tensor([random_prompt(m.vocab_size, n, seed + n)], device=device)
        per_token = []
        for r in range(repeat + 1):          # first run warms up
            out = model(ids, use_cache=True, logits_to_keep=1)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            for _ in range(steps):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
                tok.item()                   # a real decode loop reads each token back
            if r:
                per_token.append((time.perf_counter() - t) / steps)
        t = statistics.median(per_token)
        rows.append({"engine": "hf", "context": n, "steps": steps, "repeat": repeat, "ms_per_token": t * 1e3,
                     "ms_min": min(per_token) * 1e3, "ms_max": max(per_token) * 1e3})
    del model
    gc.collect()
    return rows
