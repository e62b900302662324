#!/usr/bin/env python3
"""Grammar libraries side by side on the default model's vocabulary (CPU): xgrammar vs llguidance.

For each library that is installed, and for turboctx.structured (our interface over the chosen
one, whose per-token figure includes masking the logits): the one-time tokenizer setup, the
compile time of a typical JSON schema (a pydantic model with 5 fields: a string, an enum, a nested
list of objects, a list of strings and a boolean), the first mask after compiling, and the
per-token cost of computing the next-token bitmask and accepting the token, walked over a
~100-token valid JSON answer tokenized by the default model's tokenizer. Compile times are the
median of --runs fresh compiles (library caches off); per-token times are the median (and p90)
over every token of every run.

usage: PYTHONPATH=src python3 tools/bench_grammar.py [--runs 7] [--libs xgrammar,llguidance,turboctx]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from enum import Enum

import torch
from pydantic import BaseModel


class Priority(str, Enum):
    low = "low"
    normal = "normal"
    urgent = "urgent"


class Item(BaseModel):
    name: str
    quantity: int


class Order(BaseModel):
    customer: str
    priority: Priority
    items: list[Item]
    tags: list[str]
    paid: bool


ANSWER = Order(customer="Ada Lovelace, 12 St James's Square, London", priority=Priority.urgent,
               items=[Item(name="analytical engine punch cards", quantity=250),
                      Item(name="brass gear wheels", quantity=48),
                      Item(name="notes on the Bernoulli numbers", quantity=1)],
               tags=["mathematics", "engines", "express delivery"], paid=True)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def _p90_ms(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))] * 1e3


def bench_llguidance(tok, schema: dict, ids: list[int], runs: int) -> dict:
    import llguidance
    import llguidance.torch as llt

    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=tok.vocab_size,
                                   eos_token=tok.eos_token_ids)
    setup = time.perf_counter() - t0
    compiles, firsts, steps = [], [], []
    bitmask = llt.allocate_token_bitmask(1, tok.vocab_size)  # [1, ceil(V/32)] int32
    for _ in range(runs):
        t0 = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        matcher = llguidance.LLMatcher(lltok, grammar)
        t1 = time.perf_counter()
        llt.fill_next_token_bitmask(matcher, bitmask)
        t2 = time.perf_counter()
        compiles.append(t1 - t0)
        firsts.append(t2 - t1)
        assert matcher.consume_token(ids[0]), matcher.get_error()
        for i in ids[1:]:
            t0 = time.perf_counter()
            llt.fill_next_token_bitmask(matcher, bitmask)
            ok = matcher.consume_token(i)
            steps.append(time.perf_counter() - t0)
            assert ok, matcher.get_error()
        assert matcher.is_accepting()
    return dict(setup=setup, compiles=compiles, firsts=firsts, steps=steps,
                version=llguidance.__version__)


def bench_xgrammar(tok, schema: dict, ids: list[int], runs: int) -> dict:
    import importlib.metadata

    import xgrammar

    t0 = time.perf_counter()
    vocab = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    info = xgrammar.TokenizerInfo(vocab, xgrammar.VocabType.BYTE_LEVEL, vocab_size=tok.vocab_size,
                                  stop_token_ids=tok.eos_token_ids)
    setup = time.perf_counter() - t0
    compiles, firsts, steps = [], [], []
    bitmask = xgrammar.allocate_token_bitmask(1, tok.vocab_size)  # [1, ceil(V/32)] int32
    for _ in range(runs):
        compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        t0 = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema))
        matcher = xgrammar.GrammarMatcher(compiled)
        t1 = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        t2 = time.perf_counter()
        compiles.append(t1 - t0)
        firsts.append(t2 - t1)
        assert matcher.accept_token(ids[0])
        for i in ids[1:]:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            ok = matcher.accept_token(i)
            steps.append(time.perf_counter() - t0)
            assert ok, f"xgrammar rejected token {i}"
        assert matcher.is_completed()
    return dict(setup=setup, compiles=compiles, firsts=firsts, steps=steps,
                version=importlib.metadata.version("xgrammar"))


def bench_turboctx(tok, schema: dict, ids: list[int], runs: int) -> dict:
    """Our interface over llguidance, with the logits masking the sampler pays for too:
    per token, matcher.apply(logits [V]) (bitmask -> -inf) and matcher.accept(token)."""
    from turboctx.structured import (GrammarMatcher, StructuredOutputsParams, TokenizerInfo,
                                     compile_grammar)
    t0 = time.perf_counter()
    info = TokenizerInfo(tok)
    setup = time.perf_counter() - t0
    spec = StructuredOutputsParams(json=schema)
    logits = torch.randn(tok.vocab_size, generator=torch.Generator().manual_seed(0))  # [V]
    compiles, firsts, steps = [], [], []
    for _ in range(runs):
        info._cache.clear()
        t0 = time.perf_counter()
        matcher = GrammarMatcher(compile_grammar(spec, info))
        t1 = time.perf_counter()
        matcher.apply(logits)
        t2 = time.perf_counter()
        compiles.append(t1 - t0)
        firsts.append(t2 - t1)
        matcher.accept(ids[0])
        for i in ids[1:]:
            t0 = time.perf_counter()
            masked = matcher.apply(logits)
            matcher.accept(i)
            steps.append(time.perf_counter() - t0)
            assert masked[i] == logits[i]
        assert matcher.is_terminated()
    return dict(setup=setup, compiles=compiles, firsts=firsts, steps=steps,
                version="(llguidance), apply to logits + accept")


BENCHES = {"xgrammar": bench_xgrammar, "llguidance": bench_llguidance, "turboctx": bench_turboctx}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="fresh compiles + walks per library")
    ap.add_argument("--libs", default="xgrammar,llguidance,turboctx", help="comma-separated, from: "
                    + ", ".join(BENCHES))
    args = ap.parse_args()
    libs = [name.strip() for name in args.libs.split(",") if name.strip()]
    unknown = [name for name in libs if name not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown library {unknown[0]!r}; choose from {', '.join(BENCHES)}")

    from turboctx.weights import open_checkpoint

    tok = open_checkpoint(None).tokenizer
    schema = Order.model_json_schema()
    text = ANSWER.model_dump_json()
    text = json.dumps(json.loads(text))  # the usual `", "` / `": "` spacing
    ids = tok.encode(text)
    print(f"# {_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"vocab {tok.vocab_size}; answer {len(ids)} tokens, {len(text)} chars; {args.runs} runs")
    print("| library | tokenizer setup (ms) | compile (ms, median) | first mask (ms, median) | "
          "mask + accept per token (ms, median / p90) |")
    print("|---|---|---|---|---|")
    for name in libs:
        try:
            r = BENCHES[name](tok, schema, ids, args.runs)
        except ImportError as e:
            print(f"| {name} | not installed ({e}) | | | |")
            continue
        print(f"| {name} {r['version']} | {r['setup'] * 1e3:.0f} | {_median_ms(r['compiles']):.1f} | "
              f"{_median_ms(r['firsts']):.2f} | {_median_ms(r['steps']):.3f} / {_p90_ms(r['steps']):.3f} |")


if __name__ == "__main__":
    main()
