"""Passkey retrieval, the classic prompt (Mohtashami & Jaggi 2023, "Landmark Attention"; the
form used by LongLoRA, YaRN and the Qwen2.5-1M report): a 5-digit key hidden at a depth of
repeated filler, then "What is the pass key? The pass key is". Score: the key in the answer.
"""
from __future__ import annotations

import random

from turboctx.eval.common import Sample, fit_to_length

TASK = "passkey"
INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
         "Find it and memorize them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
# Fit at sentence granularity (5 sentences per FILLER): a few tokens per step.
_SENTS = [s + "." for s in FILLER[:-1].split(". ")]


def build_prompt(n_sentences: int, depth: float, key: str) -> str:
    filler = [_SENTS[i % len(_SENTS)] for i in range(n_sentences)]
    at = int(round(depth * n_sentences))
    parts = [INTRO, *filler[:at], NEEDLE.format(key=key), *filler[at:], QUESTION]
    return " ".join(parts)


def make_key(rng: random.Random, digits: int = 5) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def generate(lengths: list[int], depths: list[float], trials: int, seed: int, count,
             wrap=lambda p: p, digits: int = 5, max_tokens: int = 16) -> list[Sample]:
    """trials samples per (length, depth); each prompt + max_tokens fits `length` tokens."""
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
                                  expected=[key], metric="all", max_tokens=max_tokens,
                                  depth=depth, prompt_tokens=n_tok))
    return out
