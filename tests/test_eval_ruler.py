"""RULER faithfulness: templates word for word, lengths within 2%, scorers' numbers."""
import re

import pytest

from turboctx.eval import ruler
from turboctx.eval.ruler.scoring import postprocess_pred, string_match_all, string_match_part
from eval_doubles import OracleTarget, WordTokenizer

# Copied by hand from NVIDIA/RULER scripts/data/synthetic/constants.py (template + answer_prefix),
# independent of turboctx.eval.ruler.constants.
RULER = {
    "niah": "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text? The special magic {type_needle_v} for {query} mentioned in the provided text are",
    "vt": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above. Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: ",
    "cwe": "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:",
    "qa": "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query} Answer:",
    "fwe": "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text? Answer: According to the coded text above, the three most frequently appeared words are:",
}
SINGLE = {"niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
          "niah_multikey_2", "niah_multikey_3"}
KIND = {"niah_single_3": "uuids", "niah_multikey_3": "uuids"}


def _pattern(template: str, **fixed) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:m.start()])
        name = m.group(1)
        out += re.escape(fixed[name]) if name in fixed else f"(?P<{name}_{m.start()}>.+?)"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z", re.S)


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer()


def _gen(task, tok, length=4096, n=2, seed=42):
    return ruler.generate(task, length, n, seed, lambda t: len(tok.encode(t)), lambda b, p: b + p)


@pytest.mark.parametrize("task", [t for t in ruler.DEFAULT_TASKS])
def test_template_word_for_word_and_length(task, tok):
    samples = _gen(task, tok)
    for s in samples:
        total = s.prompt_tokens + s.max_tokens
        assert 0.98 * 4096 <= total <= 4096, (task, total)
        assert len(tok.encode(s.prompt)) == s.prompt_tokens
        if task.startswith("niah"):
            tmpl, kind = RULER["niah"], KIND.get(task, "numbers")
            if task in SINGLE:
                for a, b in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
                    tmpl = tmpl.replace(a, b)
                kind = kind[:-1]
            assert _pattern(tmpl, type_needle_v=kind).match(s.prompt), task
            needle_kind = KIND.get(task, "numbers")
            for v in s.expected:
                assert f"One of the special magic {needle_kind} for " in s.prompt
                assert f" is: {v}." in s.prompt
        elif task == "vt":
            # RULER puts the solved in-context example first, then the task.
            first = s.prompt.index("Memorize and track")
            second = s.prompt.index("Memorize and track", first + 1)
            icl, body = s.prompt[:second], s.prompt[second:]
            assert icl.endswith("\n\n")
            assert _pattern(RULER["vt"], num_v="5").match(icl.rstrip("\n").rsplit(" ", 5)[0])
            assert _pattern(RULER["vt"], num_v="5").match(body)
            assert all(re.fullmatch(r"[A-Z]{5}", v) for v in s.expected)
        elif task == "cwe":
            parts = s.prompt.split("\nBelow is a numbered list")
            assert len(parts) == 2  # one solved example, then the task
            assert _pattern(RULER["cwe"]).match("Below is a numbered list" + parts[1])
            assert len(s.expected) == 10
        elif task == "fwe":
            assert _pattern(RULER["fwe"]).match(s.prompt)
            assert len(s.expected) == 3


def test_seed_is_deterministic(tok):
    a, b, c = _gen("niah_single_2", tok, seed=7), _gen("niah_single_2", tok, seed=7), _gen("niah_single_2", tok, seed=8)
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert a[0].prompt != c[0].prompt
    assert a[0].prompt != a[1].prompt


def test_exact_prompt_for_fixed_seed(tok):
    s = _gen("niah_single_1", tok, length=4096, n=1, seed=42)[0]
    key = re.search(r"for (\S+) mentioned", s.prompt).group(1)
    assert s.prompt.startswith(
        "A special magic number is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the number afterwards.\nThe grass is green. The sky is blue. "
        "The sun is yellow. Here we go. There and back again.\n")
    assert s.prompt.endswith(
        f"There and back again.\nWhat is the special magic number for {key} mentioned in the "
        f"provided text? The special magic number for {key} mentioned in the provided text is")
    assert f"One of the special magic numbers for {key} is: {s.expected[0]}.\n" in s.prompt
    assert re.fullmatch(r"\d{7}", s.expected[0])


@pytest.mark.parametrize("length", [8192, 16384])
def test_lengths_within_two_percent_longer(length, tok):
    for task in ("niah_single_2", "niah_multikey_2", "vt", "cwe", "fwe"):
        s = _gen(task, tok, length=length, n=1)[0]
        assert 0.98 * length <= s.prompt_tokens + s.max_tokens <= length, task


def _cwe_words(prompt: str) -> tuple[list[str], list[str]]:
    """(words of the solved example, words of the task) of a cwe prompt."""
    shot, task = prompt.split("\nBelow is a numbered list")
    listed = lambda text: re.findall(r"\d+\. ([a-z]+)", text.split("Question:")[0])  # noqa: E731
    return listed(shot), listed(task)


