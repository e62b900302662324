"""RULER synthetic tasks (NVIDIA/RULER, Apache-2.0), one family per module.

    samples = generate("niah_single_1", length=4096, n=20, seed=42,
                       count=target.count_tokens, prompt_fn=lambda body, prefix: body + prefix)
"""
from __future__ import annotations

from typing import Callable

from turboctx.eval.common import Sample
from turboctx.eval.ruler import common_words, freq_words, niah, qa, variable_tracking
from turboctx.eval.ruler.base import PromptFn, fit_samples
from turboctx.eval.ruler.constants import TASKS

ALL_TASKS = list(TASKS)
DEFAULT_TASKS = [t for t in ALL_TASKS if not t.startswith("qa")]


class NotRun(Exception):
    """A task that cannot run here (qa_* without its data file)."""


def generate(task: str, length: int, n: int, seed: int, count: Callable[[str], int],
             prompt_fn: PromptFn, haystack: str | None = None,
             qa_files: dict[str, str] | None = None) -> list[Sample]:
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(ALL_TASKS)}")
    family, args = TASKS[task]["task"], TASKS[task]["args"]
    max_units, units_name = None, "units"
    if family == "niah":
        build = niah.make(args, seed, haystack)
        make_for, min_units = (lambda i: build), (100 if args["type_haystack"] == "essay" else 4)
    elif family == "variable_tracking":
        build = variable_tracking.make(args, seed, count)
        make_for, min_units = (lambda i: build), 5
    elif family == "common_words_extraction":
        build = common_words.make(args, seed, length)
        make_for, min_units = (lambda i: build), 10
        max_units, units_name = common_words.max_words(), "words of its word list"
    elif family == "freq_words_extraction":
        build = freq_words.make(args, seed, length)
        make_for, min_units = (lambda i: build), 10
    else:
        path = (qa_files or {}).get(args["dataset"])
        if not path:
            raise NotRun(f"{task} needs the {args['dataset']} file (--{args['dataset']} PATH)")
        make_for, min_units = qa.make(args, seed, path), 2
    return fit_samples(task, family, length, n, seed, make_for, prompt_fn, count, min_units,
                       max_units, units_name)
