"""A long prompt shares the CPU with streaming clients, on the default path: the default model,
one 6K-token prompt beside 4 clients streaming 64-token prompts x 128 tokens.

The CPU's latency target lets a step beside decodes take 7x the decodes' own time, so while the
prompt prefills the clients' steps are about that long (the prefill fills them: not much less),
their p99 inter-token latency stays within 4x of theirs without it, and the prompt loses about
the decodes' sixth of each step: its TTFT within 1.35x of its TTFT alone (1.19-1.24 on two cores
of a quiet machine; a shared CI machine is noisier). About a minute on two cores."""
from __future__ import annotations

import pytest

from turboctx.bench.long_prefill import long_prompt_among_clients
from turboctx.config import EngineConfig
from turboctx.config.sections import CPU_ITL_DECODE_FACTOR
from turboctx.engine.llm_engine import LLMEngine

LONG = 6144


@pytest.mark.exclusive
def test_a_long_prompt_beside_streaming_clients_on_the_default_path():
    engine = LLMEngine(EngineConfig.from_options(max_model_len=LONG + 1024))
    res = long_prompt_among_clients(engine, LONG, clients=4, baseline_s=6.0, warm_runs=0)
    summary = {k: res[k] for k in ("ttft_alone_s", "ttft_beside_s", "ttft_ratio", "itl_without_ms",
                                   "itl_during_ms", "itl_p99_ratio", "slowest_steps")}
    print(summary)
    assert res["n_gaps_without"] > 80 and res["n_gaps_during"] > 80, summary
    steps_over_decodes = res["itl_during_ms"]["p50"] / res["itl_without_ms"]["p50"]
    assert 0.6 * CPU_ITL_DECODE_FACTOR <= steps_over_decodes <= 1.25 * CPU_ITL_DECODE_FACTOR, summary
    assert res["itl_p99_ratio"] <= 4.0, summary
    assert res["ttft_ratio"] <= 1.35, summary
