"""Server pieces that need no live server: streamed-text hold-back, error bodies, bench statistics."""
from __future__ import annotations

from turboctx.bench.serve import percentiles, summarize
from turboctx.server.errors import error_body
from turboctx.server.streaming import TextHoldback


def test_holdback_never_sends_a_partial_stop_string_or_char():
    h = TextHoldback(["STOP"])
    assert h.delta("abc", False) == ""                  # 3 chars could be the start of "STOP"
    assert h.delta("abcdef", False) == "abc"
    assert h.delta("abcdefST", False) == "de"
    assert h.delta("abcdefST", True) == "fST"          # finished: everything goes
    h = TextHoldback([])
    assert h.delta("ab\ufffd", False) == "ab"           # an unfinished UTF-8 character waits
    assert h.delta("ab\u00e9x", False) == "\u00e9x"


def test_error_body_shape():
    e = error_body("bad", 400, param="x")["error"]
    assert e == {"message": "bad", "type": "invalid_request_error", "param": "x", "code": None}
    assert error_body("no", 401)["error"]["type"] == "authentication_error"


def test_bench_summary_counts_lost_and_duplicates():
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    assert percentiles([float(i) for i in range(1, 101)]) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    rs = [{"id": "a", "start": 0.0, "end": 1.0, "token_times": [0.5, 0.7], "completion_tokens": 2, "prompt_tokens": 3},
          {"id": "a", "start": 0.0, "end": 2.0, "token_times": [1.0], "completion_tokens": 1, "prompt_tokens": 3}]
    s = summarize(rs, ["boom"], 2.0, 4, {"num_requests": 4})
    assert s["answered"] == 2 and s["errors"] == 1 and s["lost"] == 1 and s["duplicate_ids"] == 1
    assert s["ttft_s"]["p50"] == 0.5 and abs(s["itl_s"]["p99"] - 0.2) < 1e-9


def test_long_prompt_summary_splits_gaps_at_the_long_prefill():
    from turboctx.bench.serve_long import summarize_long
    alone = {"start": 0.0, "end": 5.0, "token_times": [4.0], "prompt_tokens": 100}
    beside = {"start": 20.0, "end": 26.0, "token_times": [25.0], "prompt_tokens": 100}
    short = [{"id": "s1", "start": 11.0, "end": 19.0, "token_times": [12.0, 12.1, 12.3, 19.0]},
             {"id": "s2", "start": 19.5, "end": 28.0, "token_times": [19.6, 21.0, 22.0, 27.0]}]
    res = summarize_long(short, [], 2, alone, beside, base_start=10.0, params={})
    assert res["n_gaps_without"] == 3          # s1 only: s2's first gap ends after the long prompt began
    assert res["short_itl_without_s"]["p99"] == 19.0 - 12.3
    assert res["n_gaps_during"] == 3 and res["max_short_itl_during_s"] == 5.0
    assert res["long_ttft_alone_s"] == 4.0 and res["long_ttft_beside_s"] == 5.0
    assert res["long_ttft_ratio"] == 1.25 and res["lost"] == 0
    assert res["short_ttft_without_s"]["p99"] == 1.0 and res["short_ttft_during_s"]["p50"] is None


def test_serve_prefix_caching_flag_reaches_the_engine(monkeypatch):
    """vLLM's flag names reach the engine's typed config."""
    import turboctx.engine.llm_engine as le
    from turboctx.server.cli import build_engine, serve_app
    from typer.testing import CliRunner

    seen = []
    monkeypatch.setattr(le, "LLMEngine", lambda config: seen.append(config.cache.enable_prefix_caching))
    build_engine({})
    build_engine({"enable_prefix_caching": False})
    assert seen == [True, False]
    help_text = CliRunner().invoke(serve_app, ["--help"], env={"COLUMNS": "200"}).output
    assert "--enable-prefix-caching" in help_text and "--no-enable-prefix-caching" in help_text

    import turboctx.server.cli as cli

    class Stop(Exception):
        pass

    def fake_build_engine(options):
        seen.append(options.get("enable_prefix_caching", True))
        raise Stop
    monkeypatch.setattr(cli, "build_engine", fake_build_engine)
    for args, want in (([], True), (["--no-enable-prefix-caching"], False),
                       (["--enable-prefix-caching"], True)):
        r = CliRunner().invoke(serve_app, ["--log-level", "warning", *args])
        assert isinstance(r.exception, Stop) and seen[-1] is want, r.output
