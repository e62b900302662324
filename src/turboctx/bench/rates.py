"""Measured prefill rates, kept in the turboctx home (`prefill_rates.json`) by `turboctx bench
prefill` and read by the plan of `turboctx ask` / `turboctx chat` to estimate the time to first
token. One entry per (device, model, attention, dtype, tensor-parallel size, prompt length);
a new measurement replaces the old one of the same key.

    {"version": 1, "rates": [{"device": "NVIDIA H200", "model": "random:qwen2.5-7b",
      "architecture": "qwen2 28x3584 ...", "attention": "dense", "dtype": "bfloat16",
      "tensor_parallel_size": 1, "length": 32768, "tokens_per_s": 61234.5,
      "date": "2026-12-02T10:00:00+00:00"}, ...]}
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from turboctx.config.architecture import ModelArchitecture
from turboctx.home import turboctx_home

RATES_FILE = "prefill_rates.json"
VERSION = 1


@dataclass(frozen=True)
class PrefillRate:
    device: str                  # device_name(): the GPU's name, or the CPU's and its threads
    model: str                   # the model spec as given (a path, random:<preset>)
    architecture: str            # architecture_key(): the same shape runs at the same rate
    attention: str               # dense | sparse | dca | dca+sparse
    dtype: str
    tensor_parallel_size: int
    length: int                  # prompt tokens
    tokens_per_s: float          # length / TTFT
    date: str

    def key(self) -> tuple:
        return (self.device, self.model, self.attention, self.dtype, self.tensor_parallel_size,
                self.length)


def rates_path() -> Path:
    return turboctx_home() / RATES_FILE


def device_name(device: torch.device) -> str:
    """'NVIDIA H200' for a GPU; 'cpu: <model name> (<n> threads)' for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()} ({torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def architecture_key(m: ModelArchitecture) -> str:
    """The model's shape in one string: models of one shape prefill at one rate."""
    return (f"{m.family} {m.num_hidden_layers}x{m.hidden_size} ffn {m.intermediate_size} "
            f"heads {m.num_attention_heads}/{m.num_key_value_heads}x{m.head_dim} vocab {m.vocab_size}")


def load_rates(path: Path | None = None) -> list[PrefillRate]:
    """Every stored rate; none when the file is missing or unreadable (the plan then says it uses
    a default estimate)."""
    path = path or rates_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [PrefillRate(**row) for row in data.get("rates", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def store_rates(new: list[PrefillRate], path: Path | None = None) -> Path:
    """Adds `new` to the stored rates (replacing those of the same key); returns the file."""
    path = path or rates_path()
    kept = {r.key(): r for r in load_rates(path)}
    kept.update({r.key(): r for r in new})
    rows = sorted(kept.values(), key=lambda r: r.key())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps({"version": VERSION, "rates": [asdict(r) for r in rows]},
                                    indent=1), encoding="utf-8")
    temporary.replace(path)
    return path


def matching_rates(rates: list[PrefillRate], *, device: str, model: str, architecture: str,
                   attention: str, dtype: str, tensor_parallel_size: int) -> list[PrefillRate]:
    """The rates measured for this setup, by length: those of this very model if any, else those
    of another model of the same architecture."""
    same_setup = [r for r in rates if (r.device, r.attention, r.dtype, r.tensor_parallel_size)
                  == (device, attention, dtype, tensor_parallel_size)]
    exact = [r for r in same_setup if r.model == model]
    chosen = exact or [r for r in same_setup if r.architecture == architecture]
    return sorted(chosen, key=lambda r: r.length)


def rates_from_rows(rows: list[dict], *, device: str, model: str, architecture: str,
                    attention: str, dtype: str, tensor_parallel_size: int, date: str) -> list[PrefillRate]:
    """The turboctx rows of a prefill benchmark (bench/prefill.py) as rates; rows of another
    engine (--compare hf) or without a TTFT are not rates of turboctx."""
    return [PrefillRate(device, model, architecture, attention, dtype, tensor_parallel_size,
                        int(r["length"]), float(r["tokens_per_s"]), date)
            for r in rows if str(r.get("engine", "")).startswith("turboctx") and r.get("ttft_s")]
