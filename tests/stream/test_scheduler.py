"""Batch release policy as pure functions."""

from legato.stream.scheduler import DEADLINE_SAFETY_S, StepTimeModel, decide


def test_release_rules():
    kw = dict(earliest_deadline=1.0, now=0.0, step_s=0.1)
    assert decide(ready=0, active=3, max_batch=4, **kw).reason == "idle"
    assert decide(ready=4, active=9, max_batch=4, **kw).reason == "full"
    assert decide(ready=3, active=3, max_batch=8, **kw).reason == "all_ready"
    waiting = decide(ready=2, active=5, max_batch=8, **kw)
    assert not waiting.run and abs(waiting.wait_s - (1.0 - 0.1 - DEADLINE_SAFETY_S)) < 1e-9
    late = decide(ready=2, active=5, max_batch=8, earliest_deadline=1.0, now=0.95, step_s=0.1)
    assert late.run and late.reason == "deadline"
    # Time the later stages need counts against the slack too.
    assert decide(ready=2, active=5, max_batch=8, earliest_deadline=1.0, now=0.5, step_s=0.1, downstream_s=0.45).run


def test_step_time_model_interpolates_and_extrapolates():
    m = StepTimeModel()
    assert m.estimate(4) == 0.0
    m.record(1, 0.010)
    m.record(8, 0.024)
    assert abs(m.estimate(4) - (0.010 + 0.014 * 3 / 7)) < 1e-12
    assert abs(m.estimate(16) - 0.024 * 2 ** 0.5) < 1e-12  # sublinear beyond the largest batch seen
    m.record(8, 0.034)  # smoothed, not replaced
    assert 0.024 < m.estimate(8) < 0.034
