"""Postgres and Redis restarted under a running gateway, which must ride it out on its own.

Both run as throwaway servers of this test (their own data directory and free port), so
they can be stopped and started without touching the shared ones. While one is down,
``/healthz`` answers 503 naming it; the gateway keeps retrying and comes back without being
restarted; every message accepted meanwhile still reaches the SMSC and a terminal state.
(``test_e2e.py::test_redis_restart_mid_run_loses_nothing`` covers a Redis crash with no
traffic running; here traffic flows through both outages.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway import PROJECT_ROOT
from gateway.config import (
    Config,
    DatabaseConfig,
    GreetingsConfig,
    HttpConfig,
    RedisConfig,
    SendingConfig,
    SmppConfig,
)
from gateway.service import Gateway
from gateway.smpp.simulator import SimulatorConfig, SmscSimulator
from gateway.store.apikeys import ApiKeyStore
from gateway.store.migrate import ensure_database, migrate_dsn
from tests.integration.conftest import TERMINAL

PG_BIN = Path(os.environ.get("SMSGW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (PG_BIN / "postgres").exists(), reason=f"no PostgreSQL in {PG_BIN}"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"throwaway {what} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"throwaway {what} did not listen on {port} within {timeout:.0f}s")


class ThrowawayPostgres:
    """A private PostgreSQL cluster: initdb into a temp dir, ``postgres`` as a child process.

    Postgres refuses to run as root, so as root the cluster belongs to the ``postgres`` user
    and both initdb and the server run as that user."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="smsgw-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}
            shutil.chown(self.dir, "postgres", "postgres")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/smsgw"

    def init(self) -> None:
        subprocess.run([str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                        "-A", "trust", "-E", "UTF8", "--no-sync"], check=True,
                       capture_output=True, cwd=self.dir, **self._as)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=50"],
            stdout=subprocess.DEVNULL, stderr=(self.dir / "server.log").open("ab"),
            cwd=self.dir, **self._as)
        _wait_port(self.port, self.proc, "postgres")
        deadline = time.monotonic() + 30
        while subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                              str(self.port)], check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"throwaway postgres not ready; see {self.dir}/server.log")
            time.sleep(0.05)

    def stop_fast(self) -> None:
        """``pg_ctl stop -m fast``: roll back open transactions, close every session."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to the postmaster; its children exit on their own
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dsn = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres()
    try:
        pg.init()
        pg.start()
        asyncio.run(ensure_database(pg.dsn))
        asyncio.run(migrate_dsn(pg.dsn, PROJECT_ROOT / "sql"))
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def redis_server() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class Traffic:
    """Posts numbered messages at a steady pace; retries failures with the same key."""

    base: str
    http: aiohttp.ClientSession
    accepted: dict[int, str] = field(default_factory=dict)  # number → message id
    refused: int = 0  # answers ≥ 500 or no answer, each retried

    async def post(self, n: int) -> None:
        body = {"to": to(n), "text": text_of(n), "idempotency_key": f"restart-{n}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.post(f"{self.base}/v1/messages", json=body) as resp:
                    data = await resp.json()
                    if resp.status in (200, 202):
                        self.accepted[n] = data["id"]
                        return
                    assert resp.status >= 500 or resp.status == 429, (resp.status, data)
            self.refused += 1
            await asyncio.sleep(0.1)
        raise AssertionError(f"message {n} was never accepted")

    async def run(self, numbers: range, rate: float) -> None:
        tasks = []
        for n in numbers:
            tasks.append(asyncio.create_task(self.post(n)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)


def to(n: int) -> str:
    return f"0902{n:06d}"


def text_of(n: int) -> str:
    return f"Restart {n}: cuoc thang 11/2026 la 99.000d."


async def health(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def wait_health(http: aiohttp.ClientSession, base: str, *, ok: bool,
                      timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = await health(http, base)
        if (status == 200) == ok:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/healthz never became {'200' if ok else '503'}: {body}")


@pytest.fixture
async def stack(postgres: ThrowawayPostgres, redis_server: ThrowawayRedis
                ) -> AsyncIterator[tuple[Gateway, SmscSimulator, aiohttp.ClientSession, str]]:
    sim = SmscSimulator(SimulatorConfig(port=0, receipt_delay_s=0.05))
    await sim.start()
    cfg = Config(
        database=DatabaseConfig(dsn=postgres.dsn),
        redis=RedisConfig(dsn=redis_server.dsn, queue_name=f"smsgw:test:{uuid.uuid4().hex}",
                          bulk_queue_name=f"smsgw:test-bulk:{uuid.uuid4().hex}"),
        http=HttpConfig(port=0),
        smpp=SmppConfig(port=sim.port, reconnect_min_s=0.05, reconnect_max_s=0.2,
                        response_timeout_s=2.0),
        sending=SendingConfig(sweep_interval_s=0.3, stale_queued_s=1.0, stale_submitting_s=6.0),
        greetings=GreetingsConfig(enabled=False),
    )
    gw = Gateway(cfg)
    http: aiohttp.ClientSession | None = None
    try:
        await gw.start()
        assert gw.pool is not None and await gw.wait_bound(10)
        _, key = await ApiKeyStore(gw.pool).create("restarts", ("messages:send",),
                                                   rate_per_s=0)  # no request rate limit
        http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"},
                                     timeout=aiohttp.ClientTimeout(total=10))
        yield gw, sim, http, f"http://127.0.0.1:{gw.http_port}"
    finally:
        if http is not None:
            await http.close()
        if postgres.proc is None or postgres.proc.poll() is not None:
            postgres.start()  # a test that failed mid-outage: let the gateway stop cleanly
        if redis_server.proc is None or redis_server.proc.poll() is not None:
            redis_server.start()
        await gw.stop(timeout=5)
        await sim.stop()


async def test_postgres_then_redis_restart_under_traffic(
        stack: tuple[Gateway, SmscSimulator, aiohttp.ClientSession, str],
        postgres: ThrowawayPostgres, redis_server: ThrowawayRedis) -> None:
    gw, sim, http, base = stack
    traffic = Traffic(base, http)
    sending = asyncio.create_task(traffic.run(range(600), rate=100))
    try:
        await asyncio.sleep(1.0)
        # -- Postgres: a fast shutdown kills every session of the gateway's pool ------------
        postgres.stop_fast()
        body = await wait_health(http, base, ok=False, timeout=10)
        assert body["postgres"] is False and body["redis"] is True
        await asyncio.sleep(1.5)  # intake, claims, ledger writes and the sweeper all fail
        status, body = await health(http, base)
        assert status == 503 and body["postgres"] is False
        async with http.post(f"{base}/v1/messages",
                             json={"to": to(9999), "text": "while Postgres is down"}) as resp:
            refused = await resp.json()
            assert resp.status == 503, refused  # not a bare 500
            assert "Postgres" in refused["error"]["reason"]
            assert resp.headers["Retry-After"] == "5"
        postgres.start()
        body = await wait_health(http, base, ok=True, timeout=30)
        assert body["postgres"] is True
        await asyncio.sleep(1.0)
        # -- Redis: every queued job is gone with it -----------------------------------------
        redis_server.stop()
        body = await wait_health(http, base, ok=False, timeout=10)
        assert body["redis"] is False and body["postgres"] is True
        await asyncio.sleep(1.5)
        status, body = await health(http, base)
        assert status == 503 and body["redis"] is False
        redis_server.start()
        await wait_health(http, base, ok=True, timeout=30)
        await sending
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    assert traffic.refused > 0  # requests did fail while Postgres was down
    assert len(traffic.accepted) == 600
    await _assert_all_delivered_once(postgres.dsn, sim, traffic)
    assert gw.pool is not None and await gw.wait_bound(1)  # same gateway, never restarted


async def test_send_jobs_failing_while_postgres_is_down_leave_the_sender_whole(
        stack: tuple[Gateway, SmscSimulator, aiohttp.ClientSession, str],
        postgres: ThrowawayPostgres) -> None:
    # Send jobs keep coming up while Postgres is down (enqueued just before it went, retries
    # deferred to then, the sweeper's); each one's claim fails. None may keep a share of the
    # sender's capacity (claimed-but-unanswered slots), or sending never resumes.
    gw, sim, http, base = stack
    assert gw.queue is not None and gw.sender is not None
    postgres.stop_fast()
    await wait_health(http, base, ok=False, timeout=10)
    for _ in range(gw.sender.capacity + 5):
        await gw.queue.enqueue_send([uuid.uuid4()])
    await asyncio.sleep(1.0)  # the worker runs them all against the dead database
    postgres.start()
    await wait_health(http, base, ok=True, timeout=30)
    traffic = Traffic(base, http)
    await traffic.run(range(100), rate=200)
    await _assert_all_delivered_once(postgres.dsn, sim, traffic, timeout=20)


async def _assert_all_delivered_once(dsn: str, sim: SmscSimulator, traffic: Traffic,
                                     timeout: float = 60) -> None:
    """Every accepted message delivered and at the SMSC; twice only if its events show the
    ambiguous window; one row per message."""
    ids = list(traffic.accepted.values())
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT id::text, status FROM messages "
                                    "WHERE id = ANY($1::uuid[])", ids)
            statuses = {r["id"]: r["status"] for r in rows}
            if all(s in TERMINAL for s in statuses.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        ambiguous = {r["id"] for r in await conn.fetch(
            "SELECT DISTINCT message_id::text AS id FROM message_events "
            "WHERE detail LIKE '%ambiguous%'")}
        assert await conn.fetchval("SELECT count(*) FROM messages") == len(ids)
    finally:
        await conn.close()
    assert len(statuses) == len(ids)
    assert collections.Counter(statuses.values()) == {"delivered": len(ids)}
    at_smsc = {n: len(sim.messages("84" + to(n)[1:])) for n in traffic.accepted}
    assert [n for n, times in at_smsc.items() if times == 0] == []  # nothing lost
    doubled = {traffic.accepted[n] for n, times in at_smsc.items() if times > 1}
    assert doubled <= ambiguous
