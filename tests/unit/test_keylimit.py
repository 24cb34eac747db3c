"""Which limit applies to an API key: its own rate/burst or the gateway's defaults. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.http.keylimit import KeyLimit, describe_key_limit, key_limit
from gateway.store.apikeys import ApiKey


def key(rate: float | None = None, burst: int | None = None) -> ApiKey:
    return ApiKey(id=1, name="billing", prefix="abcdefgh", scopes=("messages:send",),
                  created_at=datetime.now(UTC), revoked_at=None, rate_per_s=rate, burst=burst)


@pytest.mark.parametrize(("rate", "burst", "expected"), [
    (None, None, KeyLimit(50.0, 100, default=True)),  # both defaults
    (None, 7, KeyLimit(50.0, 7, default=True)),  # default rate, own burst
    (20.0, 40, KeyLimit(20.0, 40, default=False)),
    (20.0, None, KeyLimit(20.0, 40, default=False)),  # burst: 2 s of the rate, like 100 / 50
    (0.1, None, KeyLimit(0.1, 1, default=False)),  # never below one request
    (0.0, None, None),  # 0 = no limit for this key
    (0.0, 5, None),
])
def test_key_limit(rate: float | None, burst: int | None, expected: KeyLimit | None) -> None:
    assert key_limit(key(rate, burst), default_rate=50.0, default_burst=100) == expected


def test_no_default_limit() -> None:
    assert key_limit(key(), default_rate=0.0, default_burst=100) is None
    # a key's own rate still applies; its derived burst is one second's worth
    assert key_limit(key(30.0), default_rate=0.0, default_burst=100) == KeyLimit(30.0, 30,
                                                                                 default=False)


def test_describe() -> None:
    assert describe_key_limit(key(20.0, 40)) == "20/s burst 40"
    assert describe_key_limit(key()) == "default 50/s burst 100"
    assert describe_key_limit(key(0.0)) == "no limit"
    assert describe_key_limit(key(), default_rate=0.0) == "default: no limit"
    assert KeyLimit(0.5, 3, default=False).describe() == "0.5 requests/s (burst 3)"
