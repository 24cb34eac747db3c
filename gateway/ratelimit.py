"""Throttling counted in SMS segments: a 3-part message costs 3 tokens.

Five pieces, from pure to composed:

* :class:`TokenBucket` — a local bucket; pure (the caller passes ``now``; no clock, no asyncio).
* :class:`AdaptiveRate` and :class:`RateMeter` — an AIMD controller that halves the rate when the
  SMSC answers ``ESME_RTHROTTLED`` / ``ESME_RMSGQFUL`` and recovers additively; a sliding-window
  throughput meter. Both pure.
* :class:`RedisTokenBucket` — one bucket for a carrier ACCOUNT shared by every gateway process
  that uses the same Redis (a Lua script on Redis ``TIME``), with local prefetch and a per-process
  fallback while Redis is unreachable.
* :class:`RedisBuckets` — many named buckets in Redis answered at once (granted, or seconds to
  wait), with the same per-process fallback; for request rate limits (API keys).
* :class:`Throttle` — what one link uses: the local bucket at the link's TPS (scaled down by the
  adaptive controller) plus the optional shared account bucket. It owns the clock
  (``time.monotonic``) and the waiting (``asyncio.sleep``).

Bursts and large messages (the "debt" model)
    A bucket holds at most ``burst`` tokens. A request for ``n`` tokens is granted once the bucket
    holds ``min(n, burst)`` tokens, and then ``n`` tokens are taken — the bucket may go negative.
    So a 10-part message on a link whose burst is 1 token is sent as soon as the bucket is full and
    the following requests wait until the debt is repaid: it never deadlocks, and the long-run
    rate is exact (over any window of ``T`` seconds at most ``burst + rate * T`` tokens are
    granted, plus the one oversized request in flight).

Default burst
    ``max(1, rate / 10)``: a tenth of a second's worth of tokens, at least one token. Carriers count
    TPS over a second, so a tenth of a second's worth of burst stays well inside their window while
    absorbing scheduling jitter; a rate of 10 TPS or less is paced one segment at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("smsgw.ratelimit")

_EPSILON = 1e-9  # tokens; absorbs float rounding when the caller waits exactly the time we asked


def _limited(rate: float | None) -> float | None:
    """``None`` / ``0`` → ``None`` (unlimited); negative rates are an error."""
    if rate is None or rate == 0:
        return None
    if rate < 0 or math.isnan(rate):
        raise ValueError(f"rate must be positive, 0 or None (unlimited), not {rate!r}")
    return float(rate)


def default_burst(rate: float) -> float:
    """A tenth of a second's worth of tokens, at least one."""
    return max(1.0, rate * 0.1)


# --------------------------------------------------------------------------- local bucket


