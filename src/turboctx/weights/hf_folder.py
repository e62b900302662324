"""Hugging Face folders: config.json + (sharded) safetensors + tokenizer files."""
from __future__ import annotations

import json
from pathlib import Path

from turboctx.config.architecture import ModelArchitecture
from turboctx.errors import ModelLoadError
from turboctx.weights.checkpoint import Checkpoint

INDEX_FILE = "model.safetensors.index.json"


def open_hf_folder(folder: Path) -> Checkpoint:
    from turboctx.tokenizer import Tokenizer

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"folder {folder} has no config.json; a Hugging Face model folder needs "
                             f"config.json and *.safetensors (or give a .gguf file)")
    raw = _read_json(config_file)
    config = ModelArchitecture.from_hf_dict(raw, name=folder.name)
    gen = _read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    config.eos_token_ids = _merge_ids(config.eos_token_ids, gen.get("eos_token_id"))
    if config.bos_token_id is None and isinstance(gen.get("bos_token_id"), int):
        config.bos_token_id = gen["bos_token_id"]
    files = safetensors_files(folder)
    tokenizer = Tokenizer.from_hf_folder(folder) if (folder / "tokenizer.json").is_file() else None
    return Checkpoint(config=config, tokenizer=tokenizer, source=str(folder), kind="hf",
                      tensor_stream=lambda: _stream(files))


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index} lists shards that are missing: {', '.join(missing)}")
        if files:
            return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    other = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
    hint = f" (found {', '.join(other)}: only safetensors are read from a folder)" if other else ""
    raise ModelLoadError(f"folder {folder} has no *.safetensors weights{hint}; save the model with "
                         f"save_pretrained(..., safe_serialization=True) or give a .gguf file")


def _stream(files: list[Path]):
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _merge_ids(ids: list[int], extra) -> list[int]:
    extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
    return list(dict.fromkeys([*ids, *extra]))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
