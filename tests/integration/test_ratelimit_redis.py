"""The account token bucket shared through a real Redis (``redis_dsn``: a private db per run)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from gateway.ratelimit import RedisTokenBucket, Throttle

Clients = Callable[[], Awaitable[Redis]]


@pytest.fixture
async def clients(redis_dsn: str) -> AsyncIterator[Clients]:
    """Separate Redis clients, one per simulated gateway process."""
    made: list[Redis] = []

    async def factory() -> Redis:
        client: Redis = Redis.from_url(redis_dsn)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()


def account() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def greedy(bucket: RedisTokenBucket, seconds: float, cost: int = 1) -> int:
    """Acquire ``cost`` tokens back to back for ``seconds``; tokens granted before the deadline."""
    deadline = time.monotonic() + seconds
    granted = 0
    while True:
        await bucket.acquire(cost)
        if time.monotonic() > deadline:
            return granted
        granted += cost


async def test_two_processes_share_the_account_rate(clients: Clients) -> None:
    name = account()
    a = RedisTokenBucket(await clients(), name, 200)
    b = RedisTokenBucket(await clients(), name, 200)
    assert a.burst == 20
    got_a, got_b = await asyncio.gather(greedy(a, 2.0), greedy(b, 2.0))
    expected = 200 * 2 + 20
    assert abs(got_a + got_b - expected) <= 0.05 * expected, (got_a, got_b)
    assert min(got_a, got_b) > 0.3 * expected  # both processes got a fair share
    assert a.mode == b.mode == "redis" and a.fallback_grants == b.fallback_grants == 0


async def test_multi_segment_acquire_counts_segments(clients: Clients) -> None:
    name = account()
    a = RedisTokenBucket(await clients(), name, 100)
    b = RedisTokenBucket(await clients(), name, 100)
    got_a, got_b = await asyncio.gather(greedy(a, 1.0, cost=3), greedy(b, 1.0, cost=2))
    expected = 100 + 10
    assert abs(got_a + got_b - expected) <= 0.05 * expected + 3, (got_a, got_b)


async def test_request_larger_than_burst_does_not_deadlock(clients: Clients) -> None:
    bucket = RedisTokenBucket(await clients(), account(), 20)  # burst 2
    start = time.monotonic()
    await bucket.acquire(10)  # granted at once (full bucket), 8 in debt
    await bucket.acquire(10)  # waits until the bucket is full again: 10 / 20 s
    assert 0.45 <= time.monotonic() - start < 1.5


async def test_different_accounts_are_independent(clients: Clients) -> None:
    client = await clients()
    one = RedisTokenBucket(client, account(), 50)
    two = RedisTokenBucket(client, account(), 50)
    got_one, got_two = await asyncio.gather(greedy(one, 1.0), greedy(two, 1.0))
    # each account gets its own 50/s (+ burst 5); shared, each would get about half of that.
    # Generous lower bound: a busy machine can starve the greedy loops a little.
    for got in (got_one, got_two):
        assert 40 <= got <= 57, (got_one, got_two)


async def test_idle_keys_expire(clients: Clients) -> None:
    client = await clients()
    bucket = RedisTokenBucket(client, account(), 200, idle_ttl_ms=300)
    assert bucket.key == f"smsgw:tps:{bucket.account}"
    await bucket.acquire(5)
    assert 0 < await client.pttl(bucket.key) <= 300
    await asyncio.sleep(0.6)
    assert await client.exists(bucket.key) == 0
    await bucket.acquire(5)  # an expired key is a full bucket
    assert await client.exists(bucket.key) == 1


async def test_key_lives_until_the_bucket_would_be_full(clients: Clients) -> None:
    client = await clients()
    bucket = RedisTokenBucket(client, account(), 10, idle_ttl_ms=100)  # burst 1
    await bucket.acquire(30)  # 29 in debt: 3 s to refill
    assert 2500 < await client.pttl(bucket.key) <= 3000


async def test_redis_unreachable_falls_back_to_local_bucket_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        bucket = RedisTokenBucket(client, account(), 50, retry_after_s=0.05)  # burst 5
        caplog.set_level(logging.INFO, logger="smsgw.ratelimit")
        start = time.monotonic()
        for _ in range(30):
            await bucket.acquire(1)
        elapsed = time.monotonic() - start
    finally:
        await client.aclose()
    assert bucket.mode == "local" and bucket.fallback_grants == 30
    assert bucket.redis_calls > 1  # Redis was retried ...
    warnings = [r for r in caplog.records
                if r.name == "smsgw.ratelimit" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # ... but logged once
    assert "unreachable" in warnings[0].getMessage()
    assert 0.45 <= elapsed < 1.5  # the fallback still limits: 5 at once, 25 at 50/s


async def test_prefetch_keeps_the_rate_with_far_fewer_redis_calls(clients: Clients) -> None:
    bucket = RedisTokenBucket(await clients(), account(), 200, prefetch=10)
    got = await greedy(bucket, 2.0)
    expected = 200 * 2 + 20
    assert abs(got - expected) <= 0.05 * expected, got
    assert bucket.redis_calls < got / 3, (bucket.redis_calls, got)


async def test_prefetch_shared_by_two_processes(clients: Clients) -> None:
    name = account()
    a = RedisTokenBucket(await clients(), name, 1000, prefetch=25)
    b = RedisTokenBucket(await clients(), name, 1000, prefetch=25)
    got_a, got_b = await asyncio.gather(greedy(a, 2.0), greedy(b, 2.0))
    expected = 1000 * 2 + 100
    assert abs(got_a + got_b - expected) <= 0.05 * expected, (got_a, got_b)
    assert a.redis_calls + b.redis_calls < (got_a + got_b) / 4


async def test_trickle_with_prefetch_takes_one_token_at_a_time(clients: Clients) -> None:
    client = await clients()
    bucket = RedisTokenBucket(client, account(), 100, prefetch=50)
    for _ in range(5):
        await bucket.acquire(1)
        await asyncio.sleep(0.15)  # longer than the prefetch window
    raw = await client.hmget(bucket.key, ["t"])  # type: ignore[misc]  # redis-py's union type
    tokens = float(raw[0])
    assert tokens == pytest.approx(9, abs=0.01)  # burst 10: refilled, then one token taken
    assert bucket.redis_calls == 5


async def test_throttle_waits_for_the_shared_account_bucket(clients: Clients) -> None:
    name = account()
    links = [Throttle(None, shared=RedisTokenBucket(await clients(), name, 100)) for _ in "ab"]

    async def send(throttle: Throttle) -> int:
        deadline, segments = time.monotonic() + 1.0, 0
        while True:
            await throttle.acquire(2)
            if time.monotonic() > deadline:
                return segments
            segments += 2

    got = await asyncio.gather(*(send(link) for link in links))
    assert abs(sum(got) - 110) <= 0.05 * 110 + 2, got  # the links share the account's 100/s
    shared = links[0].state()["shared"]
    assert shared is not None and shared["mode"] == "redis" and shared["account"] == name


async def test_redis_that_never_answers_times_out_to_the_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, never answer
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client: Redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        bucket = RedisTokenBucket(client, account(), 100, redis_timeout_s=0.1)
        start = time.monotonic()
        for _ in range(10):
            await bucket.acquire(1)  # burst 10: all from the fallback once the call timed out
        assert time.monotonic() - start < 0.5
        assert bucket.mode == "local" and bucket.redis_calls == 1
        assert [r.levelname for r in caplog.records if r.name == "smsgw.ratelimit"] == ["WARNING"]
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_back_to_redis_when_it_is_reachable_again(
    clients: Clients, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    bucket = RedisTokenBucket(await clients(), account(), 100, retry_after_s=0.05)
    real_take = bucket._take
    outage = {"calls": 3}

    async def flaky(n: int, rate: float) -> tuple[int, int]:
        if outage["calls"] > 0:
            outage["calls"] -= 1
            bucket.redis_calls += 1
            raise RedisConnectionError("Connection refused")
        return await real_take(n, rate)

    monkeypatch.setattr(bucket, "_take", flaky)
    caplog.set_level(logging.INFO, logger="smsgw.ratelimit")
    await bucket.acquire(1)
    assert bucket.mode == "local"
    deadline = time.monotonic() + 3
    while bucket.mode == "local" and time.monotonic() < deadline:
        await bucket.acquire(1)
        await asyncio.sleep(0.01)
    assert bucket.mode == "redis" and outage["calls"] == 0
    levels = [r.levelname for r in caplog.records if r.name == "smsgw.ratelimit"]
    assert levels == ["WARNING", "INFO"]  # one warning for the whole outage, one recovery note
