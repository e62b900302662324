"""Prefix caching: the allocator's references, hashes and LRU; reuse through the whole engine gives
the same tokens and logprobs as a cold engine."""
from __future__ import annotations

import pytest
import torch

from hf_reference import make_tiny_hf
from turboctx import LLM, SamplingParams
from turboctx.kv_cache import BlockAllocator, block_hashes

BS = 16      # block size of the engine tests: prompts of a few hundred tokens span many blocks
TOL = 1e-4   # fp32 rounding: on this model a cold engine with other chunk sizes differs by ~2e-5


# -- allocator ----------------------------------------------------------------------------------
def test_block_hashes_are_chained():
    a = block_hashes(list(range(40)), 8)
    b = block_hashes(list(range(16)) + [99] + list(range(17, 40)), 8)
    assert len(a) == 5 and a[:2] == b[:2] and all(x != y for x, y in zip(a[2:], b[2:]))
    assert block_hashes(list(range(40)), 8, salt=b"x")[0] != a[0]
    assert block_hashes(list(range(7)), 8) == []


def test_refcounts_match_and_reuse():
    alloc = BlockAllocator(8)
    h = block_hashes(list(range(32)), 8)
    x = alloc.allocate(5)
    assert x == [0, 1, 2, 3, 4]
    for b, hb in zip(x, h[:3]):
        alloc.register(b, hb)
    assert alloc.match(h) == [0, 1, 2] and alloc.num_cached == 3
    y = alloc.allocate(4, alloc.match(h[:2]))         # shares 0, 1 while x still runs
    assert y[:2] == [0, 1] and alloc.ref_count(0) == 2 and alloc.num_free == 1
    alloc.free(x)
    assert alloc.ref_count(0) == 1 and alloc.ref_count(2) == 0
    assert alloc.num_free == 4                        # 3, 4, 7 free; 2 cached in the LRU, allocatable
    alloc.free(y)
    assert alloc.num_free == 8 and alloc.match(h) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="freed twice"):
        alloc.free([0])


def test_new_blocks_follow_the_matched_run_when_free():
    alloc = BlockAllocator(12)
    h = block_hashes(list(range(24)), 8)
    x = alloc.allocate(3)
    for b, hb in zip(x, h):
        alloc.register(b, hb)
    alloc.free(x)
    table = alloc.allocate(6, alloc.match(h))         # 0 1 2 reused, 3 4 5 new: one run
    assert table == [0, 1, 2, 3, 4, 5]
    assert alloc.allocate(2) == [6, 7]                # no reuse: a consecutive run as before


def test_lru_eviction_only_when_the_pool_is_empty():
    alloc = BlockAllocator(6)
    ha = block_hashes([1] * 16, 8)
    hb = block_hashes([2] * 16, 8)
    a, b = alloc.allocate(2), alloc.allocate(2)
    for blocks, hs in ((a, ha), (b, hb)):
        for blk, hh in zip(blocks, hs):
            alloc.register(blk, hh)
    alloc.free(a)                                     # a's prefix is the least recently used
    alloc.free(b)
    assert alloc.allocate(2) == [4, 5]                # the free pool first: both prefixes stay
    assert alloc.match(ha) == a and alloc.match(hb) == b
    assert alloc.can_allocate(2) and not alloc.can_allocate(5)
    assert alloc.allocate(1) == [a[1]]                # evicts a's tail first, its head stays
    assert alloc.match(ha) == a[:1] and alloc.match(hb) == b
    assert alloc.num_free == 3 and alloc.can_allocate(3, alloc.match(hb))
    assert not alloc.can_allocate(4, alloc.match(hb))   # reused, b's blocks leave the LRU
    assert alloc.reset_prefix_cache() == 3 and alloc.num_cached == 0 and alloc.num_free == 3


def test_register_keeps_the_first_copy_of_a_prefix():
    alloc = BlockAllocator(4)
    h = block_hashes([5] * 8, 8)[0]
    a, b = alloc.allocate(1), alloc.allocate(1)
    alloc.register(a[0], h)
    alloc.register(b[0], h)                           # computed concurrently: not cached twice
    alloc.free(b)
    assert alloc.num_cached == 1 and alloc.match([h]) == a
    with pytest.raises(RuntimeError, match="not in use"):
        alloc.register(b[0], h)


# -- engine -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefix")
    make_tiny_hf("qwen2-gqa7-bias-untied", d)
    return str(d)


def _ids(n, seed):
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _llm(folder, **kw):
    return LLM(folder, device="cpu", dtype="float32", block_size=BS, max_num_batched_tokens=128, **kw)


SP = SamplingParams(max_tokens=12, temperature=0, logprobs=5, ignore_eos=True)


