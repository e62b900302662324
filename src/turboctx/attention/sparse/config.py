"""Configuration of vertical-slash sparse prefill, and the `sparse_attention_config.json` file.

Defaults follow MInference (arXiv 2407.02490, microsoft/MInference `vertical_and_slash_kernel`) and
the Qwen2.5-1M serving code (vLLM's dual-chunk flash-attention backend, v0.8-v0.10):
1000 vertical / 6096 slash lines per head, pattern estimated from the last 64 queries,
the first 30 key columns and the 100 diagonals nearest the main one always kept, sparse only
above 32768 tokens. Slash lines are selected as block diagonals of `block_size` (128): 6096
lines buy ceil(6096 / 128) = 48 of them, one key block per query block each (pattern.py says
why), i.e. 6144 keys per query, plus the 1000 gathered vertical columns.

`sparse_attention_config.json` (Qwen2.5-*-1M, MInference `best_pattern`): a JSON list with one
entry per layer; each entry maps the query-head index (a string) to
`["vertical_and_slash", vertical_size, slash_size, score]` (score: the recall measured when the
budget was chosen; informational). A dict keyed by layer index ("0", "1", ...) is read as well.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

CONFIG_FILENAME = "sparse_attention_config.json"
PATTERN_NAME = "vertical_and_slash"

Budget = tuple[int, int]   # (vertical_size, slash_size) of one query head


@dataclass(frozen=True)
class SparseConfig:
    threshold: int = 32768          # prompt rows at positions >= this run sparse; earlier rows dense
    vertical_size: int = 1000       # default key columns kept per head
    slash_size: int = 6096          # default diagonals kept per head
    last_q: int = 64                # queries of each chunk that estimate the pattern
    block_size: int = 128           # kernel block (queries x keys) = slash block-diagonal width
    sink_tokens: int = 30           # first key columns always kept
    local_diagonals: int = 100      # diagonals nearest the main one always kept
    # the prompt's last dense_tail tokens attend densely (0: none). The question usually ends the
    # prompt, and only its rows decide the first answer token: on the default model, RULER needles
    # at 16K were lost when the question's chunk ran sparse (docs/SPARSE.md). Their cost is
    # dense_tail / max_num_batched_tokens of one chunk, once per prompt.
    dense_tail: int = 512
    # head_budgets[layer][head] = (vertical_size, slash_size); None: the defaults everywhere
    head_budgets: list[list[Budget]] | None = field(default=None, repr=False)
    head_scores: list[list[float]] | None = field(default=None, repr=False)

    def __post_init__(self):
        for name in ("threshold", "vertical_size", "slash_size", "last_q", "block_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SparseConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("sink_tokens", "local_diagonals", "dense_tail"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"SparseConfig.{name}={getattr(self, name)} must be >= 0")
        if self.local_diagonals < 1:
            raise ValueError("SparseConfig.local_diagonals must be >= 1: every query needs its own key")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"SparseConfig.block_size={self.block_size} must be one of 16, 32, 64, "
                             "128, 256 (a kernel tile)")
        if not 1 <= self.last_q <= 128:
            raise ValueError(f"SparseConfig.last_q={self.last_q} must be in [1, 128]")
        if self.head_budgets is not None:
            object.__setattr__(self, "head_budgets",
                               [[(int(v), int(s)) for v, s in layer] for layer in self.head_budgets])
            for li, layer in enumerate(self.head_budgets):
                for hi, (v, s) in enumerate(layer):
                    if v < 0 or s < 1:
                        raise ValueError(f"sparse budget of layer {li} head {hi} is ({v}, {s}); "
                                         "vertical must be >= 0 and slash >= 1")

    def budgets(self, layer: int, num_heads: int) -> list[Budget]:
        """(vertical, slash) per query head of `layer` (the defaults where the file has none)."""
        if self.head_budgets is None or layer >= len(self.head_budgets):
            return [(self.vertical_size, self.slash_size)] * num_heads
        layer_b = self.head_budgets[layer]
        if len(layer_b) != num_heads:
            raise ValueError(f"sparse_attention_config has {len(layer_b)} heads in layer {layer}, "
                             f"the model has {num_heads}; recalibrate for this model")
        return list(layer_b)

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Per-head budgets must be for this model: as many layers, as many heads in each."""
        if self.head_budgets is None:
            return
        if len(self.head_budgets) != num_layers:
            raise ValueError(f"sparse_attention_config has {len(self.head_budgets)} layers, the "
                             f"model has {num_layers}; calibrate for this model (turboctx calibrate)")
        for li, layer in enumerate(self.head_budgets):
            if len(layer) != num_heads:
                raise ValueError(f"sparse_attention_config has {len(layer)} heads in layer {li}, "
                                 f"the model has {num_heads}; calibrate for this model "
                                 "(turboctx calibrate)")

    def with_budgets(self, budgets: list[list[Budget]], scores: list[list[float]] | None = None
                     ) -> "SparseConfig":
        """A copy with these per-head budgets (budgets[layer][head] = (vertical, slash))."""
        return replace(self, head_budgets=budgets, head_scores=scores)

    def with_file(self, path: str | Path) -> "SparseConfig":
        """A copy with per-head budgets from `path` (a file or a folder holding CONFIG_FILENAME)."""
        return self.with_budgets(*load_sparse_attention_config(path))

    @classmethod
    def for_model_dir(cls, model_dir: str | Path | None, **overrides) -> "SparseConfig":
        """Defaults (+ overrides), with the budgets of `model_dir/sparse_attention_config.json` if present."""
        cfg = cls(**overrides)
        if model_dir is not None and Path(model_dir).is_dir() and (Path(model_dir) / CONFIG_FILENAME).is_file():
            cfg = cfg.with_file(model_dir)
        return cfg


def load_sparse_attention_config(path: str | Path) -> tuple[list[list[Budget]], list[list[float]]]:
    """Read a Qwen2.5-*-1M / MInference pattern file -> (budgets[layer][head], scores[layer][head])."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILENAME
    data = json.loads(p.read_text())
    if isinstance(data, dict):
        data = data.get("best_pattern", data)
        if isinstance(data, dict):
            data = [data[k] for k in sorted(data, key=int)]
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a list of per-layer head dicts, got {type(data).__name__}")
    budgets, scores = [], []
    for li, layer in enumerate(data):
        heads = sorted(layer, key=int)
        if [int(h) for h in heads] != list(range(len(heads))):
            raise ValueError(f"{p}: layer {li} heads are {heads}, expected 0..{len(heads) - 1}")
        lb, ls = [], []
        for h in heads:
            entry = layer[h]
            if not entry or entry[0] != PATTERN_NAME:
                raise ValueError(f"{p}: layer {li} head {h} has pattern {entry[:1]}; only "
                                 f"{PATTERN_NAME!r} is supported")
            lb.append((int(entry[1]), int(entry[2])))
            ls.append(float(entry[3]) if len(entry) > 3 else 1.0)
        budgets.append(lb)
        scores.append(ls)
    return budgets, scores


def write_sparse_attention_config(path: str | Path, budgets: list[list[Budget]],
                                  scores: list[list[float]] | None = None) -> Path:
    """Write budgets[layer][head] (and recall scores) in the Qwen2.5-*-1M format; returns the file."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILENAME
    doc = [{str(h): [PATTERN_NAME, int(v), int(s),
                     float(scores[li][h]) if scores is not None else 1.0]
            for h, (v, s) in enumerate(layer)} for li, layer in enumerate(budgets)]
    p.write_text(json.dumps(doc, indent=1))
    return p
