"""Time to first token of a prompt, before running it: from the prefill rates `turboctx bench
prefill` measured on this device for this model (or one of its architecture), else from a
default speed, said to be one.

Between measured lengths the achieved FLOP/s is interpolated (linearly in log length), outside
them the nearest one holds; TTFT = the prompt's prefill FLOPs / that speed. At a measured length
this is exactly the measured TTFT; elsewhere it follows the quadratic growth of attention.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass

from turboctx.bench.flops import prefill_flops
from turboctx.bench.rates import PrefillRate
from turboctx.config.architecture import ModelArchitecture

# what an unmeasured device is taken to achieve on a prefill (FLOP/s, per device): a 2-core CPU
# in fp32 ran the default model at about 9e10 (docs/LONG_DOCUMENTS.md), an H200 in bf16 at
# 5.7e14 (docs/BENCHMARKS.md); the GPU figure is set lower for smaller GPUs
DEFAULT_FLOPS_PER_S = {"cpu": 1e11, "cuda": 3e14}
DEFAULT_NOTE = "default estimate, run `turboctx bench prefill` to measure"


@dataclass(frozen=True)
class PrefillEstimate:
    ttft_s: float
    tokens_per_s: float
    measured: bool           # from stored rates (else DEFAULT_FLOPS_PER_S)
    note: str                # where the figure comes from, for the plan

    def as_dict(self) -> dict:
        return {"ttft_s": self.ttft_s, "tokens_per_s": self.tokens_per_s,
                "measured": self.measured, "note": self.note}


def flops(m: ModelArchitecture, n: int) -> float:
    linear, attention = prefill_flops(m, n)
    return linear + attention


def estimate_prefill(m: ModelArchitecture, n: int, device_type: str, tensor_parallel_size: int,
                     rates: list[PrefillRate]) -> PrefillEstimate:
    """rates: bench/rates.matching_rates() for this setup (sorted by length), maybe none."""
    n = max(1, n)
    if not rates:
        speed = DEFAULT_FLOPS_PER_S.get(device_type, DEFAULT_FLOPS_PER_S["cpu"]) * tensor_parallel_size
        ttft = flops(m, n) / speed
        return PrefillEstimate(ttft, n / ttft, False, DEFAULT_NOTE)
    points = [(r.length, flops(m, r.length) * r.tokens_per_s / r.length) for r in rates]
    speed = _interpolate(points, n)
    ttft = flops(m, n) / speed
    lengths = f"{rates[0].length:,}" + (f"-{rates[-1].length:,}" if len(rates) > 1 else "")
    models = sorted({r.model for r in rates})
    measured_with = Path(models[0]).name if len(models) == 1 else "models of this architecture"
    note = (f"measured by `turboctx bench prefill` on {rates[0].device} with {measured_with} at "
            f"{lengths} tokens, {max(r.date for r in rates)[:10]}")
    return PrefillEstimate(ttft, n / ttft, True, note)


def _interpolate(points: list[tuple[int, float]], n: int) -> float:
    """Speed at length n from (length, speed) points sorted by length."""
    if n <= points[0][0]:
        return points[0][1]
    if n >= points[-1][0]:
        return points[-1][1]
    for (a, speed_a), (b, speed_b) in zip(points, points[1:]):
        if a <= n <= b:
            t = (math.log(n) - math.log(a)) / (math.log(b) - math.log(a)) if b > a else 0.0
            return speed_a + t * (speed_b - speed_a)
    return points[-1][1]
