"""RULER's scorers, from NVIDIA/RULER scripts/eval/synthetic/constants.py and evaluate.py."""
from __future__ import annotations

import re

_NONPRINT = re.compile(r"[\x00-\x1f]")


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


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    return round(sum(match_all(p, r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    return round(sum(match_part(p, r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def score_sample(pred: str, ref: list[str], metric: str) -> float:
    pred = postprocess_pred(pred)
    return match_part(pred, ref) if metric == "part" else match_all(pred, ref)
