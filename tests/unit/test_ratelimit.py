from __future__ import annotations

import random

import pytest

from imrelay_sender.ratelimit import admit


def test_admits_until_the_limit_then_says_how_long_to_wait() -> None:
    times: list[float] = []
    for i in range(3):
        ok, times, wait = admit(times, 10.0 + i, limit=3, window=60)
        assert ok and wait == 0
    ok, kept, wait = admit(times, 20.0, limit=3, window=60)
    assert not ok and kept == [10.0, 11.0, 12.0]
    assert wait == pytest.approx(50.0)  # 10 + 60 - 20: the oldest leaves the window


def test_old_sends_leave_the_window() -> None:
    ok, times, _ = admit([0.0, 1.0, 2.0], 61.5, limit=3, window=60)
    assert ok and times == [2.0, 61.5]


@pytest.mark.parametrize("seed", range(10))
def test_no_window_ever_holds_more_than_the_limit(seed: int) -> None:
    """Simulated senders that obey admit(): every sliding window of the result is within the limit."""
    rng = random.Random(seed)
    limit, window = rng.randint(1, 25), rng.uniform(0.5, 60)
    now = 0.0
    times: list[float] = []
    sent: list[float] = []
    for _ in range(400):
        ok, times, wait = admit(times, now, limit, window)
        if ok:
            sent.append(now)
            now += rng.expovariate(limit / window * 3)
        else:
            now += wait
    for i, t in enumerate(sent):
        in_window = [u for u in sent[i:] if u < t + window]
        assert len(in_window) <= limit
    assert len(sent) > limit
