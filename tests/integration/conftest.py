"""Fixtures for integration tests that run the whole gateway against the SMSC simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from gateway.compliance import AdWindow, utc_now
from gateway.compliance import daytime_clock as daytime_clock_for
from gateway.config import (
    AdvertisingConfig,
    Config,
    DatabaseConfig,
    HttpConfig,
    RedisConfig,
    SendingConfig,
    SmppConfig,
)
from gateway.service import Gateway
from gateway.smpp.simulator import SimulatorConfig, SmscSimulator
from gateway.store.apikeys import ApiKeyStore

TERMINAL = {"delivered", "undelivered", "expired", "rejected", "failed"}


@dataclasses.dataclass
class Stack:
    gw: Gateway
    sim: SmscSimulator
    http: aiohttp.ClientSession
    base: str

    async def send(self, **body: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.base}/v1/messages", json=body) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status in (200, 202), (resp.status, data)
            return data

    async def get(self, mid: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/v1/messages/{mid}") as resp:
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data

    async def wait_terminal(self, ids: list[str], timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert self.gw.store is not None
            for mid in ids:
                if status.get(mid) in TERMINAL:
                    continue
                rec = await self.gw.store.get(uuid.UUID(mid))
                assert rec is not None
                status[mid] = rec.status.value
            if all(s in TERMINAL for s in status.values()) and len(status) == len(ids):
                return status
            await asyncio.sleep(0.05)
        return status


MakeStack = Callable[..., Awaitable[Stack]]


def daytime_clock() -> Callable[[], datetime]:
    """Real time inside advertising hours; outside, real time shifted to 10:00 local today, so
    tests that send advertising do not depend on the hour CI runs at (tests of the window
    inject their own clock)."""
    return daytime_clock_for(AdWindow.from_config(AdvertisingConfig())) or utc_now


@pytest.fixture
async def make_stack(fresh_pg_dsn: str, redis_dsn: str) -> AsyncIterator[MakeStack]:
    made: list[tuple[Gateway, SmscSimulator, aiohttp.ClientSession]] = []

    async def factory(sim: dict[str, Any] | None = None, smpp: dict[str, Any] | None = None,
                      sending: dict[str, Any] | None = None, redis: str | None = None,
                      clock: Callable[[], datetime] | None = None, **sections: Any) -> Stack:
        simulator = SmscSimulator(SimulatorConfig(port=0, receipt_delay_s=0.05, **(sim or {})))
        await simulator.start()
        smpp_cfg = {"port": simulator.port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2,
                    "response_timeout_s": 5.0, **(smpp or {})}
        cfg = Config(
            database=DatabaseConfig(dsn=fresh_pg_dsn),
            redis=RedisConfig(dsn=redis or redis_dsn,
                              queue_name=f"smsgw:test:{uuid.uuid4().hex}",
                              bulk_queue_name=f"smsgw:test-bulk:{uuid.uuid4().hex}"),
            http=HttpConfig(port=0),
            smpp=SmppConfig(**smpp_cfg),
            sending=SendingConfig(**{"sweep_interval_s": 3600.0, **(sending or {})}),
            **sections,
        )
        gw = Gateway(cfg, clock=clock or daytime_clock())
        await gw.start()
        assert gw.pool is not None and gw.client is not None
        _, key = await ApiKeyStore(gw.pool).create(f"t-{uuid.uuid4().hex[:8]}",
                                                   ("messages:send", "events:write"),
                                                   rate_per_s=0)
        http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
        made.append((gw, simulator, http))
        assert await gw.client.wait_bound(5)
        return Stack(gw, simulator, http, f"http://127.0.0.1:{gw.http_port}")

    yield factory
    for gw, simulator, http in made:
        await http.close()
        await gw.stop(timeout=5)
        await simulator.stop()


def numbers(n: int, start: int = 0) -> list[str]:
    """n fresh national mobile numbers, unique per call (tests must not see each other)."""
    base = 901000000 + (uuid.uuid4().int % 900) * 1000
    return [f"0{base + start + i}" for i in range(n)]