def _same(a, b):
    assert a.token_ids == b.token_ids
    worst = max(abs(x[t] - y[t]) for x, y in zip(a.logprobs, b.logprobs) for t in x)
    assert worst < TOL, worst


@pytest.fixture(scope="module")
def cold(folder):
    return _llm(folder, enable_prefix_caching=False)


def test_same_prompt_twice_reuses_its_full_blocks(folder, cold):
    prompt = _ids(300, 0)
    ref = cold.generate(prompt, SP)[0]
    llm = _llm(folder)
    first, second = llm.generate(prompt, SP)[0], llm.generate(prompt, SP)[0]
    assert first.metrics.num_cached_tokens == 0
    assert second.metrics.num_cached_tokens == (300 - 1) // BS * BS
    _same(first, ref)
    _same(second, ref)
    exact = _ids(2 * BS, 1)                           # a prompt of whole blocks: its last one runs
    llm.generate(exact, SP)
    assert llm.generate(exact, SP)[0].metrics.num_cached_tokens == BS


def test_shared_document_different_questions(folder, cold):
    doc = _ids(250, 2)
    questions = [_ids(n, 10 + n) for n in (9, 30, 1)]
    llm = _llm(folder)
    for i, q in enumerate(questions):
        out = llm.generate(doc + q, SP)[0]
        assert out.metrics.num_cached_tokens == (0 if i == 0 else 250 // BS * BS)
        _same(out, cold.generate(doc + q, SP)[0])
    again = llm.generate([doc + questions[1], doc + _ids(40, 50)], SP)   # batched, both reuse
    assert [o.metrics.num_cached_tokens for o in again] == [(250 + 30 - 1) // BS * BS, 250 // BS * BS]
    _same(again[1], cold.generate(doc + _ids(40, 50), SP)[0])


def test_eviction_under_a_small_cache_stays_correct(folder, cold):
    llm = _llm(folder, kv_cache_tokens=24 * BS, max_model_len=24 * BS)   # room for two of these
    docs = [_ids(150, 20 + i) for i in range(3)]
    cached = []
    for rnd in range(2):
        for i, d in enumerate(docs):
            prompt = d + _ids(5, 100 + 3 * rnd + i)
            out = llm.generate(prompt, SP)[0]
            _same(out, cold.generate(prompt, SP)[0])
            cached.append(out.metrics.num_cached_tokens)
        assert llm.engine.kv_cache_usage().used_blocks == 0
    assert cached[:3] == [0, 0, 0]
    assert cached[3] == 4 * BS              # docs[2] evicted docs[0]'s tail (5 of 9 blocks) only


def test_prompt_logprobs_requests_compute_the_whole_prompt(folder, cold):
    prompt = _ids(200, 3)
    sp = SamplingParams(max_tokens=4, temperature=0, logprobs=5, prompt_logprobs=3, ignore_eos=True)
    llm = _llm(folder)
    llm.generate(prompt, SP)
    out = llm.generate(prompt, sp)[0]
    ref = cold.generate(prompt, sp)[0]
    assert out.metrics.num_cached_tokens == 0 and len(out.prompt_logprobs) == 200
    for a, b in zip(out.prompt_logprobs[1:], ref.prompt_logprobs[1:]):
        assert max(abs(a[t] - b[t]) for t in a) < TOL
    assert llm.generate(prompt, SP)[0].metrics.num_cached_tokens == 192   # its blocks were shared


def test_abort_drops_references_and_keeps_what_was_computed(folder, cold):
    llm = _llm(folder)
    eng = llm.engine
    prompt = _ids(400, 4)
    req = eng.make_request(prompt, SP)
    eng.add_request(req)
    eng.step()                                        # one 128-token chunk of the prefill
    assert req.num_computed_tokens == 128
    eng.abort_request(req.request_id)
    a = eng.allocator
    assert a.num_free == a.num_blocks and all(a.ref_count(b) == 0 for b in range(a.num_blocks))
    out = llm.generate(prompt, SP)[0]
    assert out.metrics.num_cached_tokens == 128
    _same(out, cold.generate(prompt, SP)[0])


def test_dca_per_position_yarn_reuses_any_prefix(folder):
    """YaRN scales each query by its own position, so a cached prefix is valid under any prompt
    length."""
    opts = dict(dca=True, dca_chunk_size=128, dca_local_size=16, dca_original_max_position_embeddings=128)
    cold_dca, llm = _llm(folder, enable_prefix_caching=False, **opts), _llm(folder, **opts)
    doc = _ids(300, 5)
    llm.generate(doc + _ids(10, 6), SP)
    prompt = doc + _ids(20, 8)
    out = llm.generate(prompt, SP)[0]
    assert out.metrics.num_cached_tokens == 288
    _same(out, cold_dca.generate(prompt, SP)[0])
