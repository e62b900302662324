"""Fuzz: schemathesis against the live server's own /openapi.json — no 5xx, and the server still
answers afterwards.

Every operation gets schema-valid ("positive") and schema-violating ("negative") requests with the
Bearer key. The server runs with a small max_model_len, so no fuzzed request can ask for more than
a few dozen tokens of generation and the whole test stays well under 90 s on a 2-core CPU.
Bounded and reproducible (derandomized); TURBOCTX_FUZZ_EXAMPLES=N explores more per operation.
"""
from __future__ import annotations

import os

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from server_fixtures import MODEL, start_server  # noqa: E402

MAX_MODEL_LEN = 64            # every generation is < 64 tokens: fast on the CPU
MAX_EXAMPLES = int(os.environ.get("TURBOCTX_FUZZ_EXAMPLES", "15"))   # per endpoint; more: set it


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("fuzz")), "--max-model-len", str(MAX_MODEL_LEN),
                       "--kv-cache-tokens", "1024", "--max-num-seqs", "4")
    yield srv
    if srv.proc.poll() is None:
        code = srv.stop()
        assert code == 0, f"exit code {code}\n{srv.log()}"


def test_fuzz_openapi_no_server_errors(fuzz_server):
    srv = fuzz_server
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json", headers=srv.headers, timeout=30)
    session = requests.Session()
    failures: list[str] = []
    counts: dict[str, int] = {}
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                                       "/metrics", "/tokenize", "/detokenize", "/tokenizer_info"}

    statuses: dict[str, dict[int, int]] = {}
    for op in ops:
        # a random model name is refused before anything else is looked at: also fuzz with the
        # served name, so that valid bodies reach tokenization, validation and generation
        variants = [(GenerationMode.POSITIVE, False), (GenerationMode.NEGATIVE, False)]
        if op.method.upper() == "POST":
            variants.append((GenerationMode.POSITIVE, True))
        for mode, served_model in variants:
            key = f"{op.method.upper()} {op.path} {mode.value}{' +model' if served_model else ''}"

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],     # no shrinking: failures are listed
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                counts[key] = counts.get(key, 0) + 1
                if served_model and isinstance(case.body, dict):
                    case.body["model"] = MODEL
                resp = case.call(base_url=srv.url, session=session, headers=srv.headers, timeout=60)
                st = statuses.setdefault(key, {})
                st[resp.status_code] = st.get(resp.status_code, 0) + 1
                if resp.status_code >= 500:
                    failures.append(f"{key}: {resp.status_code} {resp.text[:300]}\n  {case.as_curl_command()}")

            try:
                run()
            except Exception as e:     # hypothesis could not generate (e.g. Unsatisfiable): note it, go on
                if "Unsatisfiable" not in type(e).__name__:
                    raise
    print("fuzzed requests per operation:", counts, "\nstatuses:", statuses)
    assert not failures, "server errors:\n" + "\n".join(failures[:10]) + f"\n{srv.log()}"
    assert sum(counts.values()) >= 6 * MAX_EXAMPLES
    assert requests.get(srv.url + "/health", timeout=10).json() == {"status": "ok"}
    assert requests.get(srv.url + "/v1/models", headers=srv.headers, timeout=10).status_code == 200
    assert "Traceback" not in srv.log(), srv.log()
