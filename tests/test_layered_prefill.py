"""Layered prefill through the engine: a chunk run a few half-layer units per step beside decodes
gives the prompt the output it has alone (dense, sparse, DCA), estimates each sparse pattern once,
and the latency target's options are checked."""
from __future__ import annotations

import pytest
import torch

from turboctx import LLM
from turboctx.engine.sampling_params import SamplingParams
from turboctx.engine.step_cost import StepWork
from turboctx.errors import InvalidRequestError

from hf_reference import make_tiny_hf
from test_step_cost import ExactCost, seconds

PROMPT = 700          # prompt tokens: chunks [0, 256), [256, 512), [512, 700)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("layered")
    make_tiny_hf("qwen2-gqa7-bias-untied", d, layers=3)
    return d


SETUPS = {
    "dense": {},
    "sparse": dict(attention="sparse", sparse_threshold=300, sparse_dense_tail=64),
    "dca+sparse": dict(attention="sparse", sparse_threshold=300, dca=True, dca_chunk_size=512,
                       dca_local_size=64),
}


def _llm(folder, **kw):
    return LLM(str(folder), device="cpu", max_model_len=2048, max_num_batched_tokens=256,
               enable_prefix_caching=False, **kw)


def _run(engine, requests):
    """Steps until every request is done; the steps' chunks of the last request."""
    for r in requests:
        engine.add_request(r)
    long, chunks = requests[-1], []
    while engine.has_unfinished():
        sched = engine.scheduler.schedule()
        chunks += [c for c in sched if c.request is long]
        engine.update(sched, engine.runner.execute(sched))
    return chunks


@pytest.mark.parametrize("setup", list(SETUPS))
def test_layered_chunks_compute_exactly_what_whole_chunks_do(folder, setup):
    """The same chunks, each run in pieces of three units: bit-identical logprobs."""
    ids = torch.randint(3, 512, (PROMPT,), generator=torch.Generator().manual_seed(3)).tolist()
    params = SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=3, logprobs=3,
                            ignore_eos=True)
    whole_llm, layered_llm = _llm(folder, **SETUPS[setup]), _llm(folder, **SETUPS[setup])
    whole = whole_llm.engine.make_request(ids, params)
    _run(whole_llm.engine, [whole])
    s = layered_llm.engine.scheduler
    schedule = s.schedule

    def in_pieces():
        out = schedule()
        for i, c in enumerate(out):
            if c.units is None and c.request.is_prefill:
                out[i] = s._layered(c.request, c.num_tokens, 0, 3)
        return out
    s.schedule = in_pieces
    layered = layered_llm.engine.make_request(ids, params)
    chunks = _run(layered_llm.engine, [layered])
    assert [c.units[0] for c in chunks if c.units][:3] == [0, 3, 0]
    assert layered.output_token_ids == whole.output_token_ids
    assert layered.prompt_logprobs == whole.prompt_logprobs
    assert layered.logprobs == whole.logprobs


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_layered_prompt_gives_what_it_gives_alone(folder, setup):
    ids = torch.randint(3, 512, (PROMPT,), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(max_tokens=4, temperature=0, prompt_logprobs=2, logprobs=2,
                            ignore_eos=True)
    alone_llm = _llm(folder, **SETUPS[setup])
    alone_req = alone_llm.engine.make_request(ids, params)
    _run(alone_llm.engine, [alone_req])

    llm = _llm(folder, **SETUPS[setup])
    s = llm.engine.scheduler
    s.step_cost, s.itl_decode_factor = ExactCost(), None
    s.clocked = False                              # the exact model decides, not the clock
    whole = StepWork(256, 256 * 600)               # a later chunk, whole: it must not fit
    s.max_itl_s = 0.6 * seconds(whole)
    short = llm.engine.make_request([5] * 8, SamplingParams(max_tokens=60, ignore_eos=True))
    long = llm.engine.make_request(ids, params)
    chunks = _run(llm.engine, [short, long])

    layered = [c for c in chunks if c.units is not None]
    assert layered and len({c.num_tokens for c in layered}) >= 1
    assert long.output_token_ids == alone_req.output_token_ids
    for a, b in zip(long.prompt_logprobs[1:], alone_req.prompt_logprobs[1:]):
        assert a.keys() == b.keys()
        assert max(abs(a[t] - b[t]) for t in a) < 1e-3      # chunk ends differ below the grid
    if llm.engine.config.sparse is not None:        # each (chunk, layer) pattern estimated once
        assert llm.engine.sparse_stats()["sparse_chunk_layers"] == \
            alone_llm.engine.sparse_stats()["sparse_chunk_layers"]


@pytest.mark.parametrize("setup", list(SETUPS))
def test_clocked_units_stop_at_the_step_time_limit_and_change_nothing(folder, setup):
    """On the CPU the runner's clock ends a step's units: with units of ~20 ms and a 70 ms
    target, steps run a few units each (never all six of a chunk once it is measured), none goes
    past the limit by more than a unit, and the prompt gives bit for bit what it gives alone."""
    import time
    ids = torch.randint(3, 512, (PROMPT,), generator=torch.Generator().manual_seed(5)).tolist()
    params = SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=2, ignore_eos=True)
    alone_llm = _llm(folder, **SETUPS[setup])
    alone = alone_llm.engine.make_request(ids, params)
    _run(alone_llm.engine, [alone])

    llm = _llm(folder, **SETUPS[setup])
    e, s = llm.engine, llm.engine.scheduler
    assert s.clocked
    s.itl_decode_factor, s.max_itl_s, unit_s = None, 0.07, 0.02
    model, run_units = e.runner.model, e.runner.model.run_units

    def slow_units(x, batch, first, last):
        time.sleep(unit_s * (last - first))
        return run_units(x, batch, first, last)
    model.run_units = slow_units
    short = e.make_request([5] * 8, SamplingParams(max_tokens=200, ignore_eos=True))
    e.add_request(short)
    for _ in range(3):
        e.step()
    long = e.make_request(ids, params)
    e.add_request(long)
    steps = []
    while not long.finished:
        sched = s.schedule()
        offered = [(c.units, c.time_limit_s) for c in sched if c.request is long]
        t = time.perf_counter()
        e.update(sched, e.runner.execute(sched))
        ran = [c.units for c in sched if c.request is long]
        steps.append((offered, ran, time.perf_counter() - t))
    e.abort_request(short.request_id)
    layered = [(o[0], r[0], sec) for o, r, sec in steps if o and o[0][0] is not None]
    assert layered and all(limit is not None for (_, limit), _, _ in layered)
    assert all(ran[1] > ran[0] for _, ran, _ in layered)                 # a unit at least
    assert any(ran[1] < units[1] for (units, _), ran, _ in layered)      # the clock stopped some
    limit = max(lim for (_, lim), _, _ in layered)
    assert all(sec <= limit + 2 * unit_s for _, ran, sec in layered if ran[1] - ran[0] > 1), steps
    assert long.output_token_ids == alone.output_token_ids
    assert long.prompt_logprobs == alone.prompt_logprobs


