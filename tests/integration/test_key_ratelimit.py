"""Per-API-key rate limit: real Postgres keys, real Redis buckets, 429 with Retry-After.

Requests are ``GET /v1/messages/<random id>``: a key under its limit gets 404 (valid key,
unknown message), over it 429 — no message is created. Each test uses its own Redis key prefix
and its own API keys. Buckets are given slow refill rates so the assertions do not depend on
how fast this (2-core) machine answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway import PROJECT_ROOT
from gateway.config import SendingConfig
from gateway.http.app import create_app
from gateway.http.keylimit import KeyRateLimiter
from gateway.intake import Intake
from gateway.store.apikeys import ApiKeyStore
from gateway.store.messages import MessageStore
from gateway.templating import TemplateRenderer

SEND = "messages:send"


async def _no_health() -> dict[str, Any]:
    raise AssertionError("health() is not called by these tests")


class Apps:
    """Builds gateway HTTP apps (each with its own Redis client and limiter, like separate
    processes) sharing this test's Redis key prefix; cleans up what it made."""

    def __init__(self, pool: asyncpg.Pool, redis_dsn: str) -> None:
        self.pool = pool
        self.redis_dsn = redis_dsn
        self.apikeys = ApiKeyStore(pool)
        self.prefix = f"smsgw:test:keyrate:{uuid.uuid4().hex[:10]}:"
        self._stack = contextlib.AsyncExitStack()

    async def client(self, *, redis_url: str | None = None, default_rate: float = 50.0,
                     default_burst: int = 100, **limiter: Any
                     ) -> tuple[TestClient[Any, Any], KeyRateLimiter]:
        redis: Redis = Redis.from_url(redis_url or self.redis_dsn, socket_connect_timeout=0.5)
        self._stack.push_async_callback(redis.aclose)
        key_limiter = KeyRateLimiter(redis, default_rate=default_rate,
                                     default_burst=default_burst, key_prefix=self.prefix,
                                     **limiter)
        store = MessageStore(self.pool)
        intake = Intake(store=store, queue=None, sending=SendingConfig(),
                        renderer=TemplateRenderer(PROJECT_ROOT / "templates_sms"))
        app = create_app(intake=intake, store=store, apikeys=self.apikeys, health=_no_health,
                         key_cache_ttl_s=0, key_limiter=key_limiter)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        self._stack.push_async_callback(client.close)
        return client, key_limiter

    async def key(self, *, rate: float | None = None, burst: int | None = None
                  ) -> tuple[str, str]:
        """(name, plaintext) of a new key with ``messages:send``."""
        name = f"rate-test-{uuid.uuid4().hex[:10]}"
        _, plaintext = await self.apikeys.create(name, [SEND], rate_per_s=rate, burst=burst)
        return name, plaintext

    async def close(self) -> None:
        await self._stack.aclose()


@pytest.fixture
async def apps(pg_pool: asyncpg.Pool, redis_dsn: str) -> AsyncIterator[Apps]:
    made = Apps(pg_pool, redis_dsn)
    try:
        yield made
    finally:
        await made.close()


async def hit(client: TestClient[Any, Any], key: str) -> tuple[int, Mapping[str, str], Any]:
    """(status, headers (case-insensitive), JSON body) of one request with ``key``."""
    resp = await client.get(f"/v1/messages/{uuid.uuid4()}",
                            headers={"Authorization": f"Bearer {key}"})
    return resp.status, resp.headers, await resp.json()


async def statuses(client: TestClient[Any, Any], key: str, n: int) -> list[int]:
    return [(await hit(client, key))[0] for _ in range(n)]


# --- one gateway ----------------------------------------------------------------------------


async def test_burst_is_allowed_then_429_with_retry_after(apps: Apps) -> None:
    client, limiter = await apps.client()
    name, key = await apps.key(rate=0.5, burst=3)
    assert await statuses(client, key, 3) == [404, 404, 404]
    status, headers, body = await hit(client, key)
    assert status == 429
    # one token every 2 s: the next one is ~2 s away (a little less once time has passed)
    assert headers["Retry-After"] in ("1", "2")
    assert headers["Content-Type"].startswith("application/json")
    assert "X-Request-Id" in headers
    assert set(body) == {"error"}
    reason = body["error"]["reason"]
    assert name in reason and "0.5 requests/s (burst 3)" in reason
    assert "Retry-After" in reason and f"smsgw apikey set-rate {name}" in reason
    assert limiter.refused == 1 and limiter.buckets.mode == "redis"
    assert (await hit(client, key))[0] == 429  # still over: refusals take nothing


