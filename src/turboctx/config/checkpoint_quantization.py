"""A checkpoint's `quantization_config` as vLLM reads it: the method (fp8 with per-tensor or
per-channel weight scales) and the layers it leaves in full precision (`ignored_layers`, vLLM's
key, or `modules_to_not_convert`, transformers'), as this engine's fused projections."""
from __future__ import annotations

import re

from turboctx.errors import UnsupportedModelError

ALWAYS_FULL_PRECISION = ("lm_head", "model.embed_tokens")
PROJECTION_KINDS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")   # in a layer's order
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj"),
               "o_proj": ("o_proj",), "down_proj": ("down_proj",)}
FUSED_KIND_OF = {part: kind for kind, parts in FUSED_PARTS.items() for part in parts}
_PARENT = {"qkv_proj": "self_attn", "o_proj": "self_attn", "gate_up_proj": "mlp", "down_proj": "mlp"}
_NAME = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)")


def checkpoint_quantization(qc: dict | None) -> str | None:
    """"fp8" for quant_method fp8 with per-tensor or per-channel weight scales, None without a
    quantization_config; other methods are an error naming them."""
    if not qc:
        return None
    method = qc.get("quant_method")
    if method != "fp8":
        raise UnsupportedModelError(f"checkpoint quantization {method!r} is not supported; "
                                    "supported: fp8 (per-tensor or per-channel weight scales)")
    if qc.get("weight_block_size"):
        raise UnsupportedModelError(f"fp8 checkpoints with block-wise weight scales (weight_block_size="
                                    f"{qc['weight_block_size']}) are not supported; per-tensor "
                                    "and per-channel scales are")
    return "fp8"


def checkpoint_ignored_layers(qc: dict | None, num_layers: int) -> tuple[str, ...]:
    """The projections the checkpoint ships in full precision, as fused module paths
    ("model.layers.3.self_attn.qkv_proj"), by layer; the embeddings and lm_head always are.
    q/k/v (and gate/up) are one fused projection here, so a layer keeps all of them or none."""
    qc = qc or {}
    names = [*(qc.get("ignored_layers") or []), *(qc.get("modules_to_not_convert") or [])]
    parts: dict[tuple[int, str], set[str]] = {}
    for name in names:
        if name in ALWAYS_FULL_PRECISION:
            continue
        m = _NAME.fullmatch(str(name))
        kind = m and FUSED_KIND_OF.get(m[3])
        if not m or kind is None or _PARENT[kind] != m[2] or int(m[1]) >= num_layers:
            raise UnsupportedModelError(
                f"quantization_config leaves {name!r} in full precision, which is not a layer "
                f"of this {num_layers}-layer model; allowed: lm_head, model.embed_tokens, "
                f"model.layers.N.self_attn.q_proj|k_proj|v_proj|o_proj, "
                f"model.layers.N.mlp.gate_proj|up_proj|down_proj")
        parts.setdefault((int(m[1]), kind), set()).add(m[3])
    for (layer, kind), got in parts.items():
        missing = sorted(set(FUSED_PARTS[kind]) - got)
        if missing:
            raise UnsupportedModelError(
                f"quantization_config leaves {', '.join(sorted(got))} of layer {layer} in full "
                f"precision but not {', '.join(missing)}: they are one fused projection here "
                f"({kind}), in one precision")
    return tuple(f"model.layers.{layer}.{_PARENT[kind]}.{kind}"
                 for layer, kind in sorted(parts, key=lambda p: (p[0], PROJECTION_KINDS.index(p[1]))))


def hf_ignored_layers(paths: tuple[str, ...]) -> list[str]:
    """checkpoint_ignored_layers' paths as a checkpoint names them (one name per unfused part)."""
    out = []
    for path in paths:
        prefix, kind = path.rsplit(".", 1)
        out += [f"{prefix}.{part}" for part in FUSED_PARTS[kind]]
    return out
