"""A request rate limit per API key: a token bucket per key, shared by every gateway process.

Each key has a rate (requests per second) and a burst (requests allowed at once above the
rate). ``api_keys.rate_per_s`` / ``api_keys.burst`` set them per key (``smsgw apikey create
--rate R --burst B``, ``smsgw apikey set-rate``); ``NULL`` falls back to the gateway's defaults:

* rate ``NULL`` → the default rate (``[http] key_rate_per_s``); rate ``0`` → no limit;
* burst ``NULL`` → the default burst (``[http] key_burst``) on the default rate, and on a key's
  own rate the same number of seconds of that rate as the defaults give (``key_burst /
  key_rate_per_s``: 2 s with 50/s and 100), at least 1 (one second's worth when the default rate
  is 0).

Every authenticated request costs one token (the auth middleware asks :meth:`KeyRateLimiter.check`
once the key is verified). The buckets live in Redis at ``smsgw:keyrate:<key id>``
(:class:`gateway.ratelimit.RedisBuckets`), so N gateway processes share one budget per key;
while Redis is unreachable each process limits each key on its own (see ``RedisBuckets``). A
changed limit applies once the key cache of each process has expired (5 s by default).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from gateway.config import HttpConfig
from gateway.ratelimit import RedisBuckets
from gateway.store.apikeys import ApiKey

log = logging.getLogger("smsgw.http.keylimit")

#: Defaults used until ``[http] key_rate_per_s`` / ``key_burst`` say otherwise.
DEFAULT_RATE_PER_S = 50.0
DEFAULT_BURST = 100
#: Redis key prefix of the per-key buckets (followed by the key's id).
REDIS_PREFIX = "smsgw:keyrate:"

_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """The limit that applies to one key."""

    rate_per_s: float
    burst: int
    default: bool  # the gateway's default rate (the key sets none)

    def describe(self) -> str:
        """``"20 requests/s (burst 40)"``."""
        return f"{self.rate_per_s:g} requests/s (burst {self.burst})"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over its key's limit."""

    limit: KeyLimit
    retry_after_s: int  # whole seconds, ≥ 1 (the Retry-After header)


def check_defaults(rate_per_s: float, burst: int) -> None:
    if not 0 <= rate_per_s < math.inf:
        raise ValueError(f"default key rate must be ≥ 0 requests/s (0 = no limit), not "
                         f"{rate_per_s!r}")
    if burst < 1:
        raise ValueError(f"default key burst must be ≥ 1, not {burst!r}")


def key_limit(key: ApiKey, *, default_rate: float = DEFAULT_RATE_PER_S,
              default_burst: int = DEFAULT_BURST) -> KeyLimit | None:
    """The limit of ``key`` given the gateway's defaults; ``None`` = no limit (module doc)."""
    rate = default_rate if key.rate_per_s is None else key.rate_per_s
    if rate <= 0:
        return None
    if key.burst is not None:
        burst = key.burst
    elif key.rate_per_s is None:
        burst = default_burst
    else:
        seconds = default_burst / default_rate if default_rate > 0 else 1.0
        burst = max(1, round(rate * seconds))
    return KeyLimit(rate_per_s=rate, burst=burst, default=key.rate_per_s is None)


def describe_key_limit(key: ApiKey, *, default_rate: float = DEFAULT_RATE_PER_S,
                       default_burst: int = DEFAULT_BURST) -> str:
    """For ``smsgw apikey list``: ``"20/s burst 40"``, ``"default 50/s burst 100"``,
    ``"no limit"``."""
    limit = key_limit(key, default_rate=default_rate, default_burst=default_burst)
    if limit is None:
        return "no limit" if key.rate_per_s is not None else "default: no limit"
    text = f"{limit.rate_per_s:g}/s burst {limit.burst}"
    return f"default {text}" if limit.default else text


def limit_defaults(http: HttpConfig) -> tuple[float, int]:
    """``(key_rate_per_s, key_burst)`` of ``[http]`` (the built-in defaults if it lacks them)."""
    rate = float(getattr(http, "key_rate_per_s", DEFAULT_RATE_PER_S))
    burst = int(getattr(http, "key_burst", DEFAULT_BURST))
    return rate, burst


class KeyRateLimiter:
    """The per-key limits of the HTTP API (module doc): :meth:`check` before each request."""

    def __init__(self, redis: Redis, *, default_rate: float = DEFAULT_RATE_PER_S,
                 default_burst: int = DEFAULT_BURST, key_prefix: str = REDIS_PREFIX,
                 redis_timeout_s: float = 0.25, retry_after_s: float = 1.0,
                 max_retry_after_s: float = 10.0) -> None:
        check_defaults(default_rate, default_burst)
        self.default_rate = default_rate
        self.default_burst = default_burst
        self.buckets = RedisBuckets(redis, key_prefix=key_prefix, what="API key rate limits",
                                    redis_timeout_s=redis_timeout_s, retry_after_s=retry_after_s,
                                    max_retry_after_s=max_retry_after_s)
        self.refused = 0  # requests answered 429 by this process
        self._logged: dict[int, tuple[float, int]] = {}  # key id -> (last log, refused since)

    def limit_for(self, key: ApiKey) -> KeyLimit | None:
        return key_limit(key, default_rate=self.default_rate, default_burst=self.default_burst)

    async def check(self, key: ApiKey) -> Refusal | None:
        """Count one request of ``key``: ``None`` when allowed, else why and for how long not."""
        limit = self.limit_for(key)
        if limit is None:
            return None
        wait = await self.buckets.take(str(key.id), limit.rate_per_s, limit.burst)
        if wait <= 0:
            return None
        refusal = Refusal(limit=limit, retry_after_s=max(1, math.ceil(wait - 1e-6)))
        self.refused += 1
        self._log_refusal(key, refusal)
        return refusal

    def _log_refusal(self, key: ApiKey, refusal: Refusal) -> None:
        """One line per key at most every 10 s, counting the refusals in between."""
        now = time.monotonic()
        last, since = self._logged.get(key.id, (-math.inf, 0))
        if now - last < _LOG_EVERY_S:
            self._logged[key.id] = (last, since + 1)
            return
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[key.id] = (now, 0)
        more = f" ({since} more refused since the last line)" if since else ""
        log.info("API key %r over its rate limit of %s; answering 429, retry after %d s%s",
                 key.name, refusal.limit.describe(), refusal.retry_after_s, more)

    def state(self) -> dict[str, Any]:
        return {"default_rate_per_s": self.default_rate, "default_burst": self.default_burst,
                "refused": self.refused, **self.buckets.state()}