async def test_allowed_again_after_retry_after(apps: Apps) -> None:
    client, _ = await apps.client()
    _, key = await apps.key(rate=4, burst=2)
    assert await statuses(client, key, 2) == [404, 404]
    status, headers, _ = await hit(client, key)
    assert status == 429 and headers["Retry-After"] == "1"  # whole seconds, at least 1
    await asyncio.sleep(0.5)  # 4/s: 2 tokens back
    assert (await hit(client, key))[0] == 404


async def test_two_keys_are_independent(apps: Apps) -> None:
    client, _ = await apps.client()
    _, first = await apps.key(rate=0.2, burst=2)
    _, second = await apps.key(rate=0.2, burst=2)
    assert await statuses(client, first, 3) == [404, 404, 429]
    assert await statuses(client, second, 3) == [404, 404, 429]
    assert (await hit(client, first))[0] == 429


async def test_default_limit_and_unlimited_keys(apps: Apps) -> None:
    client, _ = await apps.client(default_rate=0.2, default_burst=3)
    _, default = await apps.key()
    assert await statuses(client, default, 4) == [404, 404, 404, 429]
    status, _, body = await hit(client, default)
    assert status == 429 and "0.2 requests/s (burst 3)" in body["error"]["reason"]
    _, unlimited = await apps.key(rate=0)
    assert set(await statuses(client, unlimited, 20)) == {404}


async def test_unknown_keys_cost_no_token(apps: Apps) -> None:
    client, limiter = await apps.client(default_rate=0.1, default_burst=1)
    for _ in range(5):
        resp = await client.get(f"/v1/messages/{uuid.uuid4()}",
                                headers={"Authorization": "Bearer smsgw_" + "x" * 43})
        assert resp.status == 401
    assert limiter.buckets.redis_calls == 0


async def test_set_rate_applies_to_the_running_gateway(apps: Apps) -> None:
    client, _ = await apps.client()  # key cache off: the change is seen at once
    name, key = await apps.key(rate=0.1, burst=1)
    assert await statuses(client, key, 2) == [404, 429]
    assert await apps.apikeys.set_rate(name, 0.1, 5) is not None
    # a bigger burst lets the waiting bucket fill further, but it is still empty now
    assert (await hit(client, key))[0] == 429
    assert await apps.apikeys.set_rate(name, 0, None) is not None  # no limit
    assert await statuses(client, key, 3) == [404, 404, 404]
    assert await apps.apikeys.set_rate("no-such-key", 1, None) is None
    with pytest.raises(ValueError, match="burst"):
        await apps.apikeys.set_rate(name, 1, 0)


# --- several gateway processes --------------------------------------------------------------


async def test_two_apps_on_one_redis_share_the_budget(apps: Apps) -> None:
    one, _ = await apps.client()
    two, _ = await apps.client()
    _, key = await apps.key(rate=0.1, burst=4)
    got = [(await hit(app, key))[0] for app in (one, two, one, two, one, two)]
    assert got == [404, 404, 404, 404, 429, 429]


async def test_concurrent_requests_on_two_apps_never_exceed_the_burst(apps: Apps) -> None:
    one, _ = await apps.client()
    two, _ = await apps.client()
    _, key = await apps.key(rate=0.1, burst=10)
    results = await asyncio.gather(*(hit(one if i % 2 else two, key) for i in range(30)))
    got = [status for status, _, _ in results]
    assert got.count(404) == 10 and got.count(429) == 20, got
    assert all(h["Retry-After"] in ("9", "10") for s, h, _ in results if s == 429)


# --- Redis trouble --------------------------------------------------------------------------


