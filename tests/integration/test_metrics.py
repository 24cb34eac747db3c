"""GET /metrics on a real stack: gateway + SMSC simulator + Postgres + Redis.

The metrics are attached to a started :class:`Gateway` the way ``Gateway.start`` is to wire
them (observers on the binds, the ledger and the keyword router; scrape-time sources on the
store, the links and the arq queues), and ``/metrics`` is served by ``create_app`` with the
extension, on its own port, so the API-key middleware is the real one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import aiohttp
import pytest
from aiohttp import web
from smpplib import consts

from gateway.domain import MessageClass, MessageStatus
from gateway.http import metrics as metrics_http
from gateway.http.app import create_app
from gateway.metrics import Metrics
from gateway.service import Gateway
from gateway.store.apikeys import ApiKeyStore
from tests.integration.conftest import MakeStack, Stack, numbers
from tests.unit.test_metrics import Clock, parse, value

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Metered:
    def __init__(self, st: Stack, metrics: Metrics, clock: Clock, url: str) -> None:
        self.st = st
        self.metrics = metrics
        self.clock = clock
        self.url = url

    async def scrape(self, headers: dict[str, str] | None = None) -> Scrape:
        async with aiohttp.ClientSession() as http, \
                http.get(self.url, headers=headers or {}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return parse(await resp.read())

    async def send(self, n: int, label: str) -> list[str]:
        ids = [(await self.st.send(to=to, text=f"{label} {i}"))["id"]
               for i, to in enumerate(numbers(n))]
        status = await self.st.wait_terminal(ids)
        assert set(status.values()) == {"delivered"}, status
        return ids


def attach(gw: Gateway, metrics: Metrics) -> None:
    """What Gateway.start does once wired (observers are passed at construction there)."""
    assert gw.ledger is not None and gw.keywords is not None
    assert gw.store is not None and gw.queue is not None
    for link in gw.links.values():
        for bind in link.client.binds:
            bind.observer = metrics
    gw.ledger.observer = metrics
    gw.keywords.observer = metrics
    metrics.watch_messages(gw.store)
    metrics.watch_links(gw.links)
    metrics.watch_arq(gw.queue)


MakeMetered = Callable[..., Awaitable[Metered]]


@pytest.fixture
async def make_metered(make_stack: MakeStack) -> AsyncIterator[MakeMetered]:
    runners: list[web.AppRunner] = []

    async def factory(*, public: bool = True, **stack: object) -> Metered:
        st = await make_stack(**stack)
        gw = st.gw
        assert gw.intake is not None and gw.store is not None and gw.pool is not None
        clock = Clock()
        metrics = Metrics(clock=clock)
        attach(gw, metrics)
        app = create_app(intake=gw.intake, store=gw.store, apikeys=ApiKeyStore(gw.pool),
                         health=gw.health, extensions=[
                             partial(metrics_http.setup, metrics=metrics, public=public)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return Metered(st, metrics, clock, f"http://127.0.0.1:{port}/metrics")

    yield factory
    for runner in runners:
        await runner.cleanup()


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_counts_after_sending_through_the_simulator(make_metered: MakeMetered) -> None:
    m = await make_metered()
    ids = await m.send(6, "metrics")
    assert m.st.gw.queue is not None  # three deferred retries wait in the bulk lane
    for i in range(3):
        await m.st.gw.queue.enqueue_send([uuid.uuid4()], job_id=f"t:{i}", defer_s=3600,
                                         bulk=True)

    async def care_lane_drained() -> bool:
        return value(await m.scrape(), "smsgw_arq_queue_depth", lane="care") == 0

    await wait_for(care_lane_drained)
    s = await m.scrape()
    assert value(s, "smsgw_smpp_submit_latency_seconds_count", link="default") == 6
    assert value(s, "smsgw_smpp_submit_results_total", link="default", status="ESME_ROK") == 6
    assert value(s, "smsgw_smpp_throttled_total", link="default",
                 status="ESME_RTHROTTLED") == 0
    assert value(s, "smsgw_smpp_reconnects_total", link="default") == 0
    assert m.st.gw.pool is not None  # a receipt may overtake its recorded submit result
    pending = await m.st.gw.pool.fetchval("SELECT count(*) FROM pending_receipts")
    assert (value(s, "smsgw_receipts_unmatched_total", link="default") or 0) == pending
    counts = {(c, st): value(s, "smsgw_messages", **{"class": c.value, "status": st.value})
              for c in MessageClass for st in MessageStatus}
    assert counts.pop((MessageClass.CARE, MessageStatus.DELIVERED)) == len(ids)
    assert set(counts.values()) == {0}  # every other pair is there, at 0
    assert value(s, "smsgw_smpp_window_in_use", link="default", bind="default-trx1") == 0
    assert value(s, "smsgw_link_queue_depth", link="default") == 0
    assert value(s, "smsgw_link_rate_tps", link="default") == float("inf")
    assert value(s, "smsgw_arq_queue_depth", lane="bulk") == 3

    # one more: the counters move at once, the Postgres counts only once the cache expires
    await m.send(1, "metrics again")
    s = await m.scrape()
    assert value(s, "smsgw_smpp_submit_results_total", link="default", status="ESME_ROK") == 7
    assert value(s, "smsgw_messages", **{"class": "care", "status": "delivered"}) == 6
    m.clock.now += 5.0
    s = await m.scrape()
    assert value(s, "smsgw_messages", **{"class": "care", "status": "delivered"}) == 7


async def test_throttle_responses_are_counted(make_metered: MakeMetered) -> None:
    rthrottled = int(consts.SMPP_ESME_RTHROTTLED)
    m = await make_metered(sim={"submit_error_status": rthrottled, "submit_error_count": 2},
                           smpp={"throttle_pause_s": 0.05})
    await m.send(1, "throttled")
    s = await m.scrape()
    assert value(s, "smsgw_smpp_throttled_total", link="default",
                 status="ESME_RTHROTTLED") == 2
    assert value(s, "smsgw_smpp_submit_results_total", link="default",
                 status="ESME_RTHROTTLED") == 2
    assert value(s, "smsgw_smpp_submit_results_total", link="default", status="ESME_ROK") == 1
    assert value(s, "smsgw_smpp_submit_latency_seconds_count", link="default") == 3
    assert m.st.gw.links["default"].throttled == 2


async def test_reconnects_are_counted(make_metered: MakeMetered) -> None:
    m = await make_metered()
    assert await m.st.sim.drop_connections() == 1
    client = m.st.gw.client
    assert client is not None

    async def rebound() -> bool:
        return client.binds[0].reconnects == 1 and client.bound

    await wait_for(rebound)
    s = await m.scrape()
    assert value(s, "smsgw_smpp_reconnects_total", link="default") == 1
    await m.send(2, "after reconnect")


async def test_receipts_ahead_of_their_response_are_counted_unmatched(
        make_metered: MakeMetered) -> None:
    m = await make_metered(sim={"receipt_before_resp": True, "resp_delay_s": 0.3})
    await m.send(3, "early")
    s = await m.scrape()
    assert value(s, "smsgw_receipts_unmatched_total", link="default") == 3
    assert m.st.gw.pool is not None
    assert await m.st.gw.pool.fetchval("SELECT count(*) FROM pending_receipts") == 3
    # and the latency includes the SMSC's 0.3 s delay: submit_sm written to its resp
    assert value(s, "smsgw_smpp_submit_latency_seconds_count", link="default") == 3
    assert value(s, "smsgw_smpp_submit_latency_seconds_bucket", link="default",
                 le="0.25") == 0
    assert (value(s, "smsgw_smpp_submit_latency_seconds_sum", link="default") or 0) >= 0.9


async def test_mo_by_keyword(make_metered: MakeMetered) -> None:
    m = await make_metered()
    handsets = ["84" + n[1:] for n in numbers(4)]
    for handset, text in zip(handsets, ("hd", "Hủy QC", "xin chao", "HD"), strict=True):
        await m.st.sim.inject_mo(source=handset, destination="8088", text=text)

    async def all_handled() -> bool:
        s = await m.scrape()
        return sum(v for (name, _), v in s.items() if name == "smsgw_mo_messages_total") >= 4

    await wait_for(all_handled)
    s = await m.scrape()
    assert value(s, "smsgw_mo_messages_total", keyword="HD") == 2
    assert value(s, "smsgw_mo_messages_total", keyword="TC") == 1  # "HỦY QC" is TC's alias
    assert value(s, "smsgw_mo_messages_total", keyword="none") == 1


async def test_metrics_need_a_key_when_not_public(make_metered: MakeMetered) -> None:
    m = await make_metered(public=False)
    assert m.st.gw.pool is not None
    _, key = await ApiKeyStore(m.st.gw.pool).create("prometheus", ("metrics:read",))
    async with aiohttp.ClientSession() as http:
        async with http.get(m.url) as resp:
            assert resp.status == 401
        async with m.st.http.get(m.url) as resp:  # a key without the scope
            assert resp.status == 403
            assert "metrics:read" in (await resp.json())["error"]["reason"]
    s = await m.scrape({"Authorization": f"Bearer {key}"})
    assert value(s, "smsgw_smpp_reconnects_total", link="default") == 0


async def test_metrics_are_public_by_default(make_metered: MakeMetered) -> None:
    m = await make_metered()
    s = await m.scrape()  # no Authorization header
    assert value(s, "smsgw_link_queue_depth", link="default") == 0


async def test_the_gateway_serves_its_own_metrics(make_stack: MakeStack) -> None:
    st = await make_stack()
    assert isinstance(st.gw.metrics, Metrics)
    await st.send(to=numbers(1)[0], text="wired")
    async with aiohttp.ClientSession() as http:  # no key: public by default

        async def counted() -> bool:
            async with http.get(f"{st.base}/metrics") as resp:
                assert resp.status == 200
                s = parse(await resp.read())
            return value(s, "smsgw_smpp_submit_results_total", link="default",
                         status="ESME_ROK") == 1

        await wait_for(counted)
