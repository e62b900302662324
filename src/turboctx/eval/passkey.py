"""Passkey retrieval, the classic prompt (Mohtashami & Jaggi 2023, "Landmark Attention",
run_test.py; the form LongLoRA, YaRN and the Qwen2.5-1M report use): five parts, one per line —
the task, filler before the key, the key line, filler after it, the question — with the key
drawn from 1..50000, and the classic scoring: the first integer of the reply must be the key.

The classic places the key at a random character offset; here the depth is chosen (a grid or
random depths, from --depths) and the filler is fitted at sentence granularity to the length
in tokens. Both filler parts start at the filler's beginning, as the classic's garbage_inf[:n].
"""
from __future__ import annotations

import random
from typing import Callable

from turboctx.eval.common import Sample, fit_to_length

TASK = "passkey"
INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
         "Find it and memorize them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)   # the classic's random.randint(1, 50000)
# --passkey-scoring: the classic's first integer, or any occurrence of the key (RULER's match)
SCORINGS = {"first-integer": "first_integer", "substring": "all"}
# Fit at sentence granularity (5 sentences per FILLER): a few tokens per step.
_SENTS = [s + "." for s in FILLER[:-1].split(". ")]


def filler(n_sentences: int) -> str:
    """The first n sentences of the repeated filler, space-separated."""
    return " ".join(_SENTS[i % len(_SENTS)] for i in range(n_sentences))


def build_prompt(n_sentences: int, depth: float, key: str) -> str:
    """The classic five lines with n_sentences of filler, the key line after depth of them."""
    at = int(round(depth * n_sentences))
    return "\n".join([INTRO, filler(at), NEEDLE.format(key=key), filler(n_sentences - at),
                      QUESTION])


def make_key(rng: random.Random, digits: int | None = None) -> str:
    """The classic key (1..50000), or a key of exactly `digits` digits when given."""
    if digits is None:
        return str(rng.randint(*KEY_RANGE))
    if digits < 1:
        raise ValueError(f"--digits {digits}: a pass key needs at least 1 digit")
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def scoring_metric(scoring: str) -> str:
    """The Sample metric of a --passkey-scoring name."""
    if scoring not in SCORINGS:
        raise ValueError(f"--passkey-scoring {scoring!r}: use {' or '.join(SCORINGS)}")
    return SCORINGS[scoring]


def generate(lengths: list[int], depths: list[float], trials: int, seed: int,
             count: Callable[[str], int], wrap: Callable[[str], str] = lambda p: p,
             digits: int | None = None, max_tokens: int = 16,
             scoring: str = "first-integer") -> list[Sample]:
    """trials samples per (length, depth); each prompt + max_tokens fits `length` tokens."""
    metric = scoring_metric(scoring)
    out = []
    for length in lengths:
        n0 = None
        for depth in depths:
            for t in range(trials):
                key = make_key(random.Random(f"passkey/{seed}/{length}/{depth:.4f}/{t}"), digits)
                hi = None if n0 is None else 2 * n0 + 16
                n, prompt, n_tok = fit_to_length(lambda n: wrap(build_prompt(n, depth, key)),
                                                 count, length - max_tokens, lo=1, hi=hi)
                n0 = n
                out.append(Sample(task=TASK, length=length, index=t, prompt=prompt,
                                  expected=[key], metric=metric, max_tokens=max_tokens,
                                  depth=depth, prompt_tokens=n_tok))
    return out