def test_cwe_builds_at_1m_from_one_word_list():
    """Every length draws from data/cwe_words.txt.gz alone (RULER's wonderwords list runs out
    near 199K tokens and RULER then switches to another list)."""
    from collections import Counter

    count = lambda t: len(t) // 3   # noqa: E731 - ~5.7 tokens per numbered word, a compact BPE's rate
    built = {L: ruler.generate("cwe", L, 1, 42, count, lambda b, p: b + p)[0]
             for L in (4096, 1 << 20)}
    from turboctx.eval.ruler import common_words
    words = set(common_words.word_list())
    assert len(words) > 100_000 and all(w.isalpha() and w.islower() for w in words)
    for length, s in built.items():
        assert 0.98 * length <= s.prompt_tokens + s.max_tokens <= length, length
        assert s.prompt_tokens == count(s.prompt)
        shot, listed = _cwe_words(s.prompt)
        assert set(shot) <= words and set(listed) <= words
        counts = Counter(listed)
        assert [counts[w] for w in s.expected] == [30] * 10 and set(counts.values()) == {30, 3}
    assert len(counts) > 30_000            # the 1M prompt: far past the 8,166 words RULER has


def test_cwe_refuses_a_length_its_list_cannot_fill():
    with pytest.raises(ValueError, match=r"needs more than the (\d+) words of its word list") as e:
        ruler.generate("cwe", 65536, 1, 42, lambda t: len(t) // 400, lambda b, p: b + p)
    from turboctx.eval.ruler import common_words
    assert f"the {common_words.max_words()} words" in str(e.value)


def test_oracle_scores_100(tok):
    target = OracleTarget(tok)
    from turboctx.eval.ruler.scoring import score_sample
    for task in ruler.DEFAULT_TASKS:
        for s in _gen(task, tok, n=2):
            ans = target.generate([s.prompt], s.max_tokens)[0]
            assert score_sample(ans, s.expected, s.metric) == 1.0, (task, ans, s.expected)


def test_qa_not_run_without_file(tok):
    with pytest.raises(ruler.NotRun):
        _gen("qa_1", tok)


def test_qa_from_local_file(tmp_path, tok):
    import json
    paras = [{"context": f"Paragraph {i} says the capital of land {i} is city {i}.",
              "qas": [{"question": f"What is the capital of land {i}?", "is_impossible": False,
                       "answers": [{"text": f"city {i}"}]}]} for i in range(200)]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": paras[:100]}, {"paragraphs": paras[100:]}]}))
    samples = ruler.generate("qa_1", 4096, 3, 42, lambda t: len(tok.encode(t)), lambda b, p: b + p,
                             qa_files={"squad": str(path)})
    for s in samples:
        assert s.metric == "part"
        assert s.prompt.startswith("Answer the question based on the given documents. Only give me "
                                   "the answer and do not output any other words.\n\nThe following "
                                   "are given documents.\n\nDocument 1:\n")
        assert s.prompt.endswith(f"Question: {s.prompt.split('Question: ')[-1].split(' Answer:')[0]} Answer:")
        assert s.expected[0] in s.prompt
        assert 0.98 * 4096 <= s.prompt_tokens + 32 <= 4096
        m = _pattern(RULER["qa"]).match(s.prompt)
        assert m, "qa prompt is not RULER's template"
        docs = [v for k, v in m.groupdict().items() if k.startswith("context")][0]
        assert re.match(r"Document 1:\n.+\n\nDocument 2:\n", docs, re.S)


# RULER's own scorer formulas (scripts/eval/synthetic/constants.py), for reference numbers.
def _ruler_all(preds, refs):
    return round(sum([sum([1.0 if r.lower() in pred.lower() else 0.0 for r in ref]) / len(ref)
                      for pred, ref in zip(preds, refs)]) / len(preds) * 100, 2)


def _ruler_part(preds, refs):
    return round(sum([max([1.0 if r.lower() in pred.lower() else 0.0 for r in ref])
                      for pred, ref in zip(preds, refs)]) / len(preds) * 100, 2)


PAIRS = [
    (["The numbers are 1234567 and 7654321."], [["1234567", "7654321"]], 100.0, 100.0),
    (["It is 1234567."], [["1234567", "7654321"]], 50.0, 100.0),
    (["nothing"], [["1234567"]], 0.0, 0.0),
    (["APPLE banana", "cherry", "x"], [["apple", "banana"], ["cherry", "date", "fig"], ["y"]], 44.44, 66.67),
    (["VAR ABCDE VAR FGHIJ", "abcde"], [["ABCDE", "FGHIJ", "KLMNO"], ["ABCDE"]], 83.33, 100.0),
]


@pytest.mark.parametrize("preds,refs,want_all,want_part", PAIRS)
def test_scorers_match_ruler(preds, refs, want_all, want_part):
    assert string_match_all(preds, refs) == want_all == _ruler_all(preds, refs)
    assert string_match_part(preds, refs) == want_part == _ruler_part(preds, refs)


def test_postprocess_pred():
    assert postprocess_pred("  7654321\x00x\n ") == "7654321\nx"


# NVIDIA/RULER scripts/data/template.py, copied by hand.
RULER_MODEL_TEMPLATES = {
    "base": "{task_template}",
    "meta-chat": "[INST] {task_template} [/INST]",
    "vicuna-chat": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: {task_template} ASSISTANT:",
    "lwm-chat": "You are a helpful assistant. USER: {task_template} ASSISTANT: ",
    "Phi3": "<|user|>\n{task_template}<|end|>\n<|assistant|>\n",
}


def test_model_templates_word_for_word():
    from turboctx.eval.ruler.constants import MODEL_TEMPLATES
    for name, tmpl in RULER_MODEL_TEMPLATES.items():
        assert MODEL_TEMPLATES[name] == tmpl, name
