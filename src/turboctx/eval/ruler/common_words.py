"""RULER common words extraction (cwe), after NVIDIA/RULER
scripts/data/synthetic/common_words_extraction.py: 10 words repeated 30 times among words
repeated 3 times (6 and 1 below 4K tokens), one solved example first.
RULER draws from wonderwords' nouns + adjectives + verbs, and for lists longer than that
from english_words.json (a 8.5 MB LFS file); we extend with the ASV Bible's vocabulary instead.
"""
from __future__ import annotations

import functools
import random
import re

from turboctx.eval import haystack as hs
from turboctx.eval.ruler.base import Built, wonder_lists
from turboctx.eval.ruler.constants import TEMPLATES


@functools.lru_cache(maxsize=4)
def _words(seed: int) -> list[str]:
    nouns, adjs, verbs = wonder_lists()
    words = sorted(set(nouns + adjs + verbs))
    random.Random(seed).shuffle(words)
    return words


@functools.lru_cache(maxsize=1)
def _extra_words() -> list[str]:
    vocab = {w.lower() for w in re.findall(r"[A-Za-z]+", hs.bible_text())}
    return sorted(vocab | set(_words(0)))


def _example(rng: random.Random, seed: int, num_words: int, common_repeats: int,
             uncommon_repeats: int, common_nums: int):
    words = _words(seed)
    pool = words if num_words <= len(words) else _extra_words()
    chosen = rng.sample(pool, num_words)
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
