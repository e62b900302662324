"""Sparse prefill through the engine: options, full budgets == dense, the benchmark's columns."""
from __future__ import annotations

import json

import pytest
import torch

from turboctx import LLM, SamplingParams
from turboctx.attention.sparse.config import write_sparse_attention_config
from turboctx.errors import InvalidRequestError

from hf_reference import make_tiny_hf

MODEL = "random:smollm2-135m"     # 30 layers, 9 query heads, 3 kv heads (3:1)
LAYERS, HEADS = 2, 14             # the tiny folder: qwen2, 14 query heads, 2 kv heads (7:1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse")
    make_tiny_hf("qwen2-gqa7-bias-untied", d)
    return d


def _llm(model=MODEL, **kw):
    return LLM(str(model), device="cpu", max_model_len=1024, max_num_batched_tokens=256,
               enable_prefix_caching=False, **kw)


@pytest.mark.parametrize("kw, words", [
    (dict(attention="dense", sparse_threshold=64), "attention='dense'"),
    (dict(attention="sparse", sparse_threshold=0), "sparse_threshold=0"),
    (dict(attention="sparse", sparse_threshold="4k"), "sparse_threshold='4k' must be an int"),
    (dict(attention="fast"), "attention='fast'"),
    (dict(attention="sparse", sparse_config="/no/such/file.json"), "sparse attention config"),
    (dict(attention="sparse", sparse_dense_tail=-1), "sparse_dense_tail=-1 must be an int >= 0"),
    (dict(attention="sparse", sparse_dense_tail="all"), "sparse_dense_tail='all'"),
    (dict(attention="dense", sparse_dense_tail=64), "attention='dense'"),
])
def test_attention_options_are_checked(kw, words):
    with pytest.raises(InvalidRequestError, match=words):
        _llm(**kw)


@pytest.mark.parametrize("budgets, words", [
    ([[(10, 100)] * HEADS] * (LAYERS + 1), f"has {LAYERS + 1} layers, the model has {LAYERS}"),
    ([[(10, 100)] * HEADS, [(10, 100)] * (HEADS - 1)], f"has {HEADS - 1} heads in layer 1, the "
                                                       f"model has {HEADS}"),
])
def test_a_sparse_config_for_another_model_is_refused_at_start(folder, tmp_path, budgets, words):
    path = write_sparse_attention_config(tmp_path / "other.json", budgets)
    with pytest.raises(InvalidRequestError, match=words):
        _llm(folder, attention="sparse", sparse_config=str(path))


def _resolved(attention="dense", **options):
    from turboctx.config import EngineConfig
    from turboctx.weights import open_checkpoint
    arch = open_checkpoint(MODEL).config
    return EngineConfig.from_options(attention=attention, **options).resolve(arch, cuda_available=False)


def test_attention_choices_pick_the_backend():
    assert _resolved("sparse").attention_name == "sparse"
    assert _resolved("sparse").sparse.threshold == 32768
    assert _resolved("sparse", sparse_threshold=300).sparse.threshold == 300
    assert _resolved("auto").attention_name == "dense"          # auto on the CPU: dense
    assert _resolved().attention_name == "dense"
    assert _resolved("sparse", dca=True).attention_name == "dca+sparse"


