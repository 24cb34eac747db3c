"""Subscriber self-service through the whole gateway: the simulator injects the MO over SMPP,
the keyword router acts, and the reply reaches the simulator as a care SMS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.config import BillingConfig
from gateway.domain import Encoding, MessageClass, MessageStatus, Priority
from gateway.store.messages import NewMessage
from tests.integration.conftest import MakeStack, Stack, numbers


async def _replies(st: Stack, msisdn: str, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = st.sim.messages(msisdn)
        if len(got) >= count:
            return got
        await asyncio.sleep(0.05)
    return st.sim.messages(msisdn)


@pytest.fixture
async def slow_billing() -> AsyncIterator[str]:
    """A billing API that never answers in time."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/bill", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/bill"
    await runner.cleanup()


async def test_tc_mid_campaign_cancels_pending_ads_and_confirms_once(make_stack: MakeStack
                                                                      ) -> None:
    st = await make_stack()
    assert st.gw.store is not None
    [to] = numbers(1)
    msisdn = "84" + to[1:]
    # a campaign's advertising messages for this number still waiting in the queue
    pending = [(await st.gw.store.create(NewMessage(
        msisdn=msisdn, sender="KHUYENMAI", body=f"[QC] uu dai {i}. Tu choi QC soan TC gui 1543",
        encoding=Encoding.GSM7, segments=1, message_class=MessageClass.ADVERTISING,
        priority=Priority.BULK)))[0].id for i in range(3)]
    await st.sim.inject_mo(source=msisdn, destination="1543", text="tu chối")
    [reply] = await _replies(st, msisdn, 1)
    assert "từ chối" in reply.lower() and "[QC]" not in reply  # a confirmation, not an ad
    for mid in pending:
        rec = await st.gw.store.get(mid)
        assert rec is not None and rec.status is MessageStatus.CANCELLED
    await st.sim.inject_mo(source=msisdn, destination="1543", text="TC")  # again: no 2nd reply
    await asyncio.sleep(1.0)
    assert len(st.sim.messages(msisdn)) == 1


async def test_bill_lookup_falls_back_when_the_billing_api_times_out(
        make_stack: MakeStack, slow_billing: str) -> None:
    st = await make_stack(billing=BillingConfig(endpoint=slow_billing, timeout_s=0.5))
    [to] = numbers(1)
    msisdn = "84" + to[1:]
    async with st.http.post(f"{st.base}/v1/events", json={
            "event_id": f"bill-{msisdn}", "type": "bill_issued", "msisdn": to,
            "data": {"full_name": "Lê Văn Tám", "amount": 345000, "period": "11/2026",
                     "due_date": "2026-12-20"}}) as resp:
        assert resp.status == 202, await resp.text()
    await _replies(st, msisdn, 1)  # the bill notice itself
    await st.sim.inject_mo(source=msisdn, destination="1543", text="kt  cước")
    replies = await _replies(st, msisdn, 2)
    assert len(replies) == 2
    assert "345.000" in replies[1]  # from Postgres: the API timed out


async def test_destructive_request_needs_y_and_help_for_unknown(make_stack: MakeStack) -> None:
    st = await make_stack()
    [to] = numbers(1)
    msisdn = "84" + to[1:]
    await st.sim.inject_mo(source=msisdn, destination="1543", text="Tạm ngưng")
    [ask] = await _replies(st, msisdn, 1)
    assert "Y" in ask
    await st.sim.inject_mo(source=msisdn, destination="1543", text="y")
    replies = await _replies(st, msisdn, 2)
    assert len(replies) == 2 and "YC" in replies[1]  # the reference number
    await st.sim.inject_mo(source=msisdn, destination="1543", text="xin chao")
    await st.sim.inject_mo(source=msisdn, destination="1543", text="blabla")
    replies = await _replies(st, msisdn, 3)
    await asyncio.sleep(0.8)
    assert len(st.sim.messages(msisdn)) == 3  # help once per hour for unknown text
