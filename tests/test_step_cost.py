"""The step cost model and prefill sized to a latency target: layered prefill (a chunk run a few
half-layer units per step), token slices, and the rules that keep a long prompt advancing."""
from __future__ import annotations

import pytest

from turboctx.engine.request import Request
from turboctx.engine.sampling_params import SamplingParams
from turboctx.engine.scheduler import Scheduler
from turboctx.engine.step_cost import StepCostModel, StepWork, largest_fitting
from turboctx.kv_cache import BlockAllocator

RATES = (0.010, 0.002, 1e-6, 1e-5, 0.03)    # fixed s, s per token, query-key pair, key read, pass


def seconds(w: StepWork) -> float:
    return sum(r * f for r, f in zip(RATES, w.features))


def test_the_fit_recovers_the_rates_of_steps_of_every_size():
    m = StepCostModel()
    assert m.predict(StepWork(10, 10)) is None
    for t, p, k, f in [(1, 300, 0, 1), (4, 2000, 0, 1), (64, 5000, 80, 1.25), (256, 70000, 300, 1),
                       (2048, 3e6, 2048, 0.5), (512, 9e6, 18000, 1.1), (8, 1e5, 0, 1),
                       (300, 4e6, 9e4, 0.2), (40, 3e5, 900, 1.05)]:
        m.observe(StepWork(t, p, k, f), seconds(StepWork(t, p, k, f)))
    for w in (StepWork(100, 1e6, 5000, 1), StepWork(3, 900, 0, 1), StepWork(4000, 2e7, 1e5, 0.3)):
        assert m.predict(w) == pytest.approx(seconds(w), rel=1e-6)


def test_the_fit_never_gives_a_negative_rate():
    m = StepCostModel()
    for t, p, s in [(1, 100, 0.05), (100, 1e6, 0.06), (200, 10, 0.07), (400, 5e5, 0.09)]:
        m.observe(StepWork(t, p), s)
    coef = m._fit()
    assert (coef >= 0).all()
    assert m.predict(StepWork(0, 0)) > 0


def test_work_far_beyond_what_was_measured_is_not_trusted():
    m = StepCostModel()
    m.observe(StepWork(4, 1000), 0.05)
    assert m.trusted(StepWork(60, 1000)) and not m.trusted(StepWork(1000, 1000))
    m.observe(StepWork(1000, 1e6), 0.5)
    assert m.trusted(StepWork(1000, 1e6))


@pytest.mark.parametrize("lo, hi, cut, expect", [(1, 100, 37, 37), (1, 100, 500, 100),
                                                 (5, 100, 2, 5), (1, 1, 0, 1), (3, 9, 3, 3)])
def test_largest_fitting(lo, hi, cut, expect):
    assert largest_fitting(lo, hi, lambda n: n <= cut) == expect


class ExactCost(StepCostModel):
    """Knows the true rates; learns nothing (the scheduler's decisions are then exact)."""

    def observe(self, work, seconds):
        pass

    def predict(self, work):
        return seconds(work)

    def trusted(self, work, growth=4.0):
        return True


def req(rid, n, max_tokens=4):
    return Request(rid, None, list(range(n)), SamplingParams(max_tokens=max_tokens), [])


def paced(target_s, token_budget=2048, num_layers=4, **kw):
    kw.setdefault("units_per_step", 3)
    s = Scheduler(BlockAllocator(800), block_size=16, token_budget=token_budget, max_num_seqs=8,
                  num_layers=num_layers, max_itl_s=target_s, attention_share=0.25, **kw)
    s.step_cost = ExactCost()
    return s


def start_with_a_decode(s):
    short = req("short", 10, max_tokens=500)
    s.add(short)
    s.advance(s.schedule())                    # short prefilled; it decodes from now on
    short.output_token_ids.append(7)
    return short


def step_seconds(s, step) -> float:
    """The true time of a scheduled step (before it advances its requests): whole chunks run in
    one forward, each layered chunk in its own."""
    w = StepWork(passes=1.0 if any(c.units is None for c in step) else 0.0)
    for c in step:
        w = w + s.chunk_work(c)
    return seconds(w)


def run_until_prefilled(s, long, steps=400):
    seen, s.times = [], []
    for _ in range(steps):
        step = s.schedule()
        seen.append(step)
        s.times.append(step_seconds(s, step))
        s.advance(step)
        for c in step:
            if c.sample:
                c.request.output_token_ids.append(7)
        if not long.is_prefill:
            return seen
    raise AssertionError("the long prompt never finished its prefill")


def test_a_chunk_beside_decodes_runs_in_units_and_completes_once():
    # one unit of the 2048-token chunk: attention 0.25/4 or MLP 0.75/4 of 2048 tokens' 4.1 s
    s = paced(target_s=1.0, units_per_step=1)
    start_with_a_decode(s)
    long = req("long", 2048)
    s.add(long)
    steps = run_until_prefilled(s, long)
    units = [c.units for step in steps for c in step if c.request is long]
    assert units[0][0] == 0 and units[-1][1] == 8 and len(units) > 1
    for a, b in zip(units, units[1:]):          # each chunk's units in order, none skipped
        assert b[0] == (0 if a[1] == 8 else a[1])
    assert max(s.times) <= 1.0 + 1e-9                                 # every step met the target
    assert sum(s.times) / len(s.times) > 0.6                         # and the steps are well filled
    samples = [c.sample for step in steps for c in step if c.request is long]
    assert samples == [False] * (len(units) - 1) + [True]
    assert long.num_computed_tokens == 2048 and long.layered is None