@pytest.mark.parametrize("dca", [False, True])
def test_full_budgets_equal_dense_through_the_engine(folder, tmp_path, dca):
    """Budgets covering every key make sparse prefill exact: same logprobs as dense."""
    path = write_sparse_attention_config(tmp_path / "full.json", [[(10**6, 10**6)] * HEADS] * LAYERS)
    ids = torch.randint(3, 512, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    sp = SamplingParams(max_tokens=3, temperature=0, logprobs=5, ignore_eos=True)
    extra = dict(dca=True, dca_chunk_size=512, dca_local_size=64) if dca else {}
    dense = _llm(folder, **extra).generate(ids, sp)[0]
    llm = _llm(folder, attention="sparse", sparse_threshold=300, sparse_config=str(path),
               sparse_dense_tail=0, **extra)
    sparse = llm.generate(ids, sp)[0]
    assert sparse.token_ids == dense.token_ids
    for a, b in zip(sparse.logprobs, dense.logprobs):
        assert a.keys() == b.keys()
        assert max(abs(a[t] - b[t]) for t in a) < 1e-4
    st = llm.engine.sparse_stats()
    assert st["sparse_chunk_layers"] == LAYERS * 2 and st["dense_chunk_layers"] == LAYERS
    assert st["density"] == pytest.approx(1.0)


@pytest.mark.parametrize("dca", [False, True])
@pytest.mark.parametrize("tail", [0, 100])
def test_batched_prompts_get_their_own_sparse_patterns(folder, tmp_path, dca, tail):
    """Prompts of different lengths prefilled together (eval's --batch-size) give what each gives
    alone with small budgets (truly sparse): patterns are estimated per sequence, and each
    prompt's own last `tail` tokens run dense."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (700, 530, 611)]
    sp = SamplingParams(max_tokens=3, temperature=0, logprobs=5, ignore_eos=True)
    extra = dict(dca=True, dca_chunk_size=512, dca_local_size=64) if dca else {}
    small = write_sparse_attention_config(tmp_path / "small.json", [[(40, 64)] * HEADS] * LAYERS)
    llm = _llm(folder, attention="sparse", sparse_threshold=300, sparse_config=str(small),
               sparse_dense_tail=tail, **extra)
    together = llm.generate(prompts, sp)
    st = llm.engine.sparse_stats()
    assert st["density"] < 0.9 and st["dense_tail_row_layers"] == LAYERS * tail * len(prompts)
    for p, t in zip(prompts, together):
        alone = llm.generate(p, sp)[0]
        assert t.token_ids == alone.token_ids
        for a, b in zip(t.logprobs, alone.logprobs):
            assert max(abs(a[k] - b[k]) for k in a if k in b) < 1e-4


def test_budgets_file_beside_the_weights_is_read(folder, tmp_path):
    import shutil
    d = tmp_path / "model"
    shutil.copytree(folder, d)
    write_sparse_attention_config(d, [[(7, 200)] * HEADS, [(9, 300)] * HEADS])
    cfg = _llm(d, attention="sparse").engine.sparse_config()
    assert cfg.budgets(1, HEADS) == [(9, 300)] * HEADS


def test_bench_prefill_reports_density_and_estimation(folder, tmp_path):
    from typer.testing import CliRunner

    from turboctx.bench.cli import bench_app
    out = tmp_path / "p.json"
    r = CliRunner().invoke(bench_app, ["prefill", "--model", str(folder), "--lengths", "1280", "--repeat", "1",
                                       "--device", "cpu", "--attention", "sparse", "--sparse-threshold",
                                       "300", "--max-num-batched-tokens", "256", "--json", str(out)])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["rows"][0]
    assert row["engine"] == "turboctx+sparse" and 0 < row["density"] <= 1
    assert row["estimate_s"] > 0 and 0 < row["estimate_fraction"] < 1
    # chunks of 256: the first dense (below 300), two sparse (the first from row 300 on), the
    # last 512 tokens the dense tail
    assert row["sparse_chunk_layers"] == LAYERS * 2 and row["dense_chunk_layers"] == LAYERS
    assert row["dense_tail_row_layers"] == LAYERS * 512


def test_cli_commands_take_a_budgets_file_and_dca(tmp_path, monkeypatch, capsys):
    """`turboctx generate --attention sparse --sparse-config FILE --dca` reaches the engine
    (a GGUF's folder is never searched, so the flag is how a calibrated file is used); a budgets
    file with dense attention is a clear error."""
    from typer.testing import CliRunner

    import turboctx.cli as cli
    import turboctx.cli.generate as generate
    layers, heads = 30, 9                      # the default model (it has a tokenizer)
    f = write_sparse_attention_config(tmp_path / "b.json", [[(7, 200)] * heads] * (layers - 1)
                                      + [[(9, 300)] * heads])
    seen = {}

    def spy(options):
        seen["llm"] = real(options)
        return seen["llm"]
    real = generate.load_llm
    monkeypatch.setattr(generate, "load_llm", spy)
    base = ["generate", "hello", "--device", "cpu", "--max-tokens", "2", "--max-model-len", "256"]
    r = CliRunner().invoke(cli.full_app(), base + ["--attention", "sparse", "--sparse-config", str(f), "--dca",
                                            "--sparse-dense-tail", "7"])
    assert r.exit_code == 0, r.output
    engine = seen["llm"].engine
    assert engine.config.attention_name == "dca+sparse"
    assert engine.sparse_config().budgets(layers - 1, heads) == [(9, 300)] * heads
    assert engine.sparse_config().dense_tail == 7
    monkeypatch.setattr("sys.argv", ["turboctx"] + base + ["--sparse-config", str(f)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code != 0 and "attention='auto'" in capsys.readouterr().err


@pytest.mark.parametrize("dca", [False, True])
def test_prefix_reuse_gives_what_the_prompt_gives_alone(folder, tmp_path, dca):
    """With prefix caching, a prompt that extends an earlier one reuses its KV only where a
    prompt alone computes the same: not where the earlier prompt's dense tail ran."""
    g = torch.Generator().manual_seed(2)
    first = torch.randint(3, 512, (800,), generator=g).tolist()
    second = first + torch.randint(3, 512, (200,), generator=g).tolist()
    sp = SamplingParams(max_tokens=3, temperature=0, logprobs=5, ignore_eos=True)
    extra = dict(dca=True, dca_chunk_size=512, dca_local_size=64) if dca else {}
    small = write_sparse_attention_config(tmp_path / "small.json", [[(40, 64)] * HEADS] * LAYERS)
    kw = dict(attention="sparse", sparse_threshold=300, sparse_config=str(small),
              sparse_dense_tail=100, **extra)
    alone = _llm(folder, **kw).generate(second, sp)[0]
    llm = LLM(str(folder), device="cpu", max_model_len=1024, max_num_batched_tokens=256,
              enable_prefix_caching=True, **kw)
    llm.generate(first, sp)
    after = llm.generate(second, sp)[0]
    assert after.metrics.num_cached_tokens == 512   # the first prompt's tail began in [512, 768)
    assert after.token_ids == alone.token_ids
    for a, b in zip(after.logprobs, alone.logprobs):
        assert max(abs(a[k] - b[k]) for k in a if k in b) < 1e-4
