"""The grammar mask against the slow exact reference (try every token), EOS and termination,
padded vocabularies, and the bitmask helpers against a bit-by-bit unpacking."""
from __future__ import annotations

import pytest
import torch
from structured_helpers import default_tokenizer, tiny_tokenizer

from turboctx.structured import (GrammarMatcher, StructuredOutputsParams, TokenizerInfo,
                                 TokenRejectedError, allocate_bitmask, apply_bitmask,
                                 compile_grammar, unpack_bitmask)
from turboctx.structured.matcher import _unpack_numpy, _unpack_torch
from turboctx.structured.reference import (choice_language, forced_bytes, reference_mask,
                                           regex_language, token_bytes)

W = r"[ \t\n\r]*"
INT = r"-?(0|[1-9][0-9]*)"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
          "required": ["a", "b"], "additionalProperties": False}
# SCHEMA's language written as a regex: flexible whitespace between tokens, none before `{`.
SCHEMA_REGEX = rf'\{{{W}"a"{W}:{W}{INT}{W},{W}"b"{W}:{W}(true|false){W}\}}'
SCHEMA_REGEX_COMPACT = rf'\{{"a":{INT},"b":(true|false)\}}'

CASES = {  # name -> (spec, reference language, texts whose every prefix is a state to compare)
    "regex": (StructuredOutputsParams(regex=r"(ab|abc)+[0-9]{1,3}"), regex_language(r"(ab|abc)+[0-9]{1,3}"),
              ["abcab12", "ab0"]),
    "choice": (StructuredOutputsParams(choice=["yes", "no", "yesterday"]),
               choice_language(["yes", "no", "yesterday"]), ["yes", "yesterday", "no"]),
    "json": (StructuredOutputsParams(json=SCHEMA), regex_language(SCHEMA_REGEX),
             ['{"a": 123, "b": true}', '{ "a" :-10,\n "b":false }']),
    "json_compact": (StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True),
                     regex_language(SCHEMA_REGEX_COMPACT), ['{"a":0,"b":false}']),
}


