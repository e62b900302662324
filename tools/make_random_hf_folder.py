"""A Hugging Face folder of a random:<preset> model, the way a downloaded checkpoint looks:
config.json, sharded safetensors with model.safetensors.index.json, and (--sparse-config) a
sparse_attention_config.json with the default budgets for every head. For cold-start timing.
usage: python tools/make_random_hf_folder.py --preset qwen2.5-7b-1m --out /root/stage/qwen7b1m [--device cuda]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from turboctx.attention.sparse.config import SparseConfig, write_sparse_attention_config
from turboctx.models.llama import random_hf_tensors
from turboctx.weights.presets import preset_config


def make_folder(preset: str, out: Path, shard_bytes: int, device: str, sparse_config: bool) -> Path:
    cfg = preset_config(preset)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=1))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in random_hf_tensors(cfg, 0, torch.bfloat16, device):
        if size and size + t.numel() * t.element_size() > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous().cpu()
        size += t.numel() * t.element_size()
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}, indent=1))
    if sparse_config:
        d = SparseConfig()
        write_sparse_attention_config(out, [[(d.vertical_size, d.slash_size)] * cfg.num_attention_heads]
                                      * cfg.num_hidden_layers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shard-gb", type=float, default=4.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-sparse-config", action="store_true")
    a = ap.parse_args()
    out = make_folder(a.preset, a.out, int(a.shard_gb * 2**30), a.device, not a.no_sparse_config)
    print(f"{out}: {sum(f.stat().st_size for f in out.iterdir()) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
