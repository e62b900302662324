"""Needle in a haystack (after gkamradt/LLMTest_NeedleInAHaystack): one needle sentence at a
depth of a long text, one question, a heatmap of depth x length.

Kamradt's original scores answers with a GPT-4 judge; to stay deterministic and local the
default needle carries a random 7-digit value that the answer must contain. A custom
needle without "{value}" is scored by the --expected substrings (all must appear).
"""
from __future__ import annotations

import random

from turboctx.eval import haystack as hs
from turboctx.eval.common import Sample, fit_to_length

TASK = "niah"
NEEDLE = "The special magic number of the day is {value}."
QUESTION = "What is the special magic number of the day?"
ANSWER_PREFIX = " The special magic number of the day is"  # RULER style: after the question
INSTRUCTION = ("Below is a long text. Somewhere in it is a sentence about a special magic number. "
               "Read it carefully and answer the question that follows.")


def build_prompt(words: list[str] | tuple[str, ...], depth: float, needle: str, question: str) -> str:
    """The task body; the answer prefix goes after it (after the chat turn with --template chat).
    As in Kamradt's NIAH, the needle goes at the sentence end at or before the depth point."""
    at = int(round(depth * len(words)))
    if at < len(words):
        while at > 0 and not words[at - 1].endswith((".", "!", "?")):
            at -= 1
    context = " ".join([*words[:at], needle, *words[at:]])
    return f"{INSTRUCTION}\n\n{context}\n\nQuestion: {question}"


def generate(lengths: list[int], depths: list[float], trials: int, seed: int, count,
             wrap=lambda body, prefix: body + prefix, needle: str = NEEDLE,
             question: str = QUESTION, answer_prefix: str = ANSWER_PREFIX,
             expected: list[str] | None = None, haystack: str | None = None,
             max_tokens: int = 32) -> list[Sample]:
    """trials samples per (length, depth); the haystack is cut at word granularity to fit."""
    words_all = hs.take_words(max(lengths) * 3, haystack).split(" ")
    out = []
    for length in lengths:
        n0 = None
        for depth in depths:
            for t in range(trials):
                rng = random.Random(f"niah/{seed}/{length}/{depth:.4f}/{t}")
                value = str(rng.randint(10 ** 6, 10 ** 7 - 1))
                text = needle.format(value=value) if "{value}" in needle else needle
                exp = [value] if "{value}" in needle else list(expected or [])
                if not exp:
                    raise ValueError("a needle without {value} needs --expected words to score")
                start = rng.randrange(0, max(1, len(words_all) // 4))  # vary the haystack per trial

                def build(n, start=start, text=text):
                    return wrap(build_prompt(words_all[start:start + n], depth, text, question),
                                answer_prefix)

                hi = None if n0 is None else 2 * n0 + 16
                n, prompt, n_tok = fit_to_length(build, count, length - max_tokens, lo=1, hi=hi)
                n0 = n
                out.append(Sample(task=TASK, length=length, index=t, prompt=prompt, expected=exp,
                                  metric="all", max_tokens=max_tokens, depth=depth,
                                  prompt_tokens=n_tok))
    return out
