"""Shared machinery of the RULER generators: word lists, per-sample RNG, length fitting.

RULER (NVIDIA/RULER scripts/data/synthetic/*.py) fits each task to the target length by a
binary search over the haystack size, counting tokens of the final prompt plus the tokens to
generate with the model's own tokenizer; we do the same, per sample, so every prompt is
within a few tokens of the target. Each sample's random draws come from its own seeded RNG,
so a sample is the same whatever the search tried before it (RULER threads one global RNG
through the search, which makes its prompts depend on the tokenizer's search path).
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable

from turboctx.eval.common import Sample, fit_to_length
from turboctx.eval.ruler.constants import METRIC, TEMPLATES


@functools.lru_cache(maxsize=1)
def wonder_lists() -> tuple[list[str], list[str], list[str]]:
    """(nouns, adjectives, verbs) of the `wonderwords` package, as RULER loads them."""
    try:
        from wonderwords import random_word
    except ImportError as e:
        raise RuntimeError("RULER tasks need `wonderwords` (pip install wonderwords)") from e
    get = random_word._get_words_from_text_file
    return get("nounlist.txt"), get("adjectivelist.txt"), get("verblist.txt")


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    return random.Random(f"ruler/{seed}/{task}/{length}/{index}")


@dataclass
class Built:
    body: str              # the task template filled in (what goes inside a chat turn)
    answer_prefix: str     # appended after the (model-templated) body, as RULER does
    expected: list[str]
    extra: dict


PromptFn = Callable[[str, str], str]   # (body, answer_prefix) -> full prompt


def fit_samples(task: str, family: str, length: int, n: int, seed: int,
                make_for: Callable[[int], Callable[[random.Random, int], Built]], prompt_fn: PromptFn,
                count: Callable[[str], int], min_units: int,
                max_units: int | None = None, units_name: str = "units") -> list[Sample]:
    """n samples whose prompt tokens + tokens_to_generate land at or just under `length`.
    max_units: the most units the generator can make (cwe: the words of its list); a length
    that would need more is refused with a ValueError, never built short."""
    gen = TEMPLATES[family]["tokens_to_generate"]
    budget = length - gen
    out: list[Sample] = []
    hi = None
    for i in range(n):
        cache: dict[int, Built] = {}
        make = make_for(i)

        def build(units: int, i=i, cache=cache, make=make) -> str:
            cache[units] = b = make(sample_rng(seed, task, length, i), units)
            return prompt_fn(b.body, b.answer_prefix)

        units, prompt, n_tok = fit_to_length(build, count, budget, lo=min_units, hi=hi,
                                             max_units=max_units)
        if max_units is not None and units >= max_units:
            raise ValueError(f"{task} at {length} tokens needs more than the {max_units} "
                             f"{units_name}: all of them make a prompt of only {n_tok} tokens")
        hi = 2 * units + 16
        b = cache[units]
        out.append(Sample(task=task, length=length, index=i, prompt=prompt, expected=b.expected,
                          metric=METRIC[family], max_tokens=gen, depth=b.extra.get("depth"),
                          prompt_tokens=n_tok, extra={k: v for k, v in b.extra.items()
                                                      if k != "depth"}))
    return out
