"""Logit bias, repetition/presence/frequency penalties, min-p and min_tokens against slow exact
references, the model's generation-config defaults, and their effect on real generation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from turboctx import LLM, SamplingParams
from turboctx.engine.penalties import (PenaltyState, apply_logit_bias, apply_min_p, apply_penalties,
                                       mask_min_tokens)
from turboctx.errors import InvalidRequestError
from turboctx.weights.generation_config import generation_defaults, sampling_defaults


def reference_penalties(logits: list[float], prompt: list[int], output: list[int],
                        rep: float, presence: float, frequency: float) -> list[float]:
    """One token at a time, as the definitions read (CTRL's repetition penalty, OpenAI's
    presence and frequency penalties)."""
    out = []
    for t, x in enumerate(logits):
        if t in prompt or t in output:
            x = x / rep if x > 0 else x * rep
        count = output.count(t)
        x -= frequency * count + presence * (1 if count else 0)
        out.append(x)
    return out


@pytest.mark.parametrize("vocab", [7, 50, 49152])
@pytest.mark.parametrize("rep,presence,frequency", [(1.0, 0.5, 0.0), (1.3, 0.0, 0.7), (0.8, -1.0, 2.0)])
def test_penalties_equal_the_reference(vocab, rep, presence, frequency):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(vocab, generator=g) * 3                              # [V]
    prompt = torch.randint(0, vocab, (11,), generator=g).tolist()
    output = torch.randint(0, vocab, (9,), generator=g).tolist()
    sp = SamplingParams(repetition_penalty=rep, presence_penalty=presence, frequency_penalty=frequency)
    state = PenaltyState(prompt, output[:4], sp, vocab, logits.device)
    for t in output[4:]:                               # counts built up one token at a time too
        state.observe(t)
    got = apply_penalties(logits, sp, state)
    want = torch.tensor(reference_penalties(logits.tolist(), prompt, output, rep, presence, frequency))
    torch.testing.assert_close(got, want)


def test_min_p_logit_bias_and_min_tokens_mask_equal_the_reference():
    g = torch.Generator().manual_seed(0)
    row = torch.randn(101, generator=g) * 2                                   # [V]
    probs = row.softmax(-1).tolist()
    for min_p in (0.0, 0.05, 0.5, 1.0):
        kept = [p >= min_p * max(probs) for p in probs]
        got = apply_min_p(row, min_p)
        assert [bool(x) for x in torch.isfinite(got)] == kept
        assert torch.equal(got[torch.isfinite(got)], row[torch.tensor(kept)])
    bias = {3: 100.0, 50: -2.5}
    want = row.clone()
    want[3] += 100.0
    want[50] -= 2.5
    torch.testing.assert_close(apply_logit_bias(row, bias), want)
    masked = mask_min_tokens(row, [0, 100, 5000])         # an id past the vocabulary is ignored
    assert torch.isinf(masked[[0, 100]]).all() and torch.equal(masked[1:100], row[1:100])


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu", max_model_len=1024)


PROMPT = "Repeat after me: red red red red red red red"


def test_penalties_change_greedy_generation(llm):
    plain = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    rep = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                              repetition_penalty=1.5))[0]
    assert plain.token_ids != rep.token_ids
    freq = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                               frequency_penalty=2.0))[0]
    assert max(freq.token_ids.count(t) for t in set(freq.token_ids)) <= \
        max(plain.token_ids.count(t) for t in set(plain.token_ids))
    eos = llm.engine.eos_token_ids[0]
    forced = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0, logit_bias={eos: 100.0},
                                                 min_tokens=4))[0]
    # EOS is masked for the first 4 tokens, then the bias makes it the 5th
    assert forced.num_output_tokens == 5 and forced.token_ids[-1] == eos and eos not in forced.token_ids[:4]
    assert llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0, logit_bias={eos: 100.0})
                        )[0].token_ids == [eos]


def test_bad_sampling_fields_are_clear_errors(llm):
    for kw, text in [({"repetition_penalty": 0}, "repetition_penalty"), ({"min_p": 1.5}, "min_p"),
                     ({"presence_penalty": 3}, "presence_penalty"), ({"min_tokens": 20}, "min_tokens"),
                     ({"logit_bias": {1: 500}}, "logit_bias")]:
        with pytest.raises(InvalidRequestError, match=text):
            SamplingParams(max_tokens=10, **kw)
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate("hi", SamplingParams(logit_bias={10 ** 7: 1.0}))


def test_generation_config_defaults(tmp_path, llm):
    raw = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
           "max_new_tokens": 64, "min_p": "high", "eos_token_id": 2}
    assert sampling_defaults(raw) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                                      "repetition_penalty": 1.05, "max_tokens": 64}
    (tmp_path / "generation_config.json").write_text(json.dumps(raw))
    assert generation_defaults("none", str(tmp_path)) == {}
    assert generation_defaults(str(tmp_path), None)["temperature"] == 0.7
    assert llm.get_default_sampling_params() == SamplingParams()     # the GGUF sets no defaults
    with_defaults = LLM(device="cpu", max_model_len=256, generation_config=str(tmp_path))
    sp = with_defaults.get_default_sampling_params()
    assert (sp.temperature, sp.top_k, sp.repetition_penalty, sp.max_tokens) == (0.7, 20, 1.05, 64)
    given = with_defaults.engine.default_sampling_params(temperature=0.0)
    assert given.temperature == 0.0 and math.isclose(given.top_p, 0.8)
    with pytest.raises(InvalidRequestError, match="generation_config"):
        LLM(device="cpu", generation_config=str(tmp_path / "missing"))


def test_batched_logits_processing_equals_one_request_at_a_time(llm):
    """process_logits masks every structured request's row with one bitmask; the reference
    applies each request's own mask (GrammarMatcher.apply) after its penalties, row by row."""
    from turboctx.engine.logits_processing import process_logits, processed_row
    from turboctx.structured import StructuredOutputsParams
    eng = llm.engine
    json_spec = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}}})
    params = [SamplingParams(max_tokens=8),                                            # untouched
              SamplingParams(max_tokens=8, structured_outputs=json_spec),
              SamplingParams(max_tokens=8, repetition_penalty=1.3, structured_outputs=StructuredOutputsParams(
                  choice=["yes", "no"])),
              SamplingParams(max_tokens=8, presence_penalty=1.0, logit_bias={5: 3.0}),
              SamplingParams(max_tokens=8, min_tokens=3, structured_outputs=json_spec)]
    reqs = [eng.make_request("Answer:", p, request_id=f"r{i}") for i, p in enumerate(params)]
    vocab = eng.architecture.vocab_size + 64                    # padded logits rows are masked too
    logits = torch.randn(len(reqs), vocab, generator=torch.Generator().manual_seed(3))    # [B, V]
    got = process_logits(logits, reqs)
    for i, r in enumerate(reqs):
        want = processed_row(logits[i], r)
        if r.grammar is not None:
            want = r.grammar.apply(want)
        assert torch.equal(got[i], want), i
    assert torch.isinf(got[1, eng.architecture.vocab_size:]).all()
