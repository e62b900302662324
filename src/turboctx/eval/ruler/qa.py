"""RULER QA (qa_1 = SQuAD v2 dev, qa_2 = HotpotQA dev), after NVIDIA/RULER
scripts/data/synthetic/qa.py: the gold paragraph(s) among distractor documents. The data is
read from files the user names (--squad / --hotpotqa); nothing is downloaded.
"""
from __future__ import annotations

import functools
import json
import random

from turboctx.eval.ruler.base import Built
from turboctx.eval.ruler.constants import TEMPLATES

DOCUMENT_PROMPT = "Document {i}:\n{document}"


@functools.lru_cache(maxsize=2)
def read_squad(path: str):
    data = json.load(open(path, encoding="utf-8"))
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        more = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for q in p["qas"]:
                if not q.get("is_impossible", False):
                    qas.append({"query": q["question"], "outputs": [a["text"] for a in q["answers"]],
                                "context": [index[p["context"]]],
                                "more_context": [i for i in more if i != index[p["context"]]]})
    return qas, docs


@functools.lru_cache(maxsize=2)
def read_hotpotqa(path: str):
    data = json.load(open(path, encoding="utf-8"))
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
    return qas, docs


def make(args: dict, seed: int, path: str):
    qas, docs = (read_squad if args["dataset"] == "squad" else read_hotpotqa)(path)
    t = TEMPLATES["qa"]

    def build_for(index: int):
        def build(rng: random.Random, n: int) -> Built:
            qa = qas[index % len(qas)]
            cur, more = qa["context"], qa.get("more_context", [])
            if n < len(docs):
                if n - len(cur) > len(more):
                    taken = set(cur + more)
                    extra = [i for i in range(len(docs)) if i not in taken]
                    chosen = cur + more + rng.sample(extra, max(0, n - len(cur) - len(more)))
                else:
                    chosen = cur + rng.sample(more, max(0, n - len(cur)))
                all_docs = [docs[i] for i in chosen]
            else:
                all_docs = (docs * (n // len(docs) + 1))[:n]
            random.Random(seed).shuffle(all_docs)
            context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d)
                                  for i, d in enumerate(all_docs))
            body = t["template"].format(context=context, query=qa["query"])
            return Built(body, t["answer_prefix"], list(qa["outputs"]), {})
        return build

    return build_for