async def test_redis_down_falls_back_to_a_local_bucket_and_warns_once(
        apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smsgw.ratelimit")
    client, limiter = await apps.client(redis_url="redis://127.0.0.1:1/0", retry_after_s=0.01,
                                        max_retry_after_s=0.01)
    _, key = await apps.key(rate=0.5, burst=3)
    got = []
    for _ in range(8):
        got.append(await hit(client, key))
        await asyncio.sleep(0.015)  # let it try Redis again every time
    assert [status for status, _, _ in got] == [404, 404, 404] + [429] * 5
    assert all(h["Retry-After"] in ("1", "2") for s, h, _ in got if s == 429)
    assert limiter.buckets.mode == "local" and limiter.buckets.redis_calls >= 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "API key rate limits" in warnings[0].getMessage()


class Proxy:
    """A TCP proxy to Redis that can be cut and restored (Redis "going down" under a gateway)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_redis_outage_and_recovery(apps: Apps, redis_dsn: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smsgw.ratelimit")
    host_port, _, db = redis_dsn.removeprefix("redis://").partition("/")
    host, _, port = host_port.partition(":")
    proxy = Proxy(host, int(port))
    await proxy.start()
    try:
        client, limiter = await apps.client(redis_url=f"redis://127.0.0.1:{proxy.port}/{db}",
                                            retry_after_s=0.05, max_retry_after_s=0.05)
        _, key = await apps.key(rate=0.05, burst=5)
        assert await statuses(client, key, 2) == [404, 404]  # counted in Redis
        await proxy.stop()
        # Redis is gone: the local bucket already knows about those 2 requests
        assert await statuses(client, key, 4) == [404, 404, 404, 429]
        assert limiter.buckets.mode == "local"
        await proxy.start()  # same port
        await asyncio.sleep(0.1)
        # back on Redis, whose bucket saw only the first 2 requests: 3 tokens left there
        assert (await hit(client, key))[0] == 404
        assert limiter.buckets.mode == "redis"
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Redis unreachable for API key rate limits" in m for m in messages) == 1
    assert any("Redis reachable again for API key rate limits" in m for m in messages)


# --- the CLI --------------------------------------------------------------------------------

def smsgw(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def line_of(listing: str, name: str) -> str:
    return next(line for line in listing.splitlines() if f" {name} " in line)


def test_cli_create_set_rate_and_list(fresh_pg_dsn: str, redis_dsn: str) -> None:
    env = {"SMSGW_DATABASE_DSN": fresh_pg_dsn, "SMSGW_REDIS_DSN": redis_dsn}
    made = smsgw("apikey", "create", "--name", "billing", "--rate", "20", "--burst", "40",
                 env=env)
    assert made.returncode == 0, made.stderr
    assert "rate limit 20/s burst 40" in made.stdout
    assert made.stdout.strip().splitlines()[-1].startswith("smsgw_")
    assert smsgw("apikey", "create", "--name", "ops", env=env).returncode == 0
    listed = smsgw("apikey", "list", env=env).stdout
    assert "20/s burst 40" in line_of(listed, "billing")
    assert "default 50/s burst 100" in line_of(listed, "ops")

    changed = smsgw("apikey", "set-rate", "billing", "--rate", "5", env=env)
    assert changed.returncode == 0, changed.stderr
    assert "5/s burst 10" in changed.stdout  # burst derived: 2 s of the rate
    assert smsgw("apikey", "set-rate", "ops", "--rate", "0.5", "--burst", "3",
                 env=env).returncode == 0
    listed = smsgw("apikey", "list", env=env).stdout
    assert "5/s burst 10" in line_of(listed, "billing")
    assert "0.5/s burst 3" in line_of(listed, "ops")
    assert "no limit" in smsgw("apikey", "set-rate", "1", "--rate", "0", env=env).stdout  # by id
    back = smsgw("apikey", "set-rate", "billing", "--rate", "default", env=env)
    assert "default 50/s burst 100" in back.stdout

    missing = smsgw("apikey", "set-rate", "nobody", "--rate", "1", env=env)
    assert missing.returncode == 1 and "no active key" in missing.stderr
    bad_rate = smsgw("apikey", "create", "--name", "x", "--rate", "-1", env=env)
    assert bad_rate.returncode == 2 and "not a rate" in bad_rate.stderr
    bad_burst = smsgw("apikey", "set-rate", "ops", "--rate", "1", "--burst", "0", env=env)
    assert bad_burst.returncode == 2 and "not a burst" in bad_burst.stderr
