"""Benchmarks: prefill (TTFT), decode, ceilings measured in the same run, HF comparison."""