def test_an_aborted_layered_prompt_leaves_nothing_behind(folder):
    llm = _llm(folder)
    s, e = llm.engine.scheduler, llm.engine
    s.step_cost, s.itl_decode_factor = ExactCost(), None
    s.clocked = False                              # the exact model decides, not the clock
    s.max_itl_s = 0.6 * seconds(StepWork(256, 256 * 128))
    short = e.make_request([5] * 8, SamplingParams(max_tokens=40, ignore_eos=True))
    long = e.make_request([3 + i % 500 for i in range(600)], SamplingParams(max_tokens=2))
    e.add_request(short)
    e.step()
    e.add_request(long)
    while long.layered is None:
        e.step()
    e.abort_request(long.request_id)
    e.step()
    assert not e.runner._layered
    out = e.make_request([3 + i % 500 for i in range(600)], SamplingParams(max_tokens=2, temperature=0))
    e.add_request(out)
    while e.has_unfinished():
        e.step()
    assert len(out.output_token_ids) == 2


@pytest.mark.parametrize("value, words", [(0, "max_itl_ms=0 must be above 0"),
                                          (-5, "must be above 0"),
                                          ("fast", "must be a number")])
def test_a_bad_latency_target_is_refused(folder, value, words):
    with pytest.raises(InvalidRequestError, match=words):
        _llm(folder, max_itl_ms=value)


def test_a_latency_target_no_step_can_meet_is_refused_at_start(folder):
    with pytest.raises(InvalidRequestError, match=r"max_itl_ms=1e-06 cannot be met: the smallest "
                                                  r"step \(one decode token\) takes [0-9.]+ ms"):
        _llm(folder, max_itl_ms=1e-6)
    assert _llm(folder, max_itl_ms=10_000).engine.scheduler.max_itl_s == 10.0


def _beside_a_decode(folder, ids, params, overlap: bool, **kw):
    """The long prompt's chunks sized by the exact cost model beside one decoding request."""
    llm = LLM(str(folder), **kw)
    llm.engine.runner.overlap_streams = overlap
    s = llm.engine.scheduler
    s.step_cost, s.itl_decode_factor = ExactCost(), None
    s.max_itl_s = 0.6 * seconds(StepWork(256, 256 * 600))
    short = llm.engine.make_request([5] * 8, SamplingParams(max_tokens=80, ignore_eos=True))
    llm.engine.add_request(short)
    llm.engine.step()
    long = llm.engine.make_request(ids, params)
    chunks = _run(llm.engine, [long])
    return llm, long, chunks, short


@pytest.mark.gpu
@pytest.mark.parametrize("setup", ["dense", "dca+sparse"])
def test_layered_prefill_beside_graph_decodes_on_cuda(folder, setup):
    """On CUDA the decode graph runs on a stream of its own beside the step's prefill (layered
    units or a chunk): both give bit for bit what they give run one after the other."""
    ids = torch.randint(3, 512, (PROMPT,), generator=torch.Generator().manual_seed(2)).tolist()
    params = SamplingParams(max_tokens=4, temperature=0, prompt_logprobs=2, ignore_eos=True)
    kw = dict(device="cuda", max_model_len=2048, max_num_batched_tokens=256,
              enable_prefix_caching=False, **SETUPS[setup])
    llm, long, chunks, short = _beside_a_decode(folder, ids, params, overlap=True, **kw)
    assert any(c.units is not None for c in chunks)
    assert llm.engine.captured_graph_sizes()             # the short request decoded in a graph
    _, serial, serial_chunks, serial_short = _beside_a_decode(folder, ids, params, overlap=False, **kw)
    assert [(c.num_tokens, c.units) for c in chunks] == [(c.num_tokens, c.units) for c in serial_chunks]
    assert long.output_token_ids == serial.output_token_ids
    assert long.prompt_logprobs == serial.prompt_logprobs
    assert short.output_token_ids == serial_short.output_token_ids
