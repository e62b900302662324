"""`turboctx bench context`: a long context kept, then a new process's time to first token when it
loads the context from host RAM and from disk, against prefilling it.

Each phase is its own process, as a user's next `ask` would be:
  keep  prefill material + question (TTFT), keep the material's KV (save time)
  ram   a new process: weights loaded, then load the context from the RAM tier and answer
  disk  the RAM copy removed and the disk copy dropped from the page cache: the same from disk
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

QUESTION_TOKENS = 64
NAME = "bench-context"


def prompt_ids(length: int, vocab: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random material of `length` tokens and a question of QUESTION_TOKENS."""
    import torch
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (length + QUESTION_TOKENS,), generator=g).tolist()
    return ids[:length], ids[length:]


def run_phase(phase: str, options: dict, length: int, seed: int) -> dict:
    """One phase in this process (see the module doc); returns its figures."""
    from turboctx import LLM, SamplingParams
    t_start = time.perf_counter()
    llm = LLM(**options, max_model_len=length + 2 * QUESTION_TOKENS,
              kv_cache_tokens=length + 2 * QUESTION_TOKENS, max_num_seqs=1, enable_prefix_caching=True)
    t_loaded = time.perf_counter()
    material, question = prompt_ids(length, llm.architecture.vocab_size, seed)
    kept = llm.engine.attach_context_store()
    out: dict = {"phase": phase, "length": length, "weights_load_s": round(t_loaded - t_start, 3)}
    loaded = None
    if phase != "keep":
        loaded = llm.load_context(NAME, material)
        if loaded is None or not loaded.num_tokens:
            raise SystemExit(f"context not loaded: {loaded.warnings if loaded else 'not kept'}")
        out.update(load_tier=loaded.tier, load_s=round(loaded.seconds, 3),
                   load_gb=round(loaded.nbytes / 1e9, 3), load_gb_per_s=round(loaded.gb_per_s, 2))
    res = llm.generate([material + question], SamplingParams(max_tokens=1, temperature=0))[0]
    out.update(ttft_s=round(res.metrics.ttft_s, 3), cached_tokens=res.metrics.num_cached_tokens,
               first_token=res.token_ids[0], peak_memory_gib=round(res.metrics.peak_memory_bytes / 2**30, 2))
    if loaded is not None:
        out["first_token_after_weights_s"] = round(loaded.seconds + res.metrics.ttft_s, 3)
    if phase == "keep":
        k = llm.keep_context(NAME, material)
        out.update(keep_s=round(k.seconds, 3), kept_tokens=k.num_tokens, kept_gb=round(k.nbytes / 1e9, 3),
                   kept_in=k.tiers, warnings=k.warnings)
    if phase == "disk":
        out["disk_path"] = str(kept.store.tier("disk").root)
    return out


def drop_ram_copy_and_page_cache() -> None:
    """Leaves only the disk copy, and not in the page cache, so the next load reads the disk."""
    from turboctx.contexts.store import ContextStore
    store = ContextStore()
    ram = store.tier("ram")
    if ram is not None:
        store.remove(NAME, ram)
    disk = store.tier("disk")
    for f in (disk.path(NAME)).iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_context(options: dict, length: int, seed: int, phases: list[str]) -> list[dict]:
    """Runs each phase in a new process; returns their figures (the ratios in the last row)."""
    rows = []
    for phase in phases:
        if phase == "disk":
            drop_ram_copy_and_page_cache()
        cmd = [sys.executable, "-m", "turboctx.bench.kept_context", phase, str(length), str(seed),
               json.dumps(options)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"phase {phase} failed:\n{r.stderr[-4000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    prefill = next((r["ttft_s"] for r in rows if r["phase"] == "keep"), None)
    for r in rows:
        if prefill and "first_token_after_weights_s" in r:
            r["fraction_of_prefill"] = round(r["first_token_after_weights_s"] / prefill, 4)
    return rows


if __name__ == "__main__":
    phase_, length_, seed_, options_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    print(json.dumps(run_phase(phase_, options_, length_, seed_)))
