"""The grammar library behind structured output (llguidance), behind two names: `TokenizerInfo`
(the vocabulary as the library sees it, built once per tokenizer) and `compile_grammar` (a spec ->
a checked, cached `CompiledGrammar`). Nothing else in turboctx imports llguidance.

Why llguidance: a 3 MB wheel with no dependencies, exact masks, Lark grammars with JSON schemas
inside them (`%json`), which forced tool calls need; measured against xgrammar in
docs/STRUCTURED_OUTPUT.md (tools/bench_grammar.py).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable

from turboctx.errors import InvalidRequestError
from turboctx.structured.params import StructuredOutputsParams

if TYPE_CHECKING:
    from turboctx.tokenizer import Tokenizer

CACHE_SIZE = 256          # compiled grammars kept per tokenizer (least recently used dropped)


class TokenizerInfo:
    """A tokenizer's vocabulary and end-of-sequence ids, ready for grammar compilation.

    `vocab_size` is the tokenizer's (ids [0, vocab_size) have bytes or are special); a model whose
    logits are wider (padded embedding rows) gets those extra rows masked out. `eos_token_ids` are
    the ids that end the output: allowed only where the grammar may end.
    Building one walks the whole vocabulary (~0.5 s for 49K tokens): use `for_tokenizer`.
    """

    def __init__(self, tokenizer: "Tokenizer", eos_token_ids: Iterable[int] | None = None):
        import llguidance

        eos = list(dict.fromkeys(int(i) for i in (
            tokenizer.eos_token_ids if eos_token_ids is None else eos_token_ids)))
        if not eos:
            raise InvalidRequestError(
                "structured output needs at least one end-of-sequence token id; this tokenizer "
                "names none (pass eos_token_ids)")
        self.vocab_size: int = tokenizer.vocab_size
        bad = [i for i in eos if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"eos token id {bad[0]} is outside the tokenizer's vocabulary [0, {self.vocab_size})")
        self.eos_token_ids: tuple[int, ...] = tuple(eos)
        self.tokenizer = tokenizer
        self._ll = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                                          eos_token=list(eos))
        self._cache: OrderedDict[tuple, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def for_tokenizer(tokenizer: "Tokenizer", eos_token_ids: Iterable[int] | None = None
                      ) -> "TokenizerInfo":
        """The shared TokenizerInfo of this tokenizer object (built on first use)."""
        eos = None if eos_token_ids is None else tuple(int(i) for i in eos_token_ids)
        return _shared_info(tokenizer, eos)

    def is_special(self, token_id: int) -> bool:
        """Special tokens (`<|im_start|>` ...) have no text: a grammar never allows them, except
        the EOS ids where the grammar may end."""
        return self._ll.is_special_token(int(token_id))

    def cache_size(self) -> int:
        return len(self._cache)


@lru_cache(maxsize=8)
def _shared_info(tokenizer: "Tokenizer", eos: tuple[int, ...] | None) -> TokenizerInfo:
    return TokenizerInfo(tokenizer, eos)


@dataclass(frozen=True, eq=False)
class CompiledGrammar:
    """A checked grammar for one tokenizer. `GrammarMatcher(compiled)` starts a fresh per-request
    state in about a microsecond (a copy of a pristine matcher whose lexer is already built)."""

    spec: StructuredOutputsParams
    tokenizer_info: TokenizerInfo
    grammar: str            # llguidance's serialized grammar (JSON text)
    _pristine: object       # llguidance.LLMatcher that never consumes a token


def compile_grammar(spec: StructuredOutputsParams, tokenizer_info: TokenizerInfo) -> CompiledGrammar:
    """Spec -> CompiledGrammar, reusing an earlier compile of an equal spec for this tokenizer.
    Raises InvalidRequestError naming what is wrong (bad schema keyword, regex syntax, ...)."""
    if not isinstance(spec, StructuredOutputsParams):
        raise InvalidRequestError(
            f"compile_grammar takes a StructuredOutputsParams, got {type(spec).__name__}")
    key = spec.cache_key()
    with tokenizer_info._lock:
        hit = tokenizer_info._cache.get(key)
        if hit is not None:
            tokenizer_info._cache.move_to_end(key)
            return hit
    compiled = _compile(spec, tokenizer_info)
    with tokenizer_info._lock:
        tokenizer_info._cache[key] = compiled
        while len(tokenizer_info._cache) > CACHE_SIZE:
            tokenizer_info._cache.popitem(last=False)
    return compiled


def _compile(spec: StructuredOutputsParams, info: TokenizerInfo) -> CompiledGrammar:
    import llguidance

    kind = spec.kind
    what = {"json": "json schema", "json_object": "json_object", "regex": "regex",
            "choice": "choice", "grammar": "grammar"}[kind]
    try:
        grammar = _grammar_text(spec)
    except ValueError as e:
        raise InvalidRequestError(f"{what} cannot be used: {_first_line(str(e))}") from None
    limits = llguidance.LLParserLimits(verbose_errors=False)
    error = llguidance.LLMatcher.validate_grammar(grammar, info._ll, limits=limits)
    if error:
        raise InvalidRequestError(f"{what} cannot be used: {_first_line(error)}")
    pristine = llguidance.LLMatcher(info._ll, grammar, log_level=0, limits=limits)
    if pristine.is_error():
        raise InvalidRequestError(f"{what} cannot be used: {_first_line(pristine.get_error())}")
    return CompiledGrammar(spec, info, grammar, pristine)


def _grammar_text(spec: StructuredOutputsParams) -> str:
    """The llguidance grammar for a spec (unchecked)."""
    import json

    import llguidance

    options = None
    if spec.disable_any_whitespace:
        options = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    elif spec.whitespace_pattern is not None:
        options = {"whitespace_pattern": spec.whitespace_pattern}
    kind = spec.kind
    if kind == "json":
        return llguidance.LLMatcher.grammar_from_json_schema(spec.json, overrides=options)
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=options)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.regex)
    if kind == "choice":
        return llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice))
    return llguidance.grammar_from("grammar", spec.grammar)   # Lark, or GBNF converted to Lark


def _first_line(message: str) -> str:
    """llguidance errors carry a parser dump after the first line; keep the line that says what."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    head = lines[0]
    # Lark and regex errors point at the offending text on the next lines: keep them.
    if (head.startswith("at ") or head.endswith(":")) and len(lines) > 1:
        return "; ".join(ln.strip() for ln in lines[:4])
    return head
