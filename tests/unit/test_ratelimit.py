"""Token bucket, AIMD controller and rate meter (pure: explicit ``now``), plus the Throttle."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from gateway.ratelimit import AdaptiveRate, RateMeter, Throttle, TokenBucket, default_burst


def greedy(bucket: TokenBucket, cost: float, seconds: float, poll: float | None = None) -> float:
    """Take ``cost`` tokens as often as allowed for ``seconds`` of fake time; tokens granted.

    ``poll`` None: sleep exactly the wait the bucket asks for; otherwise look again every ``poll``.
    """
    now, granted = 0.0, 0.0
    while now <= seconds:
        wait = bucket.take(cost, now)
        if wait == 0:
            granted += cost
            continue
        assert wait > 0
        now += wait if poll is None else poll
    return granted


# --------------------------------------------------------------------------- TokenBucket


def test_grants_up_to_burst_then_asks_to_wait() -> None:
    bucket = TokenBucket(10, burst=5)
    assert [bucket.take(1, 0.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(1, 0.0) == pytest.approx(0.1)
    assert bucket.take(2, 0.0) == pytest.approx(0.2)  # nothing was consumed by the refusals
    assert bucket.take(1, 0.05) == pytest.approx(0.05)
    assert bucket.take(1, 0.1) == 0.0
    assert bucket.take(1, 0.1) == pytest.approx(0.1)


def test_default_burst_is_a_tenth_of_a_second_at_least_one() -> None:
    assert TokenBucket(2000).burst == 200
    assert TokenBucket(5).burst == 1
    assert default_burst(0.5) == 1
    assert TokenBucket(100, burst=3).burst == 3


@pytest.mark.parametrize(("rate", "burst"), [(100, None), (2000, None), (7, 2), (0.5, None)])
def test_long_run_rate_equals_configured(rate: float, burst: float | None) -> None:
    bucket = TokenBucket(rate, burst)
    granted = greedy(bucket, 1, 10.0)
    expected = rate * 10 + bucket.burst
    assert abs(granted - expected) <= 0.01 * expected, (granted, expected)
    assert granted <= expected + 1


def test_long_run_rate_with_coarse_polling() -> None:
    # polling every 7 ms instead of sleeping the exact wait: tokens accumulate, none are lost
    bucket = TokenBucket(100)
    granted = greedy(bucket, 1, 10.0, poll=0.007)
    assert abs(granted - 1010) <= 10.1, granted


def test_multi_segment_costs() -> None:
    bucket = TokenBucket(30, burst=6)
    assert bucket.take(3, 0.0) == 0.0
    assert bucket.take(3, 0.0) == 0.0
    assert bucket.take(3, 0.0) == pytest.approx(0.1)  # 3 tokens at 30/s
    assert bucket.take(1, 0.0) == pytest.approx(1 / 30)
    granted = greedy(TokenBucket(30, burst=6), 3, 10.0)
    assert abs(granted - 306) <= 3.06 + 3, granted  # whole messages: within one message


def test_request_larger_than_burst_is_granted_and_repaid() -> None:
    bucket = TokenBucket(10, burst=1)  # a 10-part message on a 10 TPS link
    assert bucket.take(10, 0.0) == 0.0  # the bucket was full: granted, now 9 tokens in debt
    assert bucket.available(0.0) == pytest.approx(-9)
    assert bucket.take(1, 0.0) == pytest.approx(1.0)  # the debt is repaid first
    assert bucket.take(10, 0.5) == pytest.approx(0.5)  # waits for a full bucket, not 10 tokens
    assert bucket.take(10, 1.0) == 0.0


def test_large_requests_never_deadlock_and_keep_the_rate() -> None:
    bucket = TokenBucket(10, burst=1)
    granted = greedy(bucket, 10, 10.0)
    assert 100 <= granted <= 111, granted
    assert greedy(TokenBucket(5), 10_000, 1.0) == 10_000  # one huge request, granted at once


def test_set_rate_keeps_accumulated_tokens() -> None:
    bucket = TokenBucket(10, burst=5)
    for _ in range(5):
        bucket.take(1, 0.0)
    bucket.set_rate(20, 0.1)  # 1 token accrued at the old rate
    assert bucket.available(0.1) == pytest.approx(1)
    assert bucket.available(0.2) == pytest.approx(3)  # +2 at the new rate
    bucket.set_rate(20, 0.3)  # same rate: no-op
    assert bucket.available(0.3) == pytest.approx(5)


def test_set_rate_caps_default_burst_and_keeps_debt() -> None:
    bucket = TokenBucket(1000)  # default burst 100
    assert bucket.available(0.0) == 100
    bucket.set_rate(100, 0.0)  # default burst becomes 10
    assert bucket.available(0.0) == 10
    bucket.take(50, 0.0)
    bucket.set_rate(50, 0.0)
    assert bucket.available(0.0) == pytest.approx(-40)


def test_unlimited_and_back() -> None:
    for rate in (0, None):
        bucket = TokenBucket(rate)
        assert bucket.rate is None and math.isinf(bucket.burst)
        assert bucket.take(1e9, 0.0) == 0.0
    bucket = TokenBucket(None)
    bucket.set_rate(10, 5.0)
    assert bucket.take(1, 5.0) == 0.0  # starts full
    assert bucket.take(1, 5.0) == pytest.approx(0.1)
    bucket.set_rate(None, 5.0)
    assert bucket.take(100, 5.0) == 0.0


def test_clock_going_backwards_does_not_refill_twice() -> None:
    bucket = TokenBucket(10, burst=2)
    bucket.take(2, 1.0)
    assert bucket.take(1, 0.5) == pytest.approx(0.1)
    assert bucket.take(1, 1.1) == 0.0
    assert bucket.take(1, 1.1) == pytest.approx(0.1)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1)
    with pytest.raises(ValueError):
        TokenBucket(10, burst=0)
    with pytest.raises(ValueError):
        TokenBucket(10).take(-1, 0.0)
    assert TokenBucket(10).take(0, 0.0) == 0.0


# --------------------------------------------------------------------------- RateMeter


def test_rate_meter_sliding_window() -> None:
    meter = RateMeter()
    now = 0.0
    for _ in range(200):  # 100/s for 2 s
        now += 0.01
        meter.add(1, now)
    assert meter.rate(now) == pytest.approx(100)
    meter.add(3, now)  # same instant: coalesced
    assert meter.total(now) == pytest.approx(103)
    assert meter.rate(now + 0.5) == pytest.approx(53, abs=1)
    assert meter.rate(now + 1.0) == 0
    meter.add(0, now + 2)
    assert meter.rate(now + 2) == 0


def test_rate_meter_window() -> None:
    meter = RateMeter(window=0.5)
    meter.add(10, 1.0)
    assert meter.rate(1.2) == 20
    assert meter.rate(1.5) == 0


# --------------------------------------------------------------------------- AdaptiveRate


def succeed(ctl: AdaptiveRate, start: float, end: float, step: float = 0.01) -> float | None:
    """Report a success every ``step`` from ``start`` to ``end``; first time the rate is full."""
    now, full_at = start, None
    while now <= end:
        ctl.on_success(now)
        if full_at is None and ctl.current(now) in (ctl.max_rate, None):
            full_at = now
        now += step
    return full_at


def test_throttle_halves_and_pauses() -> None:
    ctl = AdaptiveRate(max_rate=100)
    assert ctl.current(0.0) == 100 and not ctl.paused(0.0)
    ctl.on_throttled(10.0, observed_rate=95)
    assert ctl.current(10.0) == 50
    assert ctl.paused_until == 11.0
    assert ctl.paused(10.99) and not ctl.paused(11.0)
    # in-flight submits answered during the pause do not cut again
    ctl.on_throttled(10.2, observed_rate=95)
    ctl.on_success(10.5)
    assert ctl.current(10.5) == 50
    assert (ctl.throttles, ctl.throttles_ignored) == (1, 1)
    state = ctl.state(10.5)
    assert state["paused"] and state["rate"] == 50 and state["max_rate"] == 100
    assert state["pause_remaining_s"] == 0.5 and state["limited"]


def test_additive_recovery_back_to_max_over_the_expected_time() -> None:
    ctl = AdaptiveRate(max_rate=100)  # default steps: fast, then 5 % of max per second
    ctl.on_throttled(10.0, observed_rate=100)
    full_at = succeed(ctl, 10.0, 30.0)
    # pause until 11; 50 → 90 (90 % of the rate that was throttled) at 25/s: 1.6 s;
    # then 90 → 100 at 5/s: 2 s
    assert full_at == pytest.approx(14.6, abs=0.05)
    assert ctl.current(30.0) == 100
    assert not ctl.state(30.0)["limited"]


def test_recovery_halfway() -> None:
    ctl = AdaptiveRate(max_rate=200, increase_per_s=20, pause_s=0.5)
    ctl.on_throttled(0.0, observed_rate=0)
    succeed(ctl, 0.0, 3.5)
    assert ctl.current(3.5) == pytest.approx(100 + 20 * 3, abs=0.3)


def test_idle_time_is_not_recovery_credit() -> None:
    ctl = AdaptiveRate(max_rate=100)
    ctl.on_throttled(0.0, observed_rate=100)
    ctl.on_success(1.0)
    ctl.on_success(60.0)  # first success after a long idle: at most 1 s of credit
    assert ctl.current(60.0) == pytest.approx(75)  # 1 s at the fast step (25/s)


def test_repeated_throttles_never_go_below_min_rate() -> None:
    ctl = AdaptiveRate(max_rate=100, min_rate=10)
    now = 0.0
    rates = []
    for _ in range(10):
        ctl.on_throttled(now, observed_rate=1)
        rates.append(ctl.current(now))
        now += 1.0  # each after the previous pause
    assert rates[:4] == [50, 25, 12.5, 10]
    assert min(r for r in rates if r is not None) == 10


def test_min_rate_never_above_max_rate() -> None:
    ctl = AdaptiveRate(max_rate=0.5)
    ctl.on_throttled(0.0, observed_rate=0.5)
    assert ctl.current(0.0) == 0.5


def test_unlimited_mode_cuts_then_becomes_unlimited_again() -> None:
    ctl = AdaptiveRate(max_rate=None)
    assert ctl.current(0.0) is None
    ctl.on_success(0.5)
    assert ctl.current(0.5) is None
    ctl.on_throttled(1.0, observed_rate=400)
    assert ctl.current(1.0) == 200  # half of what was observed
    # 200 → 360 (90 % of 400) at the fast step 100/s: 1.6 s; then the slow step, 5 % of 400
    # = 20/s, up to 1.5 x 400 = 600: 12 s; unlimited again 13.6 s after the pause
    full_at = succeed(ctl, 1.0, 40.0)
    assert ctl.current(40.0) is None
    assert full_at == pytest.approx(15.6, abs=0.05)
    state = ctl.state(40.0)
    assert state["rate"] is None and not state["limited"] and state["throttles"] == 1
    # and a second episode starts from the newly observed throughput
    ctl.on_throttled(50.0, observed_rate=1000)
    assert ctl.current(50.0) == 500


def test_unlimited_mode_second_cut_lowers_the_release_point() -> None:
    ctl = AdaptiveRate(max_rate=None, increase_per_s=100)
    ctl.on_throttled(0.0, observed_rate=400)  # 200, release at 600
    succeed(ctl, 0.0, 2.0)  # 1 s after the pause: 300
    ctl.on_throttled(2.0, observed_rate=300)  # 300 was too fast: 150, release at 450
    assert ctl.current(2.0) == pytest.approx(150, abs=1)
    full_at = succeed(ctl, 2.0, 10.0)
    assert full_at == pytest.approx(6.0, abs=0.05)  # pause to 3, then 150 → 450 at 100/s


def test_adaptive_validation() -> None:
    with pytest.raises(ValueError):
        AdaptiveRate(max_rate=10, decrease=1.0)
    with pytest.raises(ValueError):
        AdaptiveRate(max_rate=10, min_rate=0)
    assert AdaptiveRate(max_rate=0).current(0.0) is None


# --------------------------------------------------------------------------- Throttle


async def test_throttle_paces_segments_at_link_tps() -> None:
    throttle = Throttle(100)  # burst 10
    start = time.monotonic()
    for _ in range(15):
        await throttle.acquire(2)  # 30 segments: 10 at once, 20 at 100/s
    elapsed = time.monotonic() - start
    assert 0.18 <= elapsed < 0.5, elapsed
    assert throttle.state()["sent_per_s"] == pytest.approx(30, abs=0.1)


async def test_throttle_pauses_and_slows_down_after_a_throttle() -> None:
    throttle = Throttle(200, adaptive=AdaptiveRate(max_rate=200, pause_s=0.2))
    for _ in range(5):
        throttle.on_success(1)
    throttle.on_throttled()
    state = throttle.state()
    assert state["adaptive"]["paused"] and state["adaptive"]["rate"] == 100
    start = time.monotonic()
    await throttle.acquire(1)
    assert time.monotonic() - start >= 0.19
    assert throttle.bucket.rate == 100


async def test_throttle_unlimited_link_does_not_wait() -> None:
    throttle = Throttle(0)
    start = time.monotonic()
    await asyncio.gather(*(throttle.acquire(3) for _ in range(1000)))
    assert time.monotonic() - start < 0.5
    assert throttle.state()["adaptive"]["rate"] is None
