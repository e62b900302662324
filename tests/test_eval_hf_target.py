"""HFTarget (HF transformers through the harness) against the engine's LocalTarget, and its CLI."""
import pytest
import typer

from turboctx.eval import passkey
from turboctx.eval.hf_target import HFTarget, hf_load_args
from turboctx.eval.targets import LocalTarget, PromptTooLong


@pytest.fixture(scope="module")
def pair(default_gguf_path, hf_default_model):
    from transformers import GenerationConfig
    hf = HFTarget(None, device="cpu", dtype="float32", batch_size=3)
    hf_default_model.generation_config = GenerationConfig()   # what HFTarget's own load sets
    hf._model = hf_default_model           # the same load HFTarget makes, shared with other tests
    local = LocalTarget(None, device="cpu", dtype="float32", max_model_len=2048, batch_size=3)
    yield hf, local
    hf.close()


def test_greedy_answers_equal_engine(pair):
    hf, local = pair
    pk = passkey.generate([300], [0.5], 1, 0, hf.count_tokens)[0]
    # different lengths in one batch: HF runs them left-padded
    prompts = [pk.prompt, "The capital of France is", "1, 2, 3, 4,"]
    a, b = hf.generate(prompts, 12), local.generate(prompts, 12)
    assert a == b, (a, b)
    assert pk.expected[0] in a[0]


def test_token_logprobs_equal_engine(pair):
    hf, local = pair
    from turboctx.eval.haystack import bible_text
    ids = hf.encode(bible_text()[:600])[:96]
    a, b = hf.token_logprobs(ids), local.token_logprobs(ids)
    assert len(a) == len(b) == len(ids) - 1
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_prompt_over_limit_is_an_error_without_loading(default_gguf_path):
    hf = HFTarget(None, device="cpu", max_model_len=32)
    out = hf.generate(["word " * 40], 8)
    assert isinstance(out[0], PromptTooLong) and hf._model is None


def test_model_specs(tmp_path, default_gguf_path):
    with pytest.raises(ValueError, match="random:<preset> models exist only inside the engine"):
        HFTarget("random:smollm2-135m")
    with pytest.raises(ValueError, match="does not exist"):
        HFTarget(str(tmp_path / "nope"))
    assert hf_load_args(None) == (str(default_gguf_path.parent), {"gguf_file": default_gguf_path.name})
    assert hf_load_args(str(default_gguf_path))[1] == {"gguf_file": default_gguf_path.name}
    assert hf_load_args(str(tmp_path)) == (str(tmp_path), {})


def test_cli_target_hf(tmp_path):
    from typer.testing import CliRunner

    from turboctx.eval import cli
    t = cli.make_target({"device": "cpu", "dtype": "float32", "dca": False}, None, None,
                        None, None, 4, 2, kind="hf")
    assert isinstance(t, HFTarget) and t.batch_size == 2 and t.dtype_name == "float32"
    with pytest.raises(typer.BadParameter, match="engine flags"):
        cli.make_target({"dca": True}, None, None, None, None, 4, 1, kind="hf")
    with pytest.raises(typer.BadParameter, match="drop --base-url"):
        cli.make_target({}, "http://x/v1", None, None, None, 4, 1, kind="hf")
    r = CliRunner().invoke(cli.eval_app, ["passkey", "--target", "hf", "--model", "random:smollm2-135m",
                                          "--out", str(tmp_path)])
    assert r.exit_code != 0 and "random:<preset>" in r.output