def _bit_by_bit(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    rows = words.reshape(-1, words.shape[-1]).tolist()
    out = [[i < 32 * len(r) and bool((r[i // 32] >> (i % 32)) & 1) for i in range(vocab_size)]
           for r in rows]
    return torch.tensor(out, dtype=torch.bool).reshape(*words.shape[:-1], vocab_size)


@pytest.mark.parametrize("vocab_size", [1, 31, 32, 33, 289, 320 + 17])
def test_unpack_bitmask_matches_bit_by_bit(vocab_size):
    g = torch.Generator().manual_seed(vocab_size)
    words = torch.randint(-2**31, 2**31 - 1, (3, 10), dtype=torch.int32, generator=g)  # 320 ids
    expect = _bit_by_bit(words, vocab_size)
    assert torch.equal(unpack_bitmask(words, vocab_size), expect)
    assert torch.equal(torch.from_numpy(_unpack_numpy(words, vocab_size, True)), expect)  # CPU path
    assert torch.equal(torch.from_numpy(_unpack_numpy(words, vocab_size, False)), ~expect)
    bits = _unpack_torch(words, True)                 # the device path, here on the CPU
    assert torch.equal(bits[..., :min(vocab_size, 320)], expect[..., :320])
    assert torch.equal(_unpack_torch(words, False), ~bits)
    if vocab_size > 320:                             # ids with no token are never allowed
        assert not unpack_bitmask(words, vocab_size)[..., 320:].any()


def test_apply_bitmask_batch_padded_and_dtypes():
    g = torch.Generator().manual_seed(0)
    words = allocate_bitmask(3, 300)                 # [3, 10], all allowed
    assert words.shape == (3, 10) and words.dtype == torch.int32
    words[1] = torch.randint(-2**31, 2**31 - 1, (10,), dtype=torch.int32, generator=g)
    logits = torch.randn(3, 336, generator=g)        # 36 padded rows past the 300-token vocabulary
    allowed = _bit_by_bit(words, 336)
    for dtype in (torch.float32, torch.bfloat16):
        out = apply_bitmask(logits.to(dtype), words)
        assert out.dtype == dtype and out.shape == logits.shape
        assert torch.equal(torch.isinf(out), ~allowed)
        assert torch.equal(out[allowed], logits.to(dtype)[allowed])
    assert torch.equal(apply_bitmask(logits, words)[0, :320], logits[0, :320])   # untouched row


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tok, TokenizerInfo(tok), token_bytes(tok)


def _check_state(tok, m, pieces, prefix: bytes, language, eos_ids) -> int:
    """The matcher's mask at `prefix` against the reference; returns the number of allowed ids."""
    forced = m.forced_tokens()
    if forced:   # forced text: its tokens are the tokenizer's own tokenization of it
        text = forced_bytes(prefix, language)
        canonical = tok.encode(text.decode("utf-8"))
        assert canonical[:len(forced)] == forced, (prefix, text, forced, canonical)
    expect = reference_mask(pieces, prefix, language, eos_ids, forced=forced)
    got = m.allowed_mask()
    diff = (got != expect).nonzero().flatten().tolist()
    assert not diff, (prefix, forced, [(i, pieces[i], bool(got[i])) for i in diff[:5]])
    assert got.any(), prefix
    assert m.can_end() == language.complete(prefix)
    return int(got.sum())


@pytest.mark.parametrize("case", list(CASES))
def test_mask_equals_exact_reference_on_tiny_vocab(tiny, case):
    tok, info, pieces = tiny
    spec, language, texts = CASES[case]
    compiled = compile_grammar(spec, info)
    for text in texts:
        m = GrammarMatcher(compiled)
        ids = tok.encode(text)
        for n in range(len(ids) + 1):
            prefix = b"".join(pieces[i] for i in ids[:n])
            _check_state(tok, m, pieces, prefix, language, info.eos_token_ids)
            if n < len(ids):
                m.accept(ids[n])
        assert m.can_end()


def test_forced_text_allows_only_the_tokenizers_own_first_token(tiny):
    """After `{"` the compact schema forces `a":`; the exact set also holds the byte `a`-then-`"`
    token `a"`, which the tokenizer never produces there (it splits letters from punctuation)."""
    tok, info, pieces = tiny
    spec, language, _ = CASES["json"]
    m = GrammarMatcher(compile_grammar(spec, info))
    m.accept(tok.token_to_id('{"'))
    exact = reference_mask(pieces, b'{"', language, info.eos_token_ids)
    assert {pieces[i] for i in exact.nonzero().flatten().tolist()} == {b"a", b'a"'}
    assert m.forced_tokens()[0] == tok.token_to_id("a")
    assert m.allowed_mask().nonzero().flatten().tolist() == [tok.token_to_id("a")]


@pytest.mark.parametrize("case,text,cuts", [
    ("json", '{"a": 123, "b": true}', [0, 1, 2, 6, 9]),
    ("json_compact", '{"a":0,"b":false}', [0, 3, 4]),
    ("regex", "abcab12", [1, 3]),
])
def test_mask_equals_exact_reference_on_default_vocab(case, text, cuts):
    tok = default_tokenizer()
    info = TokenizerInfo.for_tokenizer(tok)
    pieces = token_bytes(tok)
    spec, language, _ = CASES[case]
    ids = tok.encode(text)
    sizes = []
    for n in cuts:
        m = GrammarMatcher(compile_grammar(spec, info))
        for t in ids[:n]:
            m.accept(t)
        prefix = b"".join(pieces[i] for i in ids[:n])
        sizes.append(_check_state(tok, m, pieces, prefix, language, info.eos_token_ids))
    assert max(sizes) > 10            # some states leave the model a real choice


def test_eos_only_where_the_grammar_can_end(tiny):
    tok, info, _ = tiny
    eos = info.eos_token_ids[0]
    m = GrammarMatcher(compile_grammar(StructuredOutputsParams(regex="(ab)+"), info))
    assert not m.allowed_mask()[eos] and not m.can_end()
    m.accept(tok.encode("ab")[0])
    assert m.allowed_mask()[eos] and m.can_end() and not m.is_terminated()   # may go on: abab...
    m.accept(eos)
    assert m.is_terminated()
    assert m.allowed_mask().nonzero().flatten().tolist() == [eos]


def test_terminated_when_nothing_can_follow(tiny):
    tok, info, _ = tiny
    eos = info.eos_token_ids[0]
    m = GrammarMatcher(compile_grammar(StructuredOutputsParams(choice=["no", "yes"]), info))
    for t in tok.encode("yes"):
        assert not m.is_terminated()
        m.accept(t)
    assert m.is_terminated() and m.can_end()
    assert m.allowed_mask().nonzero().flatten().tolist() == [eos]   # only EOS may come
    m.accept(eos)                                                   # and is harmless
    assert m.is_terminated()


def test_padded_logits_rows_are_disallowed(tiny):
    tok, info, _ = tiny
    m = GrammarMatcher(compile_grammar(StructuredOutputsParams(json_object=True), info))
    logits = torch.zeros(info.vocab_size + 47)                     # the model pads its embedding
    out = m.apply(logits)
    assert out.shape == logits.shape
    assert torch.isinf(out[info.vocab_size:]).all()
    allowed = m.allowed_mask(info.vocab_size + 47)
    assert not allowed[info.vocab_size:].any()
    assert torch.equal(~torch.isinf(out), allowed)
    assert allowed[tok.encode("{")[0]] and not allowed[tok.encode("a")[0]]
    with pytest.raises(TokenRejectedError, match="outside the tokenizer's vocabulary"):
        m.accept(info.vocab_size + 3)


def test_accept_rejects_disallowed_token_and_names_it(tiny):
    tok, info, _ = tiny
    m = GrammarMatcher(compile_grammar(StructuredOutputsParams(regex="[0-9]+"), info))
    with pytest.raises(TokenRejectedError, match=r"token \d+ \('a'\) is not allowed"):
        m.accept(tok.encode("a")[0])


def test_special_tokens_never_allowed(tiny):
    tok, info, pieces = tiny
    pad = tok.token_to_id("<pad>")
    m = GrammarMatcher(compile_grammar(StructuredOutputsParams(json_object=True), info))
    m.accept(tok.encode('{"')[0])                                   # inside a string: any text
    allowed = m.allowed_mask()
    assert not allowed[pad] and info.is_special(pad)
    assert allowed[tok.encode("ab")[0]]


def test_batched_fill_matches_single(tiny):
    tok, info, _ = tiny
    a = GrammarMatcher(compile_grammar(StructuredOutputsParams(regex="[0-9]+"), info))
    b = GrammarMatcher(compile_grammar(StructuredOutputsParams(choice=["yes"]), info))
    masks = allocate_bitmask(3, info.vocab_size)                    # row 1 stays unconstrained
    a.fill_bitmask(masks[0])
    b.fill_bitmask(masks[2])
    allowed = unpack_bitmask(masks, info.vocab_size)
    assert torch.equal(allowed[0], a.allowed_mask()) and torch.equal(allowed[2], b.allowed_mask())
    assert allowed[1].all()
    with pytest.raises(ValueError, match="contiguous CPU int32"):
        a.fill_bitmask(torch.zeros(masks.shape[1], dtype=torch.int64))


@pytest.mark.gpu
def test_apply_bitmask_on_gpu_matches_cpu():
    g = torch.Generator().manual_seed(1)
    words = torch.randint(-2**31, 2**31 - 1, (4, 1536), dtype=torch.int32, generator=g)  # [4, W]
    logits = torch.randn(4, 49152 + 64, generator=g)                                     # padded
    expect = apply_bitmask(logits, words)
    for dtype in (torch.float32, torch.bfloat16):
        got = apply_bitmask(logits.to("cuda", dtype), words)           # the bitmask moves over
        assert got.device.type == "cuda" and got.dtype == dtype
        assert torch.equal(torch.isinf(got).cpu(), torch.isinf(expect))
    assert torch.equal(unpack_bitmask(words.cuda(), 49216).cpu(), unpack_bitmask(words, 49216))
