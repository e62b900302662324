"""RULER's scorers, from NVIDIA/RULER scripts/eval/synthetic/constants.py and evaluate.py, and
the classic passkey scorer (the first integer of the reply)."""
from __future__ import annotations

import re

_NONPRINT = re.compile(r"[\x00-\x1f]")
_INTEGER = re.compile(r"\d+")
METRICS = ("all", "part", "first_integer")


def postprocess_pred(pred: str) -> str:
    """evaluate.py: strip, control characters -> newline, strip."""
    return _NONPRINT.sub("\n", pred.strip()).strip()


def match_all(pred: str, ref: list[str]) -> float:
    """One sample's string_match_all in [0, 1]: the fraction of references found."""
    p = pred.lower()
    return sum(1.0 for r in ref if r.lower() in p) / len(ref)


def match_part(pred: str, ref: list[str]) -> float:
    """One sample's string_match_part in {0, 1}: any reference found."""
    p = pred.lower()
    return max(1.0 if r.lower() in p else 0.0 for r in ref)


def match_first_integer(pred: str, ref: list[str]) -> float:
    r"""1 when the reply's first integer equals a reference number, else 0: the classic passkey
    scoring (Mohtashami & Jaggi 2023, run_test.py: int(re.search(r'\d+', response)) == key), so
    "54321, no, 12345" does not retrieve the key 12345."""
    m = _INTEGER.search(pred)
    return 1.0 if m is not None and any(int(m.group()) == int(r) for r in ref) else 0.0


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    return round(sum(match_all(p, r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    return round(sum(match_part(p, r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def score_sample(pred: str, ref: list[str], metric: str) -> float:
    """One sample's score in [0, 1] by metric: all (string_match_all), part
    (string_match_part) or first_integer (the classic passkey's)."""
    pred = postprocess_pred(pred)
    if metric == "part":
        return match_part(pred, ref)
    if metric == "first_integer":
        return match_first_integer(pred, ref)
    if metric != "all":
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return match_all(pred, ref)
