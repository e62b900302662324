"""The OpenAI server with --tensor-parallel-size 2 (gloo, CPU) passes the client tests of
test_server.py (imported here, so they run against this module's `server`), and its shutdown ends
every rank."""
from __future__ import annotations

import openai
import pytest

from server_fixtures import API_KEY, start_server
from test_server import (test_chat_and_stream_agree_with_usage,  # noqa: F401 - reused
                         test_completions_and_stream_agree, test_concurrent_requests_all_answered,
                         test_health_and_models, test_logprobs_equal_in_process,
                         test_stream_disconnect_aborts_and_frees)
from test_server_shutdown import assert_sigterm_cancels_a_stream
from test_tensor_parallel_lifecycle import wait_gone, worker_pids


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("server-tp")), "--tensor-parallel-size", "2")
    srv.worker_pids = worker_pids(srv.proc.pid)
    yield srv
    if srv.proc.poll() is None:
        code = srv.stop()
        assert code == 0, f"exit code {code}\n{srv.log()}"
    assert wait_gone(srv.worker_pids) == []


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_server_runs_one_worker_rank(server):
    assert len(server.worker_pids) == 1


def test_zz_graceful_shutdown_ends_every_rank(server, client):
    """Last: SIGTERM while a request streams -> error event, exit 0, and the worker rank is gone."""
    assert_sigterm_cancels_a_stream(server)
    assert wait_gone(server.worker_pids) == []
