"""Prometheus metrics of the server (own registry per app, so several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for app.py)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                   1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
P = "turboctx_"


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.waiting = Gauge(P + "num_requests_waiting", "requests waiting for KV-cache memory or a slot", registry=r)
        self.running = Gauge(P + "num_requests_running", "requests admitted (prefilling or decoding)", registry=r)
        self.kv_usage = Gauge(P + "kv_cache_usage_ratio", "fraction of KV-cache blocks in use (0..1)", registry=r)
        self.kv_blocks_used = Gauge(P + "kv_cache_blocks_used", "KV-cache blocks in use", registry=r)
        self.kv_blocks_total = Gauge(P + "kv_cache_blocks_total", "KV-cache blocks in all", registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "arrival to first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "time between consecutive generated tokens",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "arrival to finish",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "prompt tokens of admitted requests", registry=r)
        self.cached_tokens = Counter(P + "cached_prompt_tokens", "prompt tokens reused from the prefix cache", registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "generated tokens", registry=r)
        self.finished = Counter(P + "requests_finished", "finished requests by finish reason",
                                ["finish_reason"], registry=r)
        self.rejected = Counter(P + "requests_rejected", "requests refused before reaching the engine",
                                ["status"], registry=r)
        self.startup = Gauge(P + "startup_seconds", "seconds of each phase of the engine's start "
                             "(load_s, kv_cache_s, warmup_s, graph_capture_s)", ["phase"], registry=r)

    def bind(self, engine_loop) -> None:
        """Gauges read the engine's state when scraped."""
        engine = engine_loop.engine
        self.waiting.set_function(engine_loop.num_waiting)
        self.running.set_function(engine_loop.num_running)
        self.kv_usage.set_function(engine_loop.kv_usage)
        self.kv_blocks_used.set_function(lambda: engine.kv_cache_usage().used_blocks)
        self.kv_blocks_total.set_function(lambda: engine.kv_cache_usage().total_blocks)
        for phase, seconds in getattr(engine, "startup", {}).items():
            self.startup.labels(phase).set(seconds)

    # called from the engine thread
    def on_tokens(self, out, seen: int, new: int, since_last_s: float) -> None:
        if seen == 0:
            if out.metrics.ttft_s is not None:
                self.ttft.observe(out.metrics.ttft_s)
            self.prompt_tokens.inc(len(out.prompt_token_ids))
            self.cached_tokens.inc(out.metrics.num_cached_tokens)
            new_after_first = new - 1
        else:
            new_after_first = new
        for _ in range(new_after_first):
            self.itl.observe(since_last_s / max(new, 1))
        self.generation_tokens.inc(new)

    def on_finished(self, out) -> None:
        self.finished.labels(out.finish_reason or "unknown").inc()
        if out.metrics.e2e_s is not None:
            self.e2e.observe(out.metrics.e2e_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
