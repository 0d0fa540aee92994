"""Reporter throttling, cancel tokens and the lockstep generator adapter."""

import time

import pytest

from ntk_studio.core import CancelToken, Cancelled, Reporter
from ntk_studio.core.progress import iterate


def test_reporter_throttles_to_the_rate_but_forced_events_always_pass():
    seen = []
    rep = Reporter(seen.append, max_rate=20)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.25:
        rep.emit("work", 0.5)
    # 0.25 s at ≤ 20 events/s: at most 6 (the first is immediate).
    assert 1 <= len(seen) <= 6
    rep.emit("done", 1.0, force=True)
    assert seen[-1].stage == "done" and seen[-1].progress == 1.0
    assert all(0.0 <= e.progress <= 1.0 for e in seen)


def test_progress_is_clamped_and_matvecs_default_to_the_counter():
    seen = []
    rep = Reporter(seen.append)
    rep.matvecs = 7
    rep.emit("solve", 1.7, force=True)
    assert seen[0].progress == 1.0 and seen[0].matvecs == 7


def test_check_raises_after_cancel():
    token = CancelToken()
    rep = Reporter(cancel=token)
    rep.check()
    token.cancel()
    with pytest.raises(Cancelled):
        rep.check()


def test_iterate_yields_events_then_returns_the_result():
    def work(rep):
        for i in range(3):
            rep.emit("step", i / 3, force=True)
        return "result"

    gen = iterate(work)
    stages = []
    with pytest.raises(StopIteration) as stop:
        while True:
            stages.append(next(gen).progress)
    assert stages == [0.0, 1 / 3, 2 / 3]
    assert stop.value.value == "result"


def test_iterate_reraises_the_work_error_in_the_consumer():
    def work(rep):
        rep.emit("step", 0.0, force=True)
        raise ValueError("bad input")

    gen = iterate(work)
    next(gen)
    with pytest.raises(ValueError, match="bad input"):
        next(gen)


def test_iterate_is_lockstep_so_cancel_between_events_does_no_more_work():
    done = []

    def work(rep):
        for i in range(100):
            rep.check()
            done.append(i)
            rep.emit("step", i / 100, force=True)

    token = CancelToken()
    gen = iterate(work, token)
    next(gen)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)
    assert done == [0, 1]
