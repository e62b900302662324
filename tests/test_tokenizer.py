"""Our tokenizer against HF transformers' (tokenization, decoding, chat templates)."""
from __future__ import annotations

import json

import pytest

from turboctx.errors import UnsupportedModelError
from turboctx.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. I'm sure you're right; they'll see.",
    "def f(x):\n    return x**2  # square\n\n\nclass A:\n\tpass\n",
    "12345 678.9 1e-7 3,000,000 x1 a 1 2024-11-28",
    "  leading   spaces\t\ttabs\n\n  trailing   ",
    "naïve café — 東京 😀 Привет мир عربى",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>trailing text",
    "",
    " ",
    "\n\n\n",
    "a\r\nb\rc",
    "\u00a0nbsp\u2003em\u200bzero-width",
    "ALL CAPS WE'VE DONE IT!!! ... ???",
    "{\"json\": [1, 2, {\"k\": null}]}",
]
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": "unicode: 東京 😀\n  indented"}],
]


@pytest.fixture(scope="module")
def ours(default_gguf_path):
    return Tokenizer.from_gguf(default_gguf_path)


@pytest.fixture(scope="module")
def ref(default_gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_gguf_path.parent, gguf_file=default_gguf_path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(ours, ref, text):
    ids = ours.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert ours.encode(text, add_special_tokens=True) == ref.encode(text, add_special_tokens=True)
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)


def test_digits_follow_llama_cpp_smollm_pre_tokenizer(ours):
    """SmolLM2 splits digits before the byte-level regex (its tokenizer.json, llama.cpp's "smollm").
    transformers' GGUF conversion omits that split, which differs only on whitespace runs before
    digits: "word  2023" -> "word", "  ", "2", "0", "2", "3" (not "word", " ", " ", ...)."""
    assert ours.encode("word  2023") == [3002, 256, 34, 32, 34, 35]
    assert [ours.id_to_token(i) for i in ours.encode("x 42")] == ["x", "Ġ", "4", "2"]


def test_special_tokens_and_properties(ours, ref):
    assert ours.encode("<|im_start|>") == [1]
    assert ours.decode([1, 2, 0]) == ""
    assert ours.eos_token_ids == [2] and ours.bos_token_id == 1
    assert ours.vocab_size == len(ref) == 49152
    assert ours.id_to_token(1) == "<|im_start|>" and ours.chat_template == ref.chat_template


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(ours, ref, messages, add_generation_prompt):
    expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def _write_tokenizer_gguf(src_path, dst_path, pre: str, model: str = "gpt2", add_bos: bool = False):
    """A GGUF with the default model's vocabulary but another pre-tokenizer name."""
    import gguf

    from turboctx.weights.gguf_reader import GGUFFile

    src = GGUFFile(src_path)
    w = gguf.GGUFWriter(str(dst_path), "llama")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(src.get("tokenizer.ggml.tokens"))
    w.add_token_types(src.get("tokenizer.ggml.token_type"))
    w.add_token_merges(src.get("tokenizer.ggml.merges"))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("pre,add_bos", [("llama-bpe", True), ("qwen2", False)])
def test_other_pre_tokenizers_match_transformers(tmp_path, default_gguf_path, pre, add_bos):
    from transformers import AutoTokenizer

    path = tmp_path / "tok.gguf"
    _write_tokenizer_gguf(default_gguf_path, path, pre, add_bos=add_bos)
    mine = Tokenizer.from_gguf(path)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        assert mine.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert mine.encode(text, add_special_tokens=True) == theirs.encode(text), text
    assert mine.encode("hi", add_special_tokens=True) == ([1] if add_bos else []) + mine.encode("hi")


def test_sentencepiece_gguf_unsupported(tmp_path, default_gguf_path):
    path = tmp_path / "spm.gguf"
    _write_tokenizer_gguf(default_gguf_path, path, "default", model="llama")
    with pytest.raises(UnsupportedModelError, match="'llama'.*'gpt2'"):
        Tokenizer.from_gguf(path)


def test_unknown_pre_tokenizer(tmp_path, default_gguf_path):
    path = tmp_path / "pre.gguf"
    _write_tokenizer_gguf(default_gguf_path, path, "no-such-pre")
    with pytest.raises(UnsupportedModelError, match="'no-such-pre'.*smollm"):
        Tokenizer.from_gguf(path)


def test_hf_folder_matches_transformers(tmp_path, ours):
    """A HF folder (tokenizer.json + tokenizer_config.json) renders and encodes as transformers does."""
    from transformers import AutoTokenizer

    ours.backend.save(str(tmp_path / "tokenizer.json"))
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
                "{{ raise_exception('bad role') }}{% endif %}{% if loop.index > 5 %}{% break %}{% endif %}"
                "{{ m['role'] | upper }}: {{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": template,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    mine = Tokenizer.from_hf_folder(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert mine.encode(text) == theirs.encode(text, add_special_tokens=False) == ours.encode(text)
    msgs = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]
    assert mine.apply_chat_template(msgs) == theirs.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True)
    assert mine.eos_token_ids == [2, 0] and mine.bos_token_id == 1
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role"):
        mine.apply_chat_template([{"role": "tool", "content": "x"}])


def test_strftime_now_and_jinja_file(tmp_path, ours):
    ours.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "chat_template.jinja").write_text("{{ strftime_now('%Y') }}|{{ messages | length }}")
    tok = Tokenizer.from_hf_folder(tmp_path)
    out = tok.apply_chat_template([{"role": "user", "content": "x"}])
    year, count = out.split("|")
    assert len(year) == 4 and year.isdigit() and count == "1"
