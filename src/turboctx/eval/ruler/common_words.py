"""RULER common words extraction (cwe), after NVIDIA/RULER
scripts/data/synthetic/common_words_extraction.py: 10 words repeated 30 times among words
repeated 3 times (6 and 1 below 4K tokens), one solved example first.

RULER draws from wonderwords' nouns + adjectives + verbs (8,166 words, enough for about 199K
tokens) and for longer lists from a second file, so its words change character with the length.
Here every length draws from one list, data/cwe_words.txt.gz: 103,645 lowercase web2 words
(public domain; data/README.md), enough for 1M tokens. As RULER does, the list is sorted,
shuffled by the seed, and each example samples its words from it.
"""
from __future__ import annotations

import functools
import gzip
import random
from pathlib import Path

from turboctx.eval.ruler.base import Built
from turboctx.eval.ruler.constants import TEMPLATES

WORDS_FILE = Path(__file__).resolve().parent / "data" / "cwe_words.txt.gz"


@functools.lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """The cwe word list, sorted (the shipped file as it is)."""
    try:
        text = gzip.decompress(WORDS_FILE.read_bytes()).decode("ascii")
    except OSError as e:
        raise RuntimeError(f"cwe's word list {WORDS_FILE} cannot be read ({e}); reinstall "
                           "turboctx or run tools/make_cwe_words.py") from e
    return tuple(w for w in text.split("\n") if w)


@functools.lru_cache(maxsize=4)
def _words(seed: int) -> list[str]:
    words = sorted(set(word_list()))
    random.Random(seed).shuffle(words)
    return words


def max_words() -> int:
    """The most distinct words one example can have."""
    return len(_words(0))


def _example(rng: random.Random, seed: int, num_words: int, common_repeats: int,
             uncommon_repeats: int, common_nums: int):
    chosen = rng.sample(_words(seed), num_words)
    common, uncommon = chosen[:common_nums], chosen[common_nums:]
    word_list = common * common_repeats + uncommon * uncommon_repeats
    random.Random(seed).shuffle(word_list)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list)), common


def make(args: dict, seed: int, length: int, num_fewshot: int = 1):
    t = TEMPLATES["common_words_extraction"]
    num_cw = args["num_cw"]

    def build(rng: random.Random, n: int) -> Built:
        if length < 4096:
            shots = [_example(rng, seed, 20, 3, 1, num_cw) for _ in range(num_fewshot)]
            context, answer = _example(rng, seed, n, 6, 1, num_cw)
        else:
            shots = [_example(rng, seed, 40, 10, 3, num_cw) for _ in range(num_fewshot)]
            context, answer = _example(rng, seed, n, args["freq_cw"], args["freq_ucw"], num_cw)
        shot_text = "\n".join(
            t["template"].format(context=c, query="") + t["answer_prefix"] + " "
            + " ".join(f"{i + 1}. {w}" for i, w in enumerate(a)) for c, a in shots)
        body = shot_text + "\n" + t["template"].format(context=context, query="")
        return Built(body, t["answer_prefix"], answer, {})

    return build
