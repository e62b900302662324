"""lm-evaluation-harness (`local-completions`) against a live `turboctx serve`: a multiple-choice
task and a generate-until task from local JSONL files, scored per document exactly as the engine
scores them in-process (the prompt's logprobs; greedy generation)."""
from __future__ import annotations

import json

import pytest

from server_fixtures import API_KEY, MAX_MODEL_LEN, MODEL

MC_DOCS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "How many legs does a cat have?", "choices": ["two", "four", "six", "eight"], "answer": 1},
    {"question": "Which is the largest?", "choices": ["an ant", "a mouse", "an elephant"], "answer": 2},
    {"question": "Water freezes at how many degrees Celsius?", "choices": ["zero", "fifty", "ninety"], "answer": 0},
]
GEN_DOCS = [
    {"question": "Q: What is the capital of France?\nA:", "answer": " Paris"},
    {"question": "Q: What is two plus two?\nA:", "answer": " four"},
    {"question": "Q: Name a primary color.\nA:", "answer": " red"},
]
MC_TASK = """task: turboctx_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
GEN_TASK = """task: turboctx_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _write_tasks(folder) -> None:
    for name, docs, task in (("mc", MC_DOCS, MC_TASK), ("gen", GEN_DOCS, GEN_TASK)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(task.format(data=data))


def test_lm_eval_local_completions_scores_equal_the_engine(server, reference_llm, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    from turboctx import SamplingParams

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    _write_tasks(tmp_path)
    # tokenizer_backend left to lm-eval's auto-detection: it finds /tokenizer_info and /tokenize
    lm = LocalCompletionsAPI(base_url=server.url + "/v1/completions", model=MODEL, batch_size=4,
                             max_length=MAX_MODEL_LEN, auth_token=API_KEY, seed=1234)
    assert lm.tokenizer_backend == "remote"
    res = simple_evaluate(model=lm, tasks=["turboctx_mc", "turboctx_gen"], log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
                          bootstrap_iters=0)

    mc = sorted(res["samples"]["turboctx_mc"], key=lambda s: s["doc_id"])
    assert len(mc) == len(MC_DOCS)
    correct = 0
    for sample in mc:
        pairs = [lm._encode_pair(context, continuation) for context, continuation in sample["arguments"]]
        outs = reference_llm.generate([c + k for c, k in pairs], SamplingParams(
            max_tokens=1, temperature=0, prompt_logprobs=1))
        lls = []
        for (ctx_ids, cont_ids), out, resp in zip(pairs, outs, sample["resps"]):
            ids, plp = ctx_ids + cont_ids, out.prompt_logprobs
            span = range(len(ctx_ids), len(ids))
            ll = sum(plp[j][ids[j]] for j in span)
            greedy = all(max(plp[j], key=plp[j].get) == ids[j] for j in span)
            (got_ll, got_greedy), = resp
            assert got_ll == pytest.approx(ll, abs=1e-3) and got_greedy == greedy, sample["doc"]
            lls.append(ll)
        best = max(range(len(lls)), key=lls.__getitem__)
        assert sample["acc"] == float(best == sample["doc"]["answer"])
        correct += best == sample["doc"]["answer"]
    assert res["results"]["turboctx_mc"]["acc,none"] == pytest.approx(correct / len(MC_DOCS))

    gen = sorted(res["samples"]["turboctx_gen"], key=lambda s: s["doc_id"])
    assert len(gen) == len(GEN_DOCS)
    contexts = [sample["arguments"][0][0] for sample in gen]
    texts = [o.text for o in reference_llm.generate([lm.tok_encode(c) for c in contexts], SamplingParams(
        max_tokens=12, temperature=0, stop=["\n"]))]
    for sample, text in zip(gen, texts):
        (got,), = sample["resps"]
        assert got == text, sample["doc"]
        assert sample["exact_match"] == float(text.strip() == sample["doc"]["answer"].strip())
