"""The one typed configuration: options checked before anything loads, errors that name the
closest valid option, resolution from the model and the device, and every command line built
from the same definitions."""
from __future__ import annotations

import pickle
import time

import pytest

from turboctx import LLM, EngineConfig, InvalidRequestError
from turboctx.config import ENGINE_OPTIONS


def test_a_typo_is_refused_at_once_with_no_weight_loaded(monkeypatch):
    import turboctx.engine.llm_engine as llm_engine
    import turboctx.engine.worker as worker
    opened = []
    monkeypatch.setattr(llm_engine, "open_checkpoint", lambda *a: opened.append(a))
    monkeypatch.setattr(worker, "load_model", lambda *a, **k: opened.append(a))
    t = time.perf_counter()
    with pytest.raises(InvalidRequestError, match="'sparse_treshold'; did you mean 'sparse_threshold'"):
        LLM("random:smollm2-135m", sparse_treshold=1)
    assert time.perf_counter() - t < 1.0 and opened == []


@pytest.mark.parametrize("options, words", [
    (dict(prefill_chunk_size=512), "now max_num_batched_tokens"),
    (dict(cuda_graphs=False), "enforce_eager"),
    (dict(dca_yarn_per_position=False), "removed"),
    (dict(max_num_seq=8), "did you mean 'max_num_seqs'"),
    (dict(flash=True), "unknown engine option 'flash'; known: model, device"),
    (dict(max_model_len=0), "max_model_len=0 must be an int >= 1"),
    (dict(max_model_len=True), "max_model_len=True must be an int"),
    (dict(gpu_memory_utilization=1.5), r"gpu_memory_utilization=1.5 must be a number in \[0.05, 1\]"),
    (dict(enable_prefix_caching="yes"), "enable_prefix_caching='yes' must be True or False"),
    (dict(attention="fast"), "attention='fast' is not one of auto, dense, sparse"),
    (dict(kv_cache_dtype="fp8_e5m2"), "kv_cache_dtype='fp8_e5m2' is not one of auto, fp8"),
    (dict(device="tpu"), "device='tpu' is not one of auto, cpu, cuda, cuda:N"),
    (dict(tensor_parallel_size=0), "tensor_parallel_size=0 must be an int >= 1"),
])
def test_bad_options_name_the_option_and_what_it_allows(options, words):
    with pytest.raises(InvalidRequestError, match=words):
        EngineConfig.from_options(**options)


def test_options_fill_their_sections_and_aliases_normalize():
    c = EngineConfig.from_options(model="m.gguf", dtype="bf16", max_num_seqs=4, block_size=16,
                                  tensor_parallel_size=2, attention="sparse", sparse_threshold=4096)
    assert (c.model.model, c.model.dtype, c.scheduler.max_num_seqs, c.cache.block_size) == \
        ("m.gguf", "bfloat16", 4, 16)
    assert c.parallel.tensor_parallel_size == 2 and c.attention.sparse_threshold == 4096
    assert not c.is_resolved and c.dca is None and c.sparse is None
    assert pickle.loads(pickle.dumps(c)) == c            # it travels to tensor-parallel ranks


def test_text_values_parse_through_the_same_definitions():
    got = ENGINE_OPTIONS.parse_assignments("dca=true, max_model_len=128k,attention=sparse,"
                                           "gpu-memory-utilization=0.5")
    assert got == {"dca": True, "max_model_len": 131072, "attention": "sparse",
                   "gpu_memory_utilization": 0.5}
    with pytest.raises(InvalidRequestError, match="did you mean 'dca'"):
        ENGINE_OPTIONS.parse_assignments("dcaa=true")
    with pytest.raises(InvalidRequestError, match="max_model_len='4x' is not a size"):
        ENGINE_OPTIONS.parse_assignments("max_model_len=4x")


def _arch(name="random:qwen2.5-7b-1m"):
    from turboctx.weights import open_checkpoint
    return open_checkpoint(name).config


def test_resolve_fills_in_from_the_model_and_the_device():
    cpu = EngineConfig.from_options().resolve(_arch("random:smollm2-135m"), cuda_available=False)
    assert (cpu.model.device, cpu.model.dtype, cpu.max_model_len, cpu.max_num_batched_tokens) == \
        ("cpu", "float32", 8192, 2048)
    assert cpu.attention_name == "dense" and cpu.is_resolved
    qwen = EngineConfig.from_options(attention="auto", device="cpu").resolve(_arch(), cuda_available=False)
    assert qwen.attention_name == "dca"              # DCA from the model's config; auto: dense on the CPU
    assert (qwen.dca.chunk_size, qwen.dca.local_size, qwen.max_model_len) == (262144, 8192, 1010000)
    off = EngineConfig.from_options(dca=False).resolve(_arch(), cuda_available=False)
    assert off.dca is None
    with pytest.raises(InvalidRequestError, match="CUDA is not available"):
        EngineConfig.from_options(device="cuda").resolve(_arch(), cuda_available=False)
    with pytest.raises(InvalidRequestError, match="sparse_threshold given but attention='auto' \\(auto runs dense off a GPU\\); use attention='sparse'"):
        EngineConfig.from_options(sparse_threshold=8).resolve(_arch(), cuda_available=False)


def _commands(cmd, path=()):
    """(path, click command) of every leaf command under a click group."""
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


MODEL_COMMANDS = {("generate",), ("ask",), ("chat",), ("info",), ("serve",), ("calibrate",),
                  ("bench", "prefill"), ("bench", "decode"), ("bench", "context"), ("bench", "coldstart"),
                  ("eval", "passkey"),
                  ("eval", "niah"),
                  ("eval", "ruler"), ("eval", "ppl")}


def test_every_command_takes_its_engine_options_from_the_one_table():
    """Each command that runs a model has every engine option (but those it sets itself), each
    flag with the table's help text; no command defines an engine option of its own."""
    from turboctx.cli import full_app
    from turboctx.cli.engine_options import EXCLUDED, MARK, cli_help
    flags = {s.flag: s for s in ENGINE_OPTIONS}
    seen = set()
    from typer.main import get_command
    for path, cmd in _commands(get_command(full_app())):
        taken = getattr(cmd.callback, MARK, ())
        own_meaning = getattr(cmd.callback, EXCLUDED, ())    # declared: e.g. eval's --seed
        assert bool(taken) == (path in MODEL_COMMANDS), path
        seen.add(path)
        for p in cmd.params:
            spec = flags.get(next((o for o in p.opts if o in flags), None))
            if spec is None or spec.name in own_meaning:
                assert p.name not in ENGINE_OPTIONS or p.name in own_meaning, (path, p.name)
                continue
            assert p.name == spec.name and spec.name in taken, (path, p.opts)
            assert p.help.startswith(cli_help(spec).split(" [default:")[0]), (path, p.name)
        missing = set(taken) - {p.name for p in cmd.params}
        assert not missing, (path, missing)
        if path in (("generate",), ("ask",), ("chat",), ("info",), ("serve",)):
            assert set(taken) == set(ENGINE_OPTIONS.specs), path      # all of them
    assert MODEL_COMMANDS <= seen
