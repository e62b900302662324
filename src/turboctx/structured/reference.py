"""The slow exact reference for the next-token mask: try every token.

A token is allowed after the text `prefix` iff `prefix + token` can still be extended to a string
of the language, and an EOS id iff `prefix` itself is in the language. Special tokens (no text)
are never allowed. The language is given by a `Language`: built here from a regular expression
(with the `regex` package's partial matching) or a list of choices; a JSON schema is checked by
writing its language as a regex in the test. Costs one check per vocabulary entry (~1 s for 49K).

One deliberate difference (llguidance's design): where the grammar forces the next text (`"b":`
after `{"a":0,` in compact JSON), only the first token of the tokenizer's own tokenization of that
text is allowed, not every token that spells a piece of it, so that the output stays tokenized
as the model was trained. `reference_mask(..., forced=...)` takes those forced tokens; the test
checks them against `forced_bytes` (computed from the language) and the tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from turboctx.tokenizer import Tokenizer, _bytes_to_unicode


@dataclass(frozen=True)
class Language:
    """viable(b): b is a prefix of some string of the language; complete(b): b is in it."""

    viable: Callable[[bytes], bool]
    complete: Callable[[bytes], bool]


def regex_language(pattern: str) -> Language:
    """The strings that the ASCII regex `pattern` matches whole (bytes read as latin-1)."""
    import regex

    compiled = regex.compile(pattern, flags=regex.DOTALL)

    def viable(b: bytes) -> bool:
        return compiled.fullmatch(b.decode("latin-1"), partial=True) is not None

    def complete(b: bytes) -> bool:
        return compiled.fullmatch(b.decode("latin-1")) is not None

    return Language(viable, complete)


def choice_language(choices: Iterable[str]) -> Language:
    options = [c.encode("utf-8") for c in choices]
    return Language(lambda b: any(o.startswith(b) for o in options), lambda b: b in options)


def token_bytes(tokenizer: Tokenizer) -> list[bytes | None]:
    """Per id, the bytes the token stands for; None for special tokens. Byte-level BPE
    vocabularies (GPT-2's byte -> character table) only."""
    inverse = {c: b for b, c in _bytes_to_unicode().items()}
    added = tokenizer.backend.get_added_tokens_decoder()          # id -> AddedToken
    out: list[bytes | None] = []
    for i in range(tokenizer.vocab_size):
        tok = added.get(i)
        if tok is not None:
            out.append(None if tok.special else tok.content.encode("utf-8"))
            continue
        piece = tokenizer.id_to_token(i)
        out.append(None if piece is None else bytes(inverse[c] for c in piece))
    return out


def forced_bytes(prefix: bytes, language: Language) -> bytes:
    """The bytes every continuation of `prefix` must start with (until the language may end or
    branch), found by trying all 256 next bytes."""
    out = b""
    while not language.complete(prefix + out):
        nxt = [b for b in range(256) if language.viable(prefix + out + bytes([b]))]
        if len(nxt) != 1:
            break
        out += bytes(nxt)
    return out


def reference_mask(pieces: Sequence[bytes | None], prefix: bytes, language: Language,
                   eos_token_ids: Iterable[int], vocab_size: int | None = None,
                   forced: Sequence[int] = ()) -> torch.Tensor:
    """[vocab_size] bool: the ids allowed after `prefix` (ids past len(pieces): False). With
    `forced` tokens (the tokenization of forced text), only the first of them, if it is allowed."""
    n = vocab_size or len(pieces)
    mask = torch.zeros(n, dtype=torch.bool)
    eos = set(eos_token_ids)
    can_end = language.complete(prefix)
    for i, piece in enumerate(pieces[:n]):
        if i in eos:
            mask[i] = can_end
        elif piece:
            mask[i] = language.viable(prefix + piece)
    if forced:
        only = torch.zeros_like(mask)
        only[forced[0]] = mask[forced[0]]
        return only
    return mask
