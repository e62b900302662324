"""Tokenizers for the structured-output tests: a tiny byte-level BPE vocabulary (every byte, a
few merges, two special tokens) where the exact reference mask is instant, and the default
model's (49,152 tokens), each built once per test run."""
from __future__ import annotations

from functools import lru_cache

from turboctx.tokenizer import Tokenizer, _byte_level_bpe, _bytes_to_unicode

TINY_MERGED = ['{"', '":', '"}', '",', ' "', "ab", "abc", "12", "123", "00", "true", "ru", "tr",
               "ue", "fal", "se", "null", "nu", "ll", "[1", "],", ", ", ": ", "\n ", "  ",
               "yes", "no", "ye", "es", "\"a", "a\""]


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
    """256 byte tokens + TINY_MERGED + <eos> (id = vocab - 2, the EOS) and <pad> (special)."""
    alphabet = _bytes_to_unicode()
    spell = lambda s: "".join(alphabet[b] for b in s.encode("utf-8"))  # noqa: E731
    tokens = [alphabet[b] for b in range(256)] + [spell(m) for m in TINY_MERGED]
    types = [1] * len(tokens)
    merges = []
    for m in TINY_MERGED:                         # each merge joins its first byte to the rest
        head, rest = m[0], m[1:]
        if len(rest) == 1 or spell(rest) in tokens:
            merges.append(f"{spell(head)} {spell(rest)}")
    tokens += ["<eos>", "<pad>"]
    types += [3, 3]
    backend = _byte_level_bpe(tokens, types, [tuple(m.split(" ")) for m in merges], "gpt2")
    return Tokenizer(backend, eos_token="<eos>", pad_token="<pad>")


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    from turboctx.weights import default_gguf_path

    return Tokenizer.from_gguf(default_gguf_path())
