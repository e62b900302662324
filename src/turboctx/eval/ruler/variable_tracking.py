"""RULER variable tracking (vt), after NVIDIA/RULER scripts/data/synthetic/variable_tracking.py:
one chain of 4 hops in the noise haystack, preceded by a ~500-token in-context example whose
variable names and value are re-randomized per sample (RULER's randomize_icl)."""
from __future__ import annotations

import random
import string

from turboctx.eval import haystack as hs
from turboctx.eval.common import fit_to_length
from turboctx.eval.ruler.base import Built
from turboctx.eval.ruler.constants import TEMPLATES

ICL_TOKENS = 500


def _chains(rng: random.Random, num_chains: int, num_hops: int, is_icl: bool):
    k = 3 if is_icl else 5
    num_hops = min(10, num_hops) if is_icl else num_hops
    total = (num_hops + 1) * num_chains
    vars_all = ["".join(rng.choices(string.ascii_uppercase, k=k)) for _ in range(total)]
    while len(set(vars_all)) < total:
        vars_all.append("".join(rng.choices(string.ascii_uppercase, k=k)))
    vars_ret, chains = [], []
    for i in range(0, len(vars_all), num_hops + 1):
        v = vars_all[i:i + num_hops + 1]
        vars_ret.append(v)
        value = "12345" if is_icl else str(rng.randint(10000, 99998))  # np.random.randint(10000, 99999)
        chain = [f"VAR {v[0]} = {value}"]
        chain += [f"VAR {v[j + 1]} = VAR {v[j]} " for j in range(num_hops)]
        chains.append(chain)
    return vars_ret, chains


def _body(rng: random.Random, n: int, num_chains: int, num_hops: int, is_icl: bool):
    variables, chains = _chains(rng, num_chains, num_hops, is_icl)
    value = chains[0][0].split("=")[-1].strip()
    sentences = [hs.NOISE] * n
    for chain in chains:
        positions = sorted(rng.sample(range(len(sentences)), len(chain)))
        for j, pos in enumerate(positions):
            sentences.insert(pos + j, chain[j])
    context = "\n".join(sentences).replace(". \n", ".\n")
    t = TEMPLATES["variable_tracking"]
    body = t["template"].format(context=context, query=value, num_v=num_hops + 1)
    prefix = t["answer_prefix"].format(context=context, query=value, num_v=num_hops + 1)
    return body, prefix, variables[0]


def _randomize_icl(rng: random.Random, icl: str, num_hops: int) -> str:
    for item in icl.strip().split()[-num_hops - 1:]:
        icl = icl.replace(item, "".join(rng.choices(string.ascii_uppercase, k=len(item))))
    return icl.replace("12345", str(rng.randint(10000, 99998)))


def icl_example(count, seed: int, num_chains: int, num_hops: int) -> str:
    """RULER's in-context example: the bare task fitted to 500 tokens, then its answer."""
    def build(n: int) -> str:
        body, prefix, _ = _body(random.Random(f"vt-icl/{seed}"), n, num_chains, num_hops, True)
        return body + prefix
    n, _, _ = fit_to_length(build, count, ICL_TOKENS, lo=5)
    _, _, answer = _body(random.Random(f"vt-icl/{seed}"), n, num_chains, num_hops, True)
    return build(n) + " " + " ".join(answer) + "\n"


def make(args: dict, seed: int, count):
    num_chains, num_hops = args["num_chains"], args["num_hops"]
    icl = icl_example(count, seed, num_chains, num_hops)

    def build(rng: random.Random, n: int) -> Built:
        body, prefix, answer = _body(rng, n, num_chains, num_hops, False)
        body = _randomize_icl(rng, icl, num_hops) + "\n" + body
        return Built(body, prefix, answer, {})

    return build
