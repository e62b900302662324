"""Token ids of prompt pieces: the chat template's text with its special tokens, a document's
text as plain text (a `<|im_end|>` written in a file is characters, not the end of the turn)."""
from __future__ import annotations

import weakref

from turboctx.tokenizer import Tokenizer

# tokenizer -> a copy of its backend that reads special-token strings as text
_PLAIN_TEXT_BACKENDS: "weakref.WeakKeyDictionary[Tokenizer, object]" = weakref.WeakKeyDictionary()


def encode_template(tokenizer: Tokenizer, text: str) -> list[int]:
    """Template text: special tokens (<|im_start|>, ...) become their ids; nothing is added."""
    return tokenizer.encode(text, add_special_tokens=False)


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text on its own, special-token strings in it as plain text; nothing added."""
    if not texts:
        return []
    backend = tokenizer.backend
    if _holds_special_token(backend, texts):
        backend = _plain_text_backend(tokenizer)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)   # fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _special_strings(backend) -> list[str]:
    return [t.content for t in backend.get_added_tokens_decoder().values() if t.special]


def _holds_special_token(backend, texts: list[str]) -> bool:
    specials = _special_strings(backend)
    return any(s in text for text in texts for s in specials)


def _plain_text_backend(tokenizer: Tokenizer):
    backend = _PLAIN_TEXT_BACKENDS.get(tokenizer)
    if backend is None:
        import tokenizers
        backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
        backend.encode_special_tokens = True
        _PLAIN_TEXT_BACKENDS[tokenizer] = backend
    return backend
