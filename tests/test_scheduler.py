"""Scheduler: budgets, decodes first, long prefills do not keep short requests out, KV admission."""
from __future__ import annotations

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
