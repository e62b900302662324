"""KV-cache scales a checkpoint ships for an FP8 cache, under the names vLLM reads:
`model.layers.N.self_attn.k_scale` / `v_scale` (also `...self_attn.attn.k_scale` and the older
`...k_proj.output_scale`), each a scalar or one value per KV head; the stored value is x / scale.
They are used only with kv_cache_dtype='fp8'. Query and probability scales (`q_scale`,
`prob_scale`) belong to FP8 attention kernels, which this engine does not have: they are skipped.
"""
from __future__ import annotations

import re

import torch

from turboctx.errors import ModelLoadError

_KV_SCALE = re.compile(r"^model\.layers\.(\d+)\.self_attn\.(?:attn\.)?(?:([kv])_scale|([kv])_proj\.output_scale)$")
_UNUSED = re.compile(r"^model\.layers\.\d+\.self_attn\.(?:attn\.)?(?:q_scale|prob_scale)$")


def kv_scale_of(name: str) -> tuple[int, str] | None:
    """(layer, 'k' | 'v') when `name` is a KV-cache scale, else None."""
    m = _KV_SCALE.match(name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2) or m.group(3)


def is_unused_scale(name: str) -> bool:
    return _UNUSED.match(name) is not None


def is_kv_scale(name: str) -> bool:
    return kv_scale_of(name) is not None or is_unused_scale(name)


class KVScales:
    """The KV scales met while loading a checkpoint."""

    def __init__(self):
        self.found: dict[tuple[int, str], torch.Tensor] = {}
        self.skipped: list[str] = []          # q_scale / prob_scale names

    def add(self, name: str, tensor: torch.Tensor) -> bool:
        """True when `name` is an attention scale (kept, or skipped as unused)."""
        hit = kv_scale_of(name)
        if hit is not None:
            self.found[hit] = tensor.detach().float().flatten().cpu()
            return True
        if is_unused_scale(name):
            self.skipped.append(name)
            return True
        return False

    def tensors(self, num_layers: int, num_kv_heads: int) -> dict[str, torch.Tensor] | None:
        """{"k": [L, Hkv], "v": [L, Hkv]} float32, or None when the checkpoint has none."""
        if not self.found:
            return None
        out = {}
        for which in ("k", "v"):
            rows = []
            for layer in range(num_layers):
                t = self.found.get((layer, which))
                if t is None:
                    raise ModelLoadError(f"the checkpoint ships KV-cache scales but lacks "
                                         f"model.layers.{layer}.self_attn.{which}_scale")
                if t.numel() not in (1, num_kv_heads):
                    raise ModelLoadError(f"model.layers.{layer}.self_attn.{which}_scale has "
                                         f"{t.numel()} values; expected 1 or one per KV head "
                                         f"({num_kv_heads})")
                if not bool((t > 0).all() and torch.isfinite(t).all()):
                    raise ModelLoadError(f"model.layers.{layer}.self_attn.{which}_scale holds a "
                                         f"value that is not a positive number: {t.tolist()}")
                rows.append(t.expand(num_kv_heads))
            out[which] = torch.stack(rows)                  # [L, Hkv]
        return out