def test_a_clocked_scheduler_offers_every_unit_left_with_the_step_limit():
    """Clocked (the CPU): the runner's clock ends the units, so the step's layered chunk is
    offered all it has left; without decodes beside it there is no limit."""
    s = paced(target_s=1.0, units_per_step=1, clocked=True)
    start_with_a_decode(s)
    long = req("long", 2048)
    s.add(long)
    step = s.schedule()
    c = next(c for c in step if c.request is long)
    assert c.units == (0, 8) and c.time_limit_s == s._step_limit(StepWork(1, 11, passes=1.0), 1)
    c.units, c.sample = (0, 3), False            # what the runner sets when it stops at unit 3
    s.advance(step)
    assert long.layered == (2048, 3)
    again = next(c for c in s.schedule() if c.request is long)
    assert again.units == (3, 8) and again.time_limit_s is not None
    unpaced = Scheduler(BlockAllocator(800), block_size=16, token_budget=2048, max_num_seqs=8,
                        num_layers=4, clocked=True)
    unpaced.add(req("alone", 2048))
    assert all(c.time_limit_s is None for c in unpaced.schedule())


def test_a_layered_chunk_finishes_in_one_step_once_no_decode_runs():
    s = paced(target_s=1.0)
    short = start_with_a_decode(s)
    long = req("long", 2048)
    s.add(long)
    s.advance(s.schedule())
    assert long.layered is not None and long.num_computed_tokens == 0
    s.finish(short, "length")
    step = s.schedule()
    assert [(c.request.request_id, c.units[1]) for c in step] == [("long", 8)]


def test_a_chunk_none_of_whose_units_fits_still_runs_one_unit_per_step():
    s = paced(target_s=0.05)         # no unit of the chunk fits beside the decode
    start_with_a_decode(s)
    long = req("long", 5000)
    s.add(long)
    steps = run_until_prefilled(s, long, steps=2000)
    units = [c.units for step in steps for c in step if c.request is long]
    assert all(b - a == 1 for a, b in units)
    assert {c.num_tokens for step in steps for c in step if c.request is long} <= {682, 5000 - 7 * 682}


class SlowerCost(ExactCost):
    def predict(self, work):
        return 3.7 * seconds(work)


def test_chunk_sizes_do_not_depend_on_timing():
    """Only how many units a step runs follows the measured speed; chunk ends do not, so a prompt's
    output is the same on a fast or a slow machine."""
    def ends(cost):
        s = paced(target_s=0.5)
        s.step_cost = cost
        start_with_a_decode(s)
        long = req("long", 5000)
        s.add(long)
        steps = run_until_prefilled(s, long, steps=2000)
        return [c.num_tokens for step in steps for c in step if c.request is long and
                (c.units is None or c.units[1] == 8)], len(steps)
    fast, slow = ends(ExactCost()), ends(SlowerCost())
    assert fast[0] == slow[0] and fast[1] < slow[1]


def test_a_grid_chunk_with_no_unit_that_fits_runs_one_unit_per_step():
    s = paced(target_s=0.05, aligned_from=1)       # every chunk on the grid
    start_with_a_decode(s)
    long = req("long", 2048)
    s.add(long)
    steps = run_until_prefilled(s, long)
    units = [c.units for step in steps for c in step if c.request is long]
    assert units == [(u, u + 1) for u in range(8)]


def test_decodes_that_alone_exceed_the_target_still_leave_the_prefill_a_share():
    s = paced(target_s=0.001)
    start_with_a_decode(s)
    long = req("long", 4000)
    s.add(long)
    run_until_prefilled(s, long, steps=2000)


def test_with_one_unit_per_step_a_free_chunk_keeps_its_size_when_a_unit_fits():
    s = paced(target_s=1.0, units_per_step=1)
    start_with_a_decode(s)
    long = req("long", 2048)
    s.add(long)
    step = s.schedule()
    c = next(c for c in step if c.request is long)
    assert c.num_tokens == 2048 and c.units == (0, 1)      # its own forward: the whole budget


def test_the_decodes_own_time_is_what_steps_of_them_alone_took():
    """The CPU's target is a multiple of the decodes' own time: that time is measured on steps of
    as many decodes alone (a fitted line missed small batches by 30%), the model's otherwise."""
    s = Scheduler(BlockAllocator(800), block_size=16, token_budget=2048, max_num_seqs=8,
                  num_layers=4, itl_decode_factor=7.0, attention_share=0.25, units_per_step=3)
    s.step_cost = ExactCost()
    start_with_a_decode(s)
    decode_only = s.schedule()
    decode_alone = step_seconds(s, decode_only)
    long = req("long", 5000)
    s.add(long)
    guessed = s.schedule()                       # nothing measured yet: 7x the model's guess
    assert step_seconds(s, guessed) <= 7 * decode_alone + 1e-9
    s.finish(long, "abort")
    for _ in range(3):                           # the decode measured 3x slower than the model says
        s.observe_step(decode_only, 3 * decode_alone)
    again = req("again", 5000)
    s.add(again)
    step = s.schedule()
    assert 7 * decode_alone < step_seconds(s, step) <= 21 * decode_alone + 1e-9
