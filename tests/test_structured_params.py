"""StructuredOutputsParams validation, response_format mapping, compile errors and the cache."""
from __future__ import annotations

import json

import pytest
from structured_helpers import tiny_tokenizer

from turboctx.errors import InvalidRequestError
from turboctx.structured import (GrammarMatcher, StructuredOutputsParams, TokenizerInfo,
                                 compile_grammar, from_response_format)
from turboctx.structured import backend


@pytest.fixture(scope="module")
def info():
    return TokenizerInfo(tiny_tokenizer())


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of json, json_object, regex, choice, grammar; none was given"),
    ({"json_object": False}, "none was given"),
    ({"regex": "a", "choice": ["a"]}, r"2 were \(regex, choice\) given"),
    ({"json": "{not json"}, "json schema is not valid JSON: Expecting property name"),
    ({"json": "[1, 2]"}, "json schema must be a JSON object .*got list"),
    ({"json": 3}, "json schema must be a JSON object .*got int"),
    ({"choice": []}, "choice=\\[\\] must be a non-empty list of strings"),
    ({"choice": ["a", 2]}, "choice entries must be non-empty strings; got 2"),
    ({"choice": "ab"}, "must be a non-empty list of strings"),
    ({"regex": ""}, "regex='' must be a non-empty string"),
    ({"grammar": "  "}, "must be a non-empty Lark or GBNF grammar"),
    ({"json_object": "yes"}, "json_object='yes' must be True"),
    ({"json_object": True, "disable_any_whitespace": 1}, "disable_any_whitespace=1 must be a bool"),
])
def test_spec_validation_names_the_problem(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        StructuredOutputsParams(**kwargs)


def test_spec_kind_and_json_text_parsed():
    spec = StructuredOutputsParams(json='{"type": "integer"}')
    assert spec.kind == "json" and spec.json == {"type": "integer"}
    assert StructuredOutputsParams(choice=["a", "b"]).choice == ("a", "b")
    assert StructuredOutputsParams(json_object=True).kind == "json_object"
    a, b = StructuredOutputsParams(json={"type": "object"}), StructuredOutputsParams(json='{"type": "object"}')
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1      # usable as a dict key


def test_from_response_format():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    assert from_response_format(None) is None
    assert from_response_format({"type": "text"}) is None
    assert from_response_format({"type": "json_object"}) == StructuredOutputsParams(json_object=True)
    spec = from_response_format({"type": "json_schema",
                                 "json_schema": {"name": "x", "schema": schema, "strict": True}})
    assert spec.json == schema
    with pytest.raises(InvalidRequestError, match="the `schema` is missing"):
        from_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(InvalidRequestError, match="'yaml' is not supported; supported: text, "
                                                  "json_object, json_schema"):
        from_response_format({"type": "yaml"})
    with pytest.raises(InvalidRequestError, match="must be an object"):
        from_response_format("json")


@pytest.mark.parametrize("spec,message", [
    (StructuredOutputsParams(json={"type": "objekt"}), "json schema cannot be used: Invalid type: objekt"),
    (StructuredOutputsParams(json={"$ref": "#/$defs/Missing"}),
     "json schema cannot be used: .*/\\$defs/Missing.* does not exist"),
    (StructuredOutputsParams(json={"type": "integer", "minimum": "zero"}),
     "json schema cannot be used: Expected f64 for 'minimum'"),
    (StructuredOutputsParams(json={"type": "string", "format": "weird"}),
     "json schema cannot be used: Unknown format: weird"),
    (StructuredOutputsParams(regex="a(b"), "regex cannot be used: .*unclosed group"),
    (StructuredOutputsParams(grammar="start: foo"), 'grammar cannot be used: .*unknown name: "foo"'),
    (StructuredOutputsParams(grammar="root ::= undefined_rule"),
     "grammar cannot be used: .*Rule 'undefined_rule' not found"),
    (StructuredOutputsParams(grammar='start: "a" ('), "grammar cannot be used: .*Expected token '\\)'"),
])
def test_bad_specs_fail_to_compile_with_a_clear_error(info, spec, message):
    with pytest.raises(InvalidRequestError, match=message):
        compile_grammar(spec, info)


def test_grammar_forms_lark_and_gbnf(info):
    tok = tiny_tokenizer()
    for grammar in ['start: "ab" | "no"', 'root ::= "ab" | "no"']:
        m = GrammarMatcher(compile_grammar(StructuredOutputsParams(grammar=grammar), info))
        for t in tok.encode("ab"):
            m.accept(t)
        assert m.is_terminated()


def test_cache_reuses_equal_specs_and_keeps_key_order(info):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    first = compile_grammar(StructuredOutputsParams(json=schema), info)
    assert compile_grammar(StructuredOutputsParams(json=json.dumps(schema)), info) is first
    reordered = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    assert compile_grammar(StructuredOutputsParams(json=reordered), info) is not first
    compact = compile_grammar(StructuredOutputsParams(json=schema, disable_any_whitespace=True), info)
    assert compact is not first
    # two matchers of one compiled grammar do not share state
    tok = tiny_tokenizer()
    m1, m2 = GrammarMatcher(first), GrammarMatcher(first)
    m1.accept(tok.encode("{")[0])
    assert m2.allowed_mask()[tok.encode("{")[0]] and not m1.allowed_mask()[tok.encode("{")[0]]


def test_cache_drops_least_recently_used(monkeypatch):
    monkeypatch.setattr(backend, "CACHE_SIZE", 2)
    info = TokenizerInfo(tiny_tokenizer())
    a = compile_grammar(StructuredOutputsParams(regex="a+"), info)
    compile_grammar(StructuredOutputsParams(regex="b+"), info)
    assert compile_grammar(StructuredOutputsParams(regex="a+"), info) is a     # a is now recent
    compile_grammar(StructuredOutputsParams(regex="c+"), info)                 # evicts b+
    assert info.cache_size() == 2
    assert compile_grammar(StructuredOutputsParams(regex="a+"), info) is a


def test_tokenizer_info_eos_checks():
    tok = tiny_tokenizer()
    with pytest.raises(InvalidRequestError, match="eos token id 999 is outside"):
        TokenizerInfo(tok, eos_token_ids=[999])
    with pytest.raises(InvalidRequestError, match="needs at least one end-of-sequence"):
        TokenizerInfo(tok, eos_token_ids=[])
    assert TokenizerInfo.for_tokenizer(tok) is TokenizerInfo.for_tokenizer(tok)
    assert TokenizerInfo(tok, eos_token_ids=[5, 5, 7]).eos_token_ids == (5, 7)