class TokenBucket:
    """A token bucket refilled at ``rate`` tokens/s, holding at most ``burst`` tokens.

    Pure: every method takes ``now`` (seconds, any monotonic origin) from the caller. ``rate`` 0 or
    ``None`` means unlimited (every take is granted). ``burst`` ``None`` means
    :func:`default_burst` of the current rate (recomputed by :meth:`set_rate`); an explicit burst
    stays fixed. The bucket starts full. See the module docstring for the debt model.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        if burst is not None and not burst > 0:
            raise ValueError(f"burst must be positive, not {burst!r}")
        self._rate = _limited(rate)
        self._burst = burst
        self._tokens = 0.0
        self._stamp: float | None = None  # None: full, not yet observed

    @property
    def rate(self) -> float | None:
        """Tokens per second, ``None`` when unlimited."""
        return self._rate

    @property
    def burst(self) -> float:
        """Bucket capacity (``inf`` when unlimited)."""
        if self._burst is not None:
            return self._burst
        return math.inf if self._rate is None else default_burst(self._rate)

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._tokens, self._stamp = self.burst, now
            return
        if self._rate is not None and now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = max(self._stamp, now)  # a clock going backwards never refills twice

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (negative while a large request is being repaid)."""
        if self._rate is None:
            return math.inf
        self._refill(now)
        return self._tokens

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens: ``0.0`` if granted (consumed), else seconds to wait (nothing taken).

        Waiting the returned time and calling again grants the request (unless someone else took
        the tokens meanwhile or the rate changed).
        """
        if n < 0:
            raise ValueError(f"cannot take a negative number of tokens ({n!r})")
        if self._rate is None or n == 0:
            return 0.0
        self._refill(now)
        need = min(n, self.burst)
        if self._tokens + _EPSILON >= need:
            self._tokens -= n
            return 0.0
        return (need - self._tokens) / self._rate

    def set_rate(self, rate: float | None, now: float) -> None:
        """Change the rate at ``now``; tokens accrued so far (at the old rate) are kept.

        Going from unlimited to limited starts with a full bucket; a smaller (default) burst caps
        the tokens held; a debt is kept.
        """
        new = _limited(rate)
        if new == self._rate:
            return
        if self._rate is None or self._stamp is None:
            self._rate, self._stamp = new, None  # full at the next observation
            return
        self._refill(now)
        self._rate = new
        if new is not None:
            self._tokens = min(self._tokens, self.burst)


# --------------------------------------------------------------------------- meter + AIMD


class RateMeter:
    """Tokens counted over a sliding window (default 1 s) → observed rate (tokens/s). Pure."""

    __slots__ = ("_events", "_sum", "window")

    def __init__(self, window: float = 1.0) -> None:
        if not window > 0:
            raise ValueError("window must be positive")
        self.window = window
        self._events: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        events = self._events
        while events and events[0][0] <= horizon:
            self._sum -= events.popleft()[1]
        if not events:
            self._sum = 0.0  # no float drift survives an empty window

    def add(self, n: float, now: float) -> None:
        """Count ``n`` tokens at ``now``."""
        if n <= 0:
            return
        events = self._events
        if events and events[-1][0] == now:
            events[-1] = (now, events[-1][1] + n)
        else:
            events.append((now, n))
        self._sum += n
        self._expire(now)

    def total(self, now: float) -> float:
        """Tokens counted in ``(now - window, now]``."""
        self._expire(now)
        return max(0.0, self._sum)

    def rate(self, now: float) -> float:
        """Tokens per second over the window (the whole window, even just after a start)."""
        return self.total(now) / self.window


class AdaptiveRate:
    """AIMD rate controller for one link. Pure: the caller passes ``now``.

    * :meth:`on_throttled` (``ESME_RTHROTTLED`` / ``ESME_RMSGQFUL``): the rate becomes
      ``max(min_rate, base * decrease)`` — ``base`` is the current rate, or ``observed_rate`` when
      currently unlimited — and sending pauses until ``now + pause_s``. Further throttles before
      the pause ends answer submits sent before the cut: they are counted but do not cut again (at
      most one cut per pause, like TCP's one cut per round trip).
    * :meth:`on_success`: additive recovery of ``increase_per_s`` per second of successful sending
      after the pause (at most ``max_credit_s`` of credit per call, so an idle link does not jump
      back to full speed on its first success). With the default steps, recovery is fast (25 %
      per second of the rate that was throttled) up to 90 % of that rate — the SMSC's limit is
      likely just below it — and slow (5 %) from there: the link spends its time close to the
      carrier's real limit instead of climbing slowly from half of it.

      - With ``max_rate``: recovers up to ``max_rate`` (the link's configured TPS) and stays there.
        Default step: 5 % of ``max_rate`` per second — from half to full speed in 10 s.
      - Without (``max_rate`` ``None``: no configured TPS, unlimited until the first throttle): the
        step is fixed when leaving unlimited mode, at 5 % per second of the throughput observed at
        that cut; once the limit reaches ``release_factor`` × the rate at the last cut (well above
        the throughput that was throttled and still not throttled), the link is unlimited again.
        With the defaults that takes 20 s of successful sending.
    """

    def __init__(
        self,
        *,
        max_rate: float | None,
        min_rate: float = 1.0,
        decrease: float = 0.5,
        increase_per_s: float | None = None,
        pause_s: float = 1.0,
        release_factor: float = 1.5,
        max_credit_s: float = 1.0,
    ) -> None:
        if not 0 < decrease < 1:
            raise ValueError("decrease must be in (0, 1)")
        if not min_rate > 0:
            raise ValueError("min_rate must be positive")
        if increase_per_s is not None and not increase_per_s > 0:
            raise ValueError("increase_per_s must be positive")
        if pause_s < 0 or max_credit_s <= 0 or release_factor <= 1:
            raise ValueError("pause_s >= 0, max_credit_s > 0 and release_factor > 1 required")
        self.max_rate = _limited(max_rate)
        self.min_rate = min(min_rate, self.max_rate) if self.max_rate is not None else min_rate
        self.decrease = decrease
        self.increase_per_s = increase_per_s
        self.pause_s = pause_s
        self.release_factor = release_factor
        self.max_credit_s = max_credit_s
        self.paused_until: float = -math.inf
        self.throttles = 0  # cuts made
        self.throttles_ignored = 0  # throttles answered during a pause (same episode)
        self._rate: float | None = self.max_rate
        self._step = increase_per_s if increase_per_s is not None else (
            0.05 * self.max_rate if self.max_rate is not None else 0.0)
        self._ceiling = 0.0  # unlimited mode: the rate at the last cut
        self._last_cut = 0.0  # the rate (or observed throughput) when last throttled
        self._credit_from = -math.inf

    def current(self, now: float) -> float | None:
        """The rate to send at (tokens/s); ``None`` = unlimited. Pauses are separate
        (:attr:`paused_until`)."""
        return self._rate

    def paused(self, now: float) -> bool:
        return now < self.paused_until

    def on_throttled(self, now: float, observed_rate: float) -> None:
        """The SMSC throttled us at ``now`` while we sent ``observed_rate`` tokens/s."""
        if now < self.paused_until:
            self.throttles_ignored += 1
            return
        if self._rate is None:  # leaving unlimited mode
            base = max(observed_rate, self.min_rate)
            if self.increase_per_s is None:
                self._step = 0.05 * base
        else:
            base = self._rate
        if self.max_rate is None:
            self._ceiling = base
        self._last_cut = base  # where the SMSC said stop: recover fast to near it, then creep
        self._rate = max(self.min_rate, base * self.decrease)
        self.throttles += 1
        self.paused_until = now + self.pause_s
        self._credit_from = self.paused_until
        log.info("throttled: rate cut to %.1f/s, paused %.2fs", self._rate, self.pause_s)

    def on_success(self, now: float) -> None:
        """A submit was accepted at ``now``."""
        if self._rate is None or now < self.paused_until:
            return
        credit = min(max(0.0, now - self._credit_from), self.max_credit_s)
        self._credit_from = max(self._credit_from, now)
        step = self._step
        if self.increase_per_s is None and self._last_cut and self._rate < 0.9 * self._last_cut:
            step = max(step, 0.25 * self._last_cut)  # far below the last throttle point
        rate = self._rate + step * credit
        if self.max_rate is not None:
            self._rate = min(rate, self.max_rate)
        elif rate >= self.release_factor * self._ceiling:
            self._rate = None
            log.info("throttle recovery complete: unlimited again")
        else:
            self._rate = rate

    def state(self, now: float) -> dict[str, Any]:
        """For ``/healthz``: JSON-ready."""
        rate = self._rate
        return {
            "rate": None if rate is None else round(rate, 3),
            "max_rate": self.max_rate,
            "min_rate": self.min_rate,
            "limited": rate is not None and (self.max_rate is None or rate < self.max_rate),
            "paused": now < self.paused_until,
            "pause_remaining_s": round(max(0.0, self.paused_until - now), 3),
            "throttles": self.throttles,
            "throttles_ignored": self.throttles_ignored,
        }


# --------------------------------------------------------------------------- Redis bucket

# KEYS[1] bucket key; ARGV: rate (tokens/s), burst, n (tokens), idle ttl (ms).
# Returns {n, 0} after consuming n tokens, or {0, wait_ms} with nothing consumed (wait_ms: until
# min(n, burst) tokens are there; debt model as TokenBucket). Time is Redis TIME, one clock for
# every process. State: hash {t: tokens (negative while in debt), ts: microseconds}. TIME is the
# Redis host's wall clock: a step either way (NTP) grants at most one extra burst, and never
# stalls the bucket (after a step back, ts follows the clock).
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local idle_ms = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
end
local need = math.min(n, burst)
if tokens + 1e-9 < need then
  return {0, math.max(1, math.ceil((need - tokens) * 1000 / rate))}
end
tokens = tokens - n
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%d', now))
local full_ms = math.ceil((burst - tokens) * 1000 / rate)
redis.call('PEXPIRE', KEYS[1], math.max(idle_ms, full_ms))
return {n, 0}
"""

_LOG_EVERY_S = 10.0


class RedisTokenBucket:
    """A token bucket for a carrier account, shared by every process using the same Redis.

    State lives at ``smsgw:tps:<account>`` and is updated by one Lua script that reads Redis
    ``TIME`` (no client clocks involved), refills at ``rate``, caps at ``burst`` and either takes
    ``n`` tokens or answers how long to wait (same debt model as :class:`TokenBucket`). The key
    expires once idle for ``idle_ttl_ms`` and never before the bucket would have been full anyway,
    so an expired key (read as a full bucket) is always exact. Every process must configure the
    same rate and burst for an account (each call passes them; the last caller's values apply).

    Prefetch (``prefetch`` > 1), to avoid one Redis round trip per segment at high rates: a
    process takes a chunk of tokens in one call and spends it locally within
    ``prefetch_window_s``; tokens not spent by then are dropped (never given back), which can only
    under-use the account. The chunk follows this process's own recent throughput,
    ``ceil(throughput * prefetch_window_s)``, capped at ``prefetch``, at half the burst and at
    ``rate * prefetch_window_s`` (never below the request), so a process sending a trickle takes
    one token per call and wastes nothing. What it costs:

    * lumpier sending at short time scales, and while a process saturates the account a request
      may wait for its whole chunk (at most ``prefetch_window_s`` longer than strictly needed);
    * the long-run rate is never exceeded, but a token may be spent up to ``prefetch_window_s``
      after Redis granted it, so over any window of ``T`` seconds the account may send
      ``burst + rate * T`` plus at most ``min(processes * chunk, rate * prefetch_window_s)``
      segments (with the defaults at most one extra burst). Lower the account burst if the
      carrier counts strictly.

    Redis unreachable (connection error, timeout, any Redis error): ``acquire`` never raises. The
    process falls back to a local :class:`TokenBucket` at ``fallback_rate`` (default: the whole
    account rate) and tries Redis again after ``retry_after_s``, doubling up to
    ``max_retry_after_s`` while it keeps failing (a call that fails costs its caller at most
    ``redis_timeout_s``); one warning at most every 10 s. During an outage the account limit is
    therefore enforced per process: N processes may send N times the account rate (set
    ``fallback_rate`` to rate / N to stay under it).
    """

    def __init__(
        self,
        client: Redis,
        account: str,
        rate: float | None,
        burst: float | None = None,
        *,
        prefetch: int = 1,
        prefetch_window_s: float = 0.1,
        idle_ttl_ms: int = 5000,
        fallback_rate: float | None = None,
        redis_timeout_s: float = 0.5,
        retry_after_s: float = 1.0,
        max_retry_after_s: float = 10.0,
        key_prefix: str = "smsgw:tps:",
    ) -> None:
        if prefetch < 1 or prefetch_window_s <= 0 or idle_ttl_ms < 1:
            raise ValueError("prefetch >= 1, prefetch_window_s > 0 and idle_ttl_ms >= 1 required")
        self.account = account
        self.key = f"{key_prefix}{account}"
        self.rate = _limited(rate)
        self.burst = burst if burst is not None else (
            default_burst(self.rate) if self.rate is not None else math.inf)
        if not self.burst > 0:
            raise ValueError("burst must be positive")
        self.prefetch = prefetch
        self.prefetch_window_s = prefetch_window_s
        self.idle_ttl_ms = idle_ttl_ms
        self.redis_timeout_s = redis_timeout_s
        self.retry_after_s = retry_after_s
        self.max_retry_after_s = max(retry_after_s, max_retry_after_s)
        self.fallback = TokenBucket(fallback_rate if fallback_rate is not None else self.rate,
                                    burst)
        self.redis_calls = 0  # script calls (for tests and metrics)
        self.fallback_grants = 0  # acquires served by the local fallback
        self._script = client.register_script(_TAKE_LUA)
        self._lock = asyncio.Lock()  # FIFO between this process's waiters
        # tokens granted to this process over a short window: sizes the prefetch chunks
        self._meter = RateMeter(2.5 * prefetch_window_s)
        self._local = 0  # prefetched tokens left ...
        self._local_until = -math.inf  # ... spendable until then (monotonic)
        self._down_until = -math.inf  # Redis failed: local fallback until then
        self._down = False
        self._failures = 0  # consecutive failed Redis calls (back-off)
        self._last_log = -math.inf

    @property
    def mode(self) -> str:
        """``"redis"``, or ``"local"`` while falling back to the per-process bucket."""
        return "local" if self._down else "redis"

    def _chunk(self, n: int, now: float) -> int:
        if self.prefetch <= 1 or self.rate is None:
            return n
        cap = min(float(self.prefetch), self.burst / 2, self.rate * self.prefetch_window_s)
        demand = math.ceil(self._meter.rate(now) * self.prefetch_window_s)
        return max(n, min(math.floor(cap), demand))

    async def _take(self, n: int, rate: float) -> tuple[int, int]:
        self.redis_calls += 1
        result = await asyncio.wait_for(
            self._script(keys=[self.key], args=[rate, self.burst, n, self.idle_ttl_ms]),
            self.redis_timeout_s,
        )
        granted, wait_ms = result
        return int(granted), int(wait_ms)

    def _redis_failed(self, exc: BaseException, now: float) -> None:
        self._down = True
        self._failures += 1
        backoff = self.retry_after_s * 2 ** min(self._failures - 1, 20)
        self._down_until = now + min(backoff, self.max_retry_after_s)
        self._local, self._local_until = 0, -math.inf
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("Redis unreachable for account %s rate limit (%s: %s); limiting per "
                        "process until it is back", self.account, type(exc).__name__, exc)

    async def _acquire_fallback(self, n: int) -> None:
        while (wait := self.fallback.take(n, time.monotonic())) > 0:
            await asyncio.sleep(wait)
        self.fallback_grants += 1

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` tokens of the account are ours. Never raises for Redis trouble."""
        rate = self.rate
        if n <= 0 or rate is None:
            return
        async with self._lock:
            now = time.monotonic()
            if self._local >= n and now < self._local_until:
                self._local -= n
                self._meter.add(n, now)
                return
            self._local = 0  # leftovers past their window (or too few) are dropped
            while True:
                now = time.monotonic()
                if now < self._down_until:
                    await self._acquire_fallback(n)
                    return
                chunk = self._chunk(n, now)
                try:
                    granted, wait_ms = await self._take(chunk, rate)
                except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                    self._redis_failed(exc, now)
                    continue
                self._failures = 0
                if self._down:
                    self._down = False
                    log.info("Redis reachable again for account %s rate limit", self.account)
                if granted:
                    now = time.monotonic()
                    self._local, self._local_until = granted - n, now + self.prefetch_window_s
                    self._meter.add(n, now)
                    return
                await asyncio.sleep(wait_ms / 1000)

    def state(self) -> dict[str, Any]:
        return {"account": self.account, "rate": self.rate, "burst": self.burst,
                "mode": self.mode, "prefetch": self.prefetch}


# --------------------------------------------------------------------------- named buckets


class RedisBuckets:
    """Many named token buckets shared through Redis, answered at once instead of waited for.

    For limits on *requests* (an API key's requests per second, see
    :mod:`gateway.http.keylimit`) rather than throttles on sends: :meth:`take` either takes the
    tokens or says how many seconds until it could, and never sleeps. Bucket ``name`` lives at
    ``<key_prefix><name>`` and is updated by the same Lua script as :class:`RedisTokenBucket`
    (Redis ``TIME``, debt model, key expiring once the bucket would be full). Rate and burst are
    passed on every call, so a changed limit applies from the next call (last caller wins).

    Redis unreachable (any Redis error, connection error or ``redis_timeout_s``): :meth:`take`
    never raises and never lets everything through. It answers from a local
    :class:`TokenBucket` per name at the same rate and burst, and tries Redis again after
    ``retry_after_s``, doubling up to ``max_retry_after_s`` while it keeps failing. One warning
    when an outage starts, one info line when Redis answers again. The local buckets are charged
    for the grants Redis makes too, so a fallback starts from this process's real recent use
    rather than a full bucket. During an outage each process enforces the limit on its own: N
    processes may let N times the rate through.
    """

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        what: str = "rate limits",
        idle_ttl_ms: int = 1000,
        redis_timeout_s: float = 0.25,
        retry_after_s: float = 1.0,
        max_retry_after_s: float = 10.0,
        max_local: int = 10_000,
    ) -> None:
        if idle_ttl_ms < 1 or redis_timeout_s <= 0 or retry_after_s <= 0 or max_local < 1:
            raise ValueError("idle_ttl_ms >= 1, redis_timeout_s > 0, retry_after_s > 0 and "
                             "max_local >= 1 required")
        self.key_prefix = key_prefix
        self.what = what  # for log lines: "API key rate limits"
        self.idle_ttl_ms = idle_ttl_ms
        self.redis_timeout_s = redis_timeout_s
        self.retry_after_s = retry_after_s
        self.max_retry_after_s = max(retry_after_s, max_retry_after_s)
        self.max_local = max_local
        self.redis_calls = 0  # script calls (for tests and metrics)
        self.fallback_answers = 0  # takes answered by a local bucket
        self._script = client.register_script(_TAKE_LUA)
        # name -> (rate, burst, bucket); least recently used first
        self._local: OrderedDict[str, tuple[float, float, TokenBucket]] = OrderedDict()
        self._down = False
        self._down_until = -math.inf
        self._failures = 0

    @property
    def mode(self) -> str:
        """``"redis"``, or ``"local"`` while Redis is unreachable."""
        return "local" if self._down else "redis"

    def _bucket(self, name: str, rate: float, burst: float) -> TokenBucket:
        entry = self._local.get(name)
        if entry is None or entry[0] != rate or entry[1] != burst:
            entry = (rate, burst, TokenBucket(rate, burst))
            self._local[name] = entry
            while len(self._local) > self.max_local:
                self._local.popitem(last=False)
        self._local.move_to_end(name)
        return entry[2]

    async def take(self, name: str, rate: float, burst: float, n: int = 1) -> float:
        """Take ``n`` tokens of bucket ``name``: ``0.0`` if granted, else seconds to wait
        (nothing taken). Never raises for Redis trouble (see the class doc)."""
        if not rate > 0 or not burst > 0 or math.isinf(rate):
            raise ValueError(f"rate and burst must be positive and finite, not {rate!r}, "
                             f"{burst!r}")
        if n <= 0:
            return 0.0
        local = self._bucket(name, rate, burst)
        now = time.monotonic()
        if now >= self._down_until:
            try:
                self.redis_calls += 1
                granted, wait_ms = await asyncio.wait_for(
                    self._script(keys=[self.key_prefix + name],
                                 args=[rate, burst, n, self.idle_ttl_ms]),
                    self.redis_timeout_s)
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                self._redis_failed(exc, now)
            else:
                self._redis_ok()
                if int(granted):
                    local.take(n, time.monotonic())  # keep the fallback warm; result unused
                    return 0.0
                return max(int(wait_ms), 1) / 1000
        self.fallback_answers += 1
        return local.take(n, time.monotonic())

    def _redis_failed(self, exc: BaseException, now: float) -> None:
        self._failures += 1
        backoff = self.retry_after_s * 2 ** min(self._failures - 1, 20)
        self._down_until = now + min(backoff, self.max_retry_after_s)
        if not self._down:
            self._down = True
            log.warning("Redis unreachable for %s (%s: %s); enforcing them per process until "
                        "it is back", self.what, type(exc).__name__, exc)

    def _redis_ok(self) -> None:
        self._failures = 0
        if self._down:
            self._down = False
            log.info("Redis reachable again for %s", self.what)

    def state(self) -> dict[str, Any]:
        return {"mode": self.mode, "key_prefix": self.key_prefix,
                "redis_calls": self.redis_calls, "fallback_answers": self.fallback_answers}


# --------------------------------------------------------------------------- per link


class Throttle:
    """Throttling for one SMSC link, counted in segments.

    ``acquire(segments)`` waits for, in order: the adaptive pause after a throttle, the local
    bucket at the adaptive rate (at most the link's ``tps``; ``tps`` 0/``None`` = no limit of
    ours until the SMSC throttles), and the shared account bucket when given. Report outcomes
    with :meth:`on_throttled` / :meth:`on_success`; the throughput handed to the controller on a
    throttle is what the SMSC accepted over the last second (its capacity, as far as we know).
    ``adaptive`` defaults to ``AdaptiveRate(max_rate=tps)``; pass one to tune the pause or steps.
    Waiters are served first come, first served, so a 10-part message is not starved.
    """

    def __init__(
        self,
        tps: float | None,
        *,
        burst: float | None = None,
        adaptive: AdaptiveRate | None = None,
        shared: RedisTokenBucket | None = None,
    ) -> None:
        self.tps = _limited(tps)
        self.adaptive = adaptive if adaptive is not None else AdaptiveRate(max_rate=self.tps)
        self.bucket = TokenBucket(self.adaptive.current(time.monotonic()), burst)
        self.shared = shared
        self.sent = RateMeter()  # segments let through
        self.accepted = RateMeter()  # segments the SMSC accepted
        self._lock = asyncio.Lock()

    async def acquire(self, segments: int) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self.adaptive.paused_until:
                    await asyncio.sleep(self.adaptive.paused_until - now)
                    continue
                self.bucket.set_rate(self.adaptive.current(now), now)
                wait = self.bucket.take(segments, now)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        if self.shared is not None:
            await self.shared.acquire(segments)
        self.sent.add(segments, time.monotonic())

    def on_throttled(self) -> None:
        now = time.monotonic()
        self.adaptive.on_throttled(now, self.accepted.rate(now))

    def on_success(self, segments: int = 1) -> None:
        now = time.monotonic()
        self.accepted.add(segments, now)
        self.adaptive.on_success(now)

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "tps": self.tps,
            "adaptive": self.adaptive.state(now),
            "sent_per_s": round(self.sent.rate(now), 1),
            "accepted_per_s": round(self.accepted.rate(now), 1),
            "shared": None if self.shared is None else self.shared.state(),
        }
