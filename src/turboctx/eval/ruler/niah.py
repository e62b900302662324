"""RULER needle-in-a-haystack family (niah_single_*, niah_multikey_*, niah_multivalue,
niah_multiquery). After NVIDIA/RULER scripts/data/synthetic/niah.py; haystack "essay" is the
ASV Bible here (see turboctx.eval.haystack), "noise" and "needle" are as in RULER.
"""
from __future__ import annotations

import random
import uuid

from turboctx.eval import haystack as hs
from turboctx.eval.ruler.base import Built, wonder_lists
from turboctx.eval.ruler.constants import DEPTHS, TEMPLATES

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."


def _random(rng: random.Random, kind: str) -> str:
    if kind == "numbers":   # 7 digits
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":     # adjective-noun, uniform over RULER's sorted product list
        nouns, adjs, _ = wonder_lists()
        return f"{rng.choice(adjs)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


def make(args: dict, seed: int, haystack_path: str | None = None):
    """A `make(rng, n_haystack) -> Built` for one RULER niah configuration."""
    type_k, type_v = args["type_needle_k"], args["type_needle_v"]
    num_v, num_q = args["num_needle_v"], args["num_needle_q"]
    num_k = max(args["num_needle_k"], num_q)
    kind = args["type_haystack"]

    def build(rng: random.Random, n: int) -> Built:
        keys, values, needles = [], [], []
        for _ in range(num_k):
            keys.append(_random(rng, type_k))
            value = []
            for _ in range(num_v):
                value.append(_random(rng, type_v))
                needles.append(NEEDLE.format(type_needle_v=type_v, key=keys[-1], value=value[-1]))
            values.append(value)
        random.Random(seed).shuffle(needles)
        depths = None
        if kind == "essay":
            sents = hs.sent_tokenize(hs.take_words(n, haystack_path))
            depths = sorted(rng.sample(DEPTHS, len(needles)))
            cuts = [0] + [int(len(sents) * (d / 100)) for d in depths] + [len(sents)]
            parts = []
            for j in range(1, len(cuts)):
                parts.append(" ".join(sents[cuts[j - 1]:cuts[j]]))
                if j - 1 < len(needles):
                    parts.append(needles[j - 1])
            context = " ".join(parts)
        else:
            if kind == "noise":
                sentences = [hs.NOISE] * n
            elif kind == "needle":
                sentences = [NEEDLE.format(type_needle_v=type_v, key=_random(rng, type_k),
                                           value=_random(rng, type_v)) for _ in range(n)]
            else:
                raise ValueError(f"unknown haystack {kind!r}")
            indexes = sorted(rng.sample(range(n), len(needles)), reverse=True)
            for idx, needle in zip(indexes, needles):
                sentences.insert(idx, needle)
            if len(needles) == 1:
                depths = [100 * indexes[0] / max(n, 1)]
            context = "\n".join(sentences)

        picked = rng.sample(range(num_k), num_q)
        queries = [keys[i] for i in picked]
        answers = [a for i in picked for a in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]

        template, prefix = TEMPLATES["niah"]["template"], TEMPLATES["niah"]["answer_prefix"]
        tv = type_v
        if num_q * num_v == 1:  # singular wording, exactly RULER's replacements
            for a, b in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
                template, prefix = template.replace(a, b), prefix.replace(a, b)
            tv = type_v[:-1]
        extra = {"depth": depths[0] / 100 if depths and len(depths) == 1 else None}
        return Built(template.format(type_needle_v=tv, context=context, query=query),
                     prefix.format(type_needle_v=tv, query=query), answers, extra)

    return build
