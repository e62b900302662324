"""Shared fixtures and the GPU marker."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))   # tests/hf_reference.py and friends
# pytest -n N (xdist): the cores are shared by the N workers (and what each starts)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) // _WORKERS)))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# kept contexts (and anything else turboctx keeps across processes) go to a folder of this test
# run, never to the user's ~/.cache or /dev/shm; subprocesses inherit it
_HOME = __import__("tempfile").mkdtemp(prefix="turboctx-test-home-")
os.environ["TURBOCTX_HOME"] = _HOME
os.environ["TURBOCTX_CONTEXT_RAM_DIR"] = os.path.join(_HOME, "ram")
__import__("atexit").register(__import__("shutil").rmtree, _HOME, True)


@pytest.fixture(autouse=True)
def turboctx_home(tmp_path_factory, request, monkeypatch):
    """Each test's own turboctx home (prefill rates, kept contexts), never the user's: commands
    the test starts inherit it."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.nodeid)[-120:]
    home = tmp_path_factory.getbasetemp() / "turboctx_home" / name
    monkeypatch.setenv("TURBOCTX_HOME", str(home))
    monkeypatch.setenv("TURBOCTX_CONTEXT_RAM_DIR", str(home / "ram"))
    return home


# The default model's GGUF is dequantized once in this process (~3 s of each of the many loads of
# it) and its tensors are handed out again as copies. No test but test_weights.py (the loader's
# own tests, which always read the file) loads the default model to test the dequantization.
_DEQUANTIZED: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
_READ_GGUF_ITSELF = [False]


def _dequantize_default_once():
    import turboctx.weights.gguf_file as gguf_file
    from turboctx.errors import ModelLoadError
    from turboctx.weights import default_gguf_path
    real = getattr(gguf_file, "_stream", None)
    try:
        default = Path(default_gguf_path()).resolve()
    except ModelLoadError:
        return                                  # the default_gguf_path fixture fails the tests
    if real is None:
        return

    def stream(reader, config):
        path = Path(reader.path).resolve()
        if path != default or _READ_GGUF_ITSELF[0]:
            return real(reader, config)
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns, config.family, config.num_attention_heads,
               config.num_key_value_heads)
        if key not in _DEQUANTIZED:
            _DEQUANTIZED.clear()
            _DEQUANTIZED[key] = list(real(reader, config))
        return ((name, t.clone()) for name, t in _DEQUANTIZED[key])

    gguf_file._stream = stream


_dequantize_default_once()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _READ_GGUF_ITSELF[0] = item.path.name == "test_weights.py"


@pytest.fixture(scope="session")
def session_turboctx_home():
    """The turboctx home of processes started by session fixtures (the shared server)."""
    return Path(_HOME)


@pytest.fixture(scope="session")
def default_gguf_path():
    """The default model's GGUF (SmolLM2-135M-Instruct Q4_1). Missing is a failure, not a skip:
    the README's test command installs it."""
    from turboctx.errors import ModelLoadError
    from turboctx.weights import default_gguf_path as find
    try:
        return find()
    except ModelLoadError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory, default_gguf_path):
    """The live `turboctx serve` of the default model that the server tests share (started on
    first use; see server_fixtures.SharedServer)."""
    from server_fixtures import SharedServer
    holder = SharedServer(str(tmp_path_factory.mktemp("server")), default_gguf_path,
                          env={"TURBOCTX_HOME": _HOME, "TURBOCTX_CONTEXT_RAM_DIR": os.path.join(_HOME, "ram")})
    yield holder
    srv = holder.current
    if srv is not None and srv.proc.poll() is None:
        code = srv.stop()
        assert code == 0, f"exit code {code}\n{srv.log()}"


@pytest.fixture
def server(shared_server):
    """The shared server (the same process from test to test while it lives)."""
    return shared_server.get()


@pytest.fixture
def client(server):
    import openai
    from server_fixtures import API_KEY
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def hf_default_model(default_gguf_path):
    """HF transformers' own load of the default model's GGUF (fp32): the reference, loaded once."""
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(default_gguf_path.parent, gguf_file=default_gguf_path.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def reference_llm():
    """The served model in-process, with the server's max_model_len: what the server must match."""
    from server_fixtures import MAX_MODEL_LEN
    from turboctx import LLM
    return LLM(None, device="cpu", max_model_len=MAX_MODEL_LEN, kv_cache_tokens=MAX_MODEL_LEN,
               max_num_seqs=2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Tests marked `exclusive` time the engine against itself (a latency ratio, a warm start against
# a cold one): under pytest -n N they run with no other worker's test beside them. Every test
# holds a shared lock from the setup of its fixtures to their teardown (a module's or session's
# fixtures, such as a model load or a tensor-parallel server start, are set up and torn down in
# some test's run, so they are under the lock too), an exclusive one the lock alone (and every
# core for its threads); a turnstile first, so that a waiting exclusive test is not starved.
_LOCKS = os.path.join(__import__("tempfile").gettempdir(),
                      f"turboctx-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'serial')}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _WORKERS == 1:
        yield
        return
    import fcntl
    with open(_LOCKS + ".turnstile", "a") as turnstile, open(_LOCKS + ".run", "a") as run:
        exclusive = item.get_closest_marker("exclusive") is not None
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(run, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)  # exclusive: waits for
        fcntl.flock(turnstile, fcntl.LOCK_UN)                            # the others' tests
        threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
        if exclusive:          # the cores are its own while it runs, and its subprocesses'
            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
            os.environ["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            if omp is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = omp
            fcntl.flock(run, fcntl.LOCK_UN)
