"""Scheduler: budgets, decodes first, long prefills do not keep short requests out, KV admission."""
from __future__ import annotations

import pytest

from turboctx.engine.request import Request
from turboctx.engine.sampling_params import SamplingParams
from turboctx.engine.scheduler import Scheduler
from turboctx.kv_cache import BlockAllocator


def req(rid, n, max_tokens=4):
    return Request(rid, None, list(range(n)), SamplingParams(max_tokens=max_tokens), [])


def advance(chunks):
    for c in chunks:
        c.request.num_computed_tokens += c.num_tokens
        if c.sample:
            c.request.output_token_ids.append(7)


def test_long_prefill_is_chunked_and_short_requests_get_in():
    s = Scheduler(BlockAllocator(100), block_size=16, token_budget=64, max_num_seqs=8)
    long = req("long", 1000)
    s.add(long)
    first = s.schedule()
    assert [(c.request.request_id, c.num_tokens) for c in first] == [("long", 64)]
    advance(first)
    s.add(req("short", 10))
    step = s.schedule()
    got = {c.request.request_id: c.num_tokens for c in step}
    assert got == {"long": 54, "short": 10}          # capped at 32, then topped up with what was left
    assert sum(got.values()) <= 64
    advance(step)
    step = s.schedule()                               # the short one decodes while the long one prefills
    got = {c.request.request_id: (c.num_tokens, c.sample) for c in step}
    assert got == {"short": (1, True), "long": (63, False)}


def test_admission_waits_for_kv_blocks_and_frees_them():
    alloc = BlockAllocator(10)
    s = Scheduler(alloc, block_size=16, token_budget=512, max_num_seqs=8)
    a, b = req("a", 100, max_tokens=20), req("b", 100, max_tokens=20)   # 8 blocks each
    s.add(a)
    s.add(b)
    step = s.schedule()
    assert [c.request.request_id for c in step] == ["a"] and list(s.waiting) == [b]
    s.finish(a, "length")
    assert alloc.num_free == 10
    assert [c.request.request_id for c in s.schedule()] == ["b"]


def test_blocks_are_contiguous_when_possible():
    alloc = BlockAllocator(8)
    x = alloc.allocate(3)
    assert (x, alloc.allocate(2)) == ([0, 1, 2], [3, 4])
    alloc.free(x)                                   # free: 0 1 2 5 6 7
    assert alloc.allocate(3) == [0, 1, 2]           # a consecutive run when one exists
    alloc.free([0, 1, 2])
    assert alloc.allocate(4) == [0, 1, 2, 5]        # else scattered (read through a gather)


def test_prefill_beside_decodes_is_capped():
    """While a request decodes, a long prefill advances by a quarter of the budget per step."""
    s = Scheduler(BlockAllocator(400), block_size=16, token_budget=2048, max_num_seqs=8)
    short = req("short", 10, max_tokens=50)
    s.add(short)
    advance(s.schedule())                     # short prefilled, sampled its first token
    s.add(req("long", 5000))
    step = s.schedule()
    got = {c.request.request_id: c.num_tokens for c in step}
    assert got == {"short": 1, "long": 512}


def _ends(s, reqs, steps=200):
    """Run the scheduler to the end of every prefill: request id -> prefill chunk ends."""
    ends = {r.request_id: [] for r in reqs}
    for _ in range(steps):
        step = s.schedule()
        if not step:
            break
        for c in step:
            if c.request.is_prefill:
                ends[c.request.request_id].append(c.request.num_computed_tokens + c.num_tokens)
        advance(step)
        for r in list(s.running):
            if len(r.output_token_ids) >= r.params.max_tokens:
                s.finish(r, "length")
    return ends


def test_sparse_chunks_end_on_the_grid_whatever_runs_beside():
    """From aligned_from on, prefill chunks end at multiples of the budget or at the prompt's end,
    alone, beside other prefills (halved caps), and beside decodes (quarter caps)."""
    def run(names_sizes, aligned_from=300):
        s = Scheduler(BlockAllocator(400), block_size=16, token_budget=256, max_num_seqs=8,
                      aligned_from=aligned_from)
        reqs = [req(n, k, max_tokens=30) for n, k in names_sizes]
        for r in reqs:
            s.add(r)
        return _ends(s, reqs)

    alone = run([("a", 1000)])["a"]
    assert alone == [256, 512, 768, 1000]
    crowd = run([("d", 20), ("b", 530), ("a", 1000), ("c", 611)])
    sparse_ends = [e for e in crowd["a"] if e >= 300]
    assert sparse_ends == [512, 768, 1000]             # the same sparse chunks as alone
    for name, total in (("b", 530), ("c", 611)):
        assert all(e % 256 == 0 or e == total for e in crowd[name] if e >= 300), crowd[name]
    free = run([("d", 20), ("b", 530), ("a", 1000)], aligned_from=None)
    assert any(e % 256 and e >= 300 for e in free["a"] + free["b"])   # without: off the grid


def test_sparse_chunk_beside_decodes_takes_a_whole_chunk():
    s = Scheduler(BlockAllocator(800), block_size=16, token_budget=2048, max_num_seqs=8,
                  aligned_from=4096)
    short = req("short", 10, max_tokens=50)
    s.add(short)
    advance(s.schedule())
    s.add(req("long", 9000))
    step = s.schedule()
    assert {c.request.request_id: c.num_tokens for c in step} == {"short": 1, "long": 512}
    advance(step)                                      # dense part: capped beside decodes, as before
    ends, long = [], s.running[-1]
    for _ in range(40):
        step = s.schedule()
        ends += [long.num_computed_tokens + c.num_tokens for c in step if c.request is long]
        advance(step)
        if not long.is_prefill:
            break
    sparse = [e for e in ends if e >= 4096]
    assert sparse == [4096, 6144, 8192, 9000]          # whole grid chunks, decodes or not


@pytest.mark.parametrize("aligned_from, tail, expect", [
    (None, 0, 1008),   # dense: every full block of the shared prefix
    (64, 0, 768),      # sparse: reuse stops on the grid line below the shared prefix
    (64, 300, 512),    # the first prompt's tail started in chunk [512, 768): not shared
    (2000, 300, 1008), # a prompt too short to run sparse: every full block, its tail too
    (1050, 0, 1008),   # the chunk after the reused blocks ends before the sparse part: dense
    (1010, 0, 768),    # ... and here it would be sparse: back to the grid line
])
def test_prefix_reuse_stops_on_the_grid_and_before_the_dense_tail(aligned_from, tail, expect):
    alloc = BlockAllocator(200)
    s = Scheduler(alloc, block_size=16, token_budget=256, max_num_seqs=8, aligned_from=aligned_from,
                  tail_dependent=tail)
    first = req("first", 1020)
    s.add(first)
    _ends(s, [first])
    second = req("second", 1100)                          # shares the first 1020 tokens
    s.add(second)
    s.schedule()
    assert second.num_cached_tokens == expect
