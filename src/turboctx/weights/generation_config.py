"""A model's sampling defaults from its generation_config.json (e.g. Qwen2.5-Instruct's
temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05): they apply to requests that
leave a field out, as in vLLM's `--generation-config auto`."""
from __future__ import annotations

import json
from pathlib import Path

from turboctx.errors import ModelLoadError

FILE = "generation_config.json"
# The SamplingParams fields a generation config may set (the ones vLLM reads).
GENERATION_DEFAULT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_generation_config(folder: str | Path) -> dict:
    """The raw generation_config.json of a folder ({} when there is none)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def sampling_defaults(raw: dict) -> dict:
    """The SamplingParams defaults a generation config sets: temperature, top_p, top_k, min_p,
    repetition_penalty, and max_new_tokens as max_tokens. Values of the wrong type are left out."""
    out = {}
    for name in GENERATION_DEFAULT_FIELDS:
        v = raw.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = int(v) if name == "top_k" else float(v)
    if isinstance(raw.get("max_new_tokens"), int) and raw["max_new_tokens"] > 0:
        out["max_tokens"] = raw["max_new_tokens"]
    if out.get("top_k") == 0:            # HF: 0 = off; ours: -1 (0 also means off)
        out["top_k"] = -1
    return out


def generation_defaults(setting: str, model_folder: str | None) -> dict:
    """setting: "auto" (the model folder's file), "none", or a folder holding the file."""
    if setting == "none":
        return {}
    folder = model_folder if setting == "auto" else setting
    return sampling_defaults(read_generation_config(folder)) if folder else {}
