"""RULER frequent words extraction (fwe), after NVIDIA/RULER
scripts/data/synthetic/freq_words_extraction.py: coded 6-letter words drawn with Zipf
(zeta, alpha 2) frequencies; the top-ranked word is replaced by '...' noise; the answer is
ranks 2-4. RULER grows the word count linearly in steps of length/32; we binary-search it.
"""
from __future__ import annotations

import math
import random
import string

import numpy as np

from turboctx.eval.ruler.base import Built
from turboctx.eval.ruler.constants import TEMPLATES


def zeta(alpha: float) -> float:
    """Riemann zeta for alpha > 1 (scipy.special.zeta without scipy): sum + Euler-Maclaurin tail."""
    if alpha == 2.0:
        return math.pi ** 2 / 6
    n = 1000
    s = sum(k ** -alpha for k in range(1, n))
    return s + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha + alpha * n ** (-alpha - 1) / 12


def make(args: dict, seed: int, length: int, coded_wordlen: int = 6, vocab_size: int = -1):
    t = TEMPLATES["freq_words_extraction"]
    alpha = args.get("alpha", 2.0)
    vocab_size = (length - t["tokens_to_generate"]) // 50 if vocab_size == -1 else vocab_size
    z = zeta(alpha)

    def build(rng: random.Random, n: int) -> Built:
        vocab = ["".join(rng.choices(string.ascii_lowercase, k=coded_wordlen)) for _ in range(vocab_size)]
        while len(set(vocab)) < vocab_size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=coded_wordlen)))
        vocab = sorted(set(vocab))
        random.Random(seed).shuffle(vocab)
        vocab[0] = "..."
        k = np.arange(1, len(vocab) + 1)
        counts = (n * (k ** -alpha) / z).astype(int)
        sampled = [w for w, c in zip(vocab, counts) for _ in range(int(c))]
        random.Random(seed).shuffle(sampled)
        body = t["template"].format(context=" ".join(sampled), query="")
        return Built(body, t["answer_prefix"], vocab[1:4], {})

    return build
