"""Structured output on the default model's tokenizer (49,152 tokens), without the engine: a
valid answer walks through the matcher token by token, and a greedy loop over random logits
(wider than the vocabulary, as padded embeddings are) through the mask always ends in output
that the schema's own validator (pydantic) accepts.

Random logits pick uniformly among the allowed tokens, so inside a string or a run of whitespace
they almost never choose the token that ends it: the random-walk schema bounds its strings and
lists, and limits whitespace (`whitespace_pattern`) or turns it off."""
from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from structured_helpers import default_tokenizer

from turboctx.structured import (GrammarMatcher, StructuredOutputsParams, TokenizerInfo,
                                 compile_grammar, tool_call_spec, tool_parser)

PADDED_ROWS = 64                 # logits wider than the tokenizer's vocabulary
MAX_STEPS = 1500


class Priority(str, Enum):
    low = "low"
    normal = "normal"
    urgent = "urgent"


class Item(BaseModel):
    name: str
    quantity: int


class Order(BaseModel):
    customer: str
    priority: Priority
    items: list[Item]
    tags: list[str]
    paid: bool


class ShortItem(BaseModel):
    model_config = ConfigDict(extra="forbid")     # no other keys: they would be unbounded strings
    name: str = Field(max_length=8)
    quantity: int = Field(ge=0, le=999)


class ShortOrder(BaseModel):
    """Order with bounded strings and lists and no extra keys, so that a random walk ends."""
    model_config = ConfigDict(extra="forbid")
    customer: str = Field(max_length=10)
    priority: Priority
    items: list[ShortItem] = Field(min_length=1, max_length=3)
    tags: list[Annotated[str, Field(max_length=6)]] = Field(max_length=2)
    paid: bool


class WeatherArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)
    unit: Priority


@pytest.fixture(scope="module")
def smol():
    tok = default_tokenizer()
    return tok, TokenizerInfo.for_tokenizer(tok)


def _greedy(tok, info, spec, seed: int) -> tuple[str, list[int], bool]:
    """Argmax of random logits through the mask until the grammar ends -> (text, ids, ended)."""
    m = GrammarMatcher(compile_grammar(spec, info))
    g = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(MAX_STEPS):
        logits = torch.randn(info.vocab_size + PADDED_ROWS, generator=g)     # [V + pad]
        token = int(m.apply(logits).argmax())
        assert token < info.vocab_size
        m.accept(token)
        if token in info.eos_token_ids:
            return tok.decode(ids), ids, True
        ids.append(token)
        if m.is_terminated():
            return tok.decode(ids), ids, True
    return tok.decode(ids), ids, False


def test_valid_answer_walks_through_and_terminates(smol):
    tok, info = smol
    answer = Order(customer="Ada", priority=Priority.urgent, tags=["x", "y z"], paid=True,
                   items=[Item(name="punch cards", quantity=250), Item(name="gears", quantity=48)])
    text = json.dumps(json.loads(answer.model_dump_json()))
    m = GrammarMatcher(compile_grammar(StructuredOutputsParams(json=Order.model_json_schema()), info))
    ids = tok.encode(text)
    for t in ids:
        assert not m.is_terminated()
        assert m.allowed_mask()[t], (t, tok.decode([t]))
        m.accept(t)
    assert m.is_terminated() and m.can_end()
    assert m.allowed_mask().nonzero().flatten().tolist() == list(info.eos_token_ids[:1])
    pretty = json.dumps(json.loads(text), indent=2)                   # free whitespace too
    m = GrammarMatcher(compile_grammar(StructuredOutputsParams(json=Order.model_json_schema()), info))
    for t in tok.encode(pretty):
        m.accept(t)
    assert m.is_terminated()


@pytest.mark.parametrize("whitespace", [{"disable_any_whitespace": True},
                                        {"whitespace_pattern": r"[ \n]{0,2}"}])
@pytest.mark.parametrize("seed", range(3))
def test_greedy_random_logits_give_valid_json_for_the_schema(smol, seed, whitespace):
    tok, info = smol
    spec = StructuredOutputsParams(json=ShortOrder.model_json_schema(), **whitespace)
    text, ids, ended = _greedy(tok, info, spec, seed)
    assert ended, f"no end after {MAX_STEPS} tokens: {text[:200]!r}"
    order = ShortOrder.model_validate_json(text)     # raises if the JSON or the schema is off
    assert 1 <= len(order.items) <= 3
    if "disable_any_whitespace" in whitespace:
        assert text.startswith('{"customer":"')


def test_greedy_random_logits_choice(smol):
    tok, info = smol
    for seed in range(3):
        text, _, ended = _greedy(tok, info, StructuredOutputsParams(choice=["Paris", "Oslo", "Rome"]), seed)
        assert ended and text in ("Paris", "Oslo", "Rome")


@pytest.mark.parametrize("seed", range(2))
def test_greedy_random_logits_forced_tool_call_parses(smol, seed):
    tok, info = smol
    weather = {"type": "function", "function": {"name": "get_weather",
                                                "parameters": WeatherArgs.model_json_schema()}}
    clock = {"type": "function", "function": {"name": "time_now"}}
    spec = tool_call_spec([weather, clock], {"type": "function", "function": {"name": "get_weather"}})
    text, _, ended = _greedy(tok, info, spec, seed)
    assert ended
    parsed = tool_parser("hermes").parse(text)
    assert parsed.content is None and len(parsed.tool_calls) == 1
    call = parsed.tool_calls[0]["function"]
    assert call["name"] == "get_weather"
    WeatherArgs.model_validate_json(call["arguments"])
