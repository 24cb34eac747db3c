"""Decree 91/2020 at send time, with an injected clock: the 07:00–22:00 window (a message due
outside waits, never dropped), at most 3 advertising SMS per number per 24 h per advertiser,
and consent / Do-Not-Call checked again right before submit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from gateway.store.apikeys import ApiKeyStore
from gateway.store.consent import ConsentSource, ConsentStore
from tests.integration.conftest import MakeStack, Stack

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


class FakeClock:
    def __init__(self, local: datetime) -> None:
        self.now = local.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def set_local(self, local: datetime) -> None:
        self.now = local.astimezone(UTC)


def today_at(hour: int, minute: int = 0, days: int = 0) -> datetime:
    d = datetime.now(HCM).date() + timedelta(days=days)
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=HCM)


def number() -> str:
    return f"849{uuid.uuid4().int % 10**8:08d}"


async def send_ad(st: Stack, to: str, sender: str = "BRAND") -> dict[str, Any]:
    return await st.send(to=to, text="Uu dai thang 12 giam 20%", sender=sender,
                         **{"class": "advertising"})


async def wait_status(st: Stack, mid: str, want: set[str], timeout: float = 15) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    status = ""
    while asyncio.get_running_loop().time() < deadline:
        status = (await st.get(mid))["status"]
        if status in want:
            return status
        await asyncio.sleep(0.05)
    return status


async def test_outside_hours_held_then_sent_when_the_window_opens(make_stack: MakeStack
                                                                  ) -> None:
    clock = FakeClock(today_at(22, 30))
    st = await make_stack(clock=clock)
    to = number()
    msg = await send_ad(st, to)
    assert await wait_status(st, msg["id"], {"held"}) == "held"
    detail = await st.get(msg["id"])
    assert any("outside advertising hours" in e["detail"] for e in detail["events"])
    assert st.sim.messages(to) == []
    assert st.gw.pool is not None
    not_before = await st.gw.pool.fetchval("SELECT not_before FROM messages WHERE id = $1",
                                           uuid.UUID(msg["id"]))
    assert not_before == today_at(7, 0, days=1)
    await st.gw.sweep_once()  # still night: stays held
    assert (await st.get(msg["id"]))["status"] == "held"
    clock.set_local(today_at(7, 1, days=1))
    await st.gw.sweep_once()
    assert await wait_status(st, msg["id"], {"delivered"}) == "delivered"
    assert len(st.sim.messages(to)) == 1
    # care messages are not advertising: they go at any hour
    clock.set_local(today_at(23, 0, days=1))
    care = await st.send(to=to, text="Hoa don thang 11 cua quy khach la 150.000d")
    assert await wait_status(st, care["id"], {"delivered"}) == "delivered"


async def test_three_per_24h_per_advertiser_excess_deferred(make_stack: MakeStack) -> None:
    clock = FakeClock(today_at(10, 0))
    st = await make_stack(clock=clock)
    to = number()
    first = []
    for _ in range(3):
        first.append(await send_ad(st, to))
        assert await wait_status(st, first[-1]["id"], {"delivered"}) == "delivered"
    extra = [await send_ad(st, to) for _ in range(2)]
    for m in extra:
        assert await wait_status(st, m["id"], {"held"}) == "held"
        events = (await st.get(m["id"]))["events"]
        assert any("advertising cap" in e["detail"] for e in events)
    other = await send_ad(st, to, sender="OTHERBRAND")  # another advertiser's own budget
    assert await wait_status(st, other["id"], {"delivered"}) == "delivered"
    assert st.gw.pool is not None
    due = await st.gw.pool.fetch("SELECT not_before FROM messages WHERE id = ANY($1::uuid[])",
                                 [uuid.UUID(m["id"]) for m in extra])
    first_sent = await st.gw.pool.fetchval(
        "SELECT min(submitting_at) FROM messages WHERE id = ANY($1::uuid[])",
        [uuid.UUID(m["id"]) for m in first])
    for row in due:
        assert abs((row["not_before"] - (first_sent + timedelta(hours=24))).total_seconds()) < 5
    # 24 h later (and inside the window) they go
    clock.now = max(r["not_before"] for r in due) + timedelta(seconds=1)
    if not 7 <= clock.now.astimezone(HCM).hour < 22:
        clock.set_local(today_at(10, 0, days=2))
    await st.gw.sweep_once()
    for m in extra:
        assert await wait_status(st, m["id"], {"delivered"}) == "delivered"
    assert len(st.sim.messages(to)) == 6


async def test_history_counts_across_the_rolling_24h(make_stack: MakeStack) -> None:
    """Two sent 23 h ago and one 25 h ago: only one more may go now."""
    clock = FakeClock(today_at(12, 0))
    st = await make_stack(clock=clock)
    assert st.gw.pool is not None
    to = number()
    for hours in (23, 23, 25):
        await st.gw.pool.execute(
            "INSERT INTO messages (msisdn, sender, body, encoding, segments, class, status, "
            "submitting_at, submitted_at) VALUES ($1, 'BRAND', 'x', 'gsm7', 1, 'advertising', "
            "'delivered', $2, $2)", to, clock.now - timedelta(hours=hours))
    a, b = await send_ad(st, to), await send_ad(st, to)
    statuses = sorted([await wait_status(st, a["id"], {"delivered", "held"}),
                       await wait_status(st, b["id"], {"delivered", "held"})])
    assert statuses == ["delivered", "held"]


async def test_refusal_and_dnc_rechecked_before_submit(make_stack: MakeStack) -> None:
    clock = FakeClock(today_at(10, 0))
    st = await make_stack(clock=clock, smpp={"tps": 10})
    assert st.gw.pool is not None
    keys = ApiKeyStore(st.gw.pool)
    _, maker = await keys.create(f"m-{uuid.uuid4().hex[:6]}", ("campaigns:write",),
                                 rate_per_s=0)
    _, checker = await keys.create(f"c-{uuid.uuid4().hex[:6]}", ("campaigns:approve",),
                                   rate_per_s=0)
    nums = [number() for _ in range(40)]
    form = aiohttp.FormData()
    form.add_field("file", ("so_dien_thoai\n" + "\n".join(nums)).encode(), filename="l.csv")
    for k, v in {"name": "ads", "class": "advertising", "text": "Giam gia 20%",
                 "sender": "BRAND"}.items():
        form.add_field(k, v)
    async with st.http.post(f"{st.base}/v1/campaigns", data=form,
                            headers={"Authorization": f"Bearer {maker}"}) as resp:
        view = await resp.json()
        assert resp.status == 201, view
    cid = view["id"]
    # after the upload: the last two numbers refuse / get on the Do-Not-Call list
    consent = ConsentStore(st.gw.pool)
    await consent.refuse(nums[-1], source=ConsentSource.SMS, source_ref="test",
                         at=datetime.now(UTC))
    await consent.add_dnc([nums[-2]], source="dnc-update")
    for key, action in ((checker, "approve"), (maker, "start")):
        async with st.http.post(f"{st.base}/v1/campaigns/{cid}/{action}",
                                headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200, await resp.text()
    for _ in range(200):
        async with st.http.get(f"{st.base}/v1/campaigns/{cid}",
                               headers={"Authorization": f"Bearer {maker}"}) as resp:
            view = await resp.json()
        if view["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    assert view["status"] == "completed", view["progress"]
    assert view["progress"]["counts"]["cancelled"] == 2
    assert st.sim.messages(nums[-1]) == [] and st.sim.messages(nums[-2]) == []
    rows = await st.gw.pool.fetch(
        "SELECT msisdn, last_error FROM messages WHERE campaign_id = $1 AND status = "
        "'cancelled'", uuid.UUID(cid))
    reasons = {r["msisdn"]: r["last_error"] for r in rows}
    assert "opted out" in reasons[nums[-1]] and "Do-Not-Call" in reasons[nums[-2]]


async def test_dnc_import_over_http(make_stack: MakeStack, tmp_path: Path) -> None:
    st = await make_stack()
    assert st.gw.pool is not None
    _, key = await ApiKeyStore(st.gw.pool).create(f"s-{uuid.uuid4().hex[:6]}",
                                                  ("subscribers:write",), rate_per_s=0)
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "dnc.csv"
    content = shared.read_bytes() + b"\nnot-a-number\n"
    form = aiohttp.FormData()
    form.add_field("file", content, filename="dnc.csv")
    form.add_field("source", "national-dnc-2026-11")
    async with st.http.post(f"{st.base}/v1/dnc/import", data=form,
                            headers={"Authorization": f"Bearer {key}"}) as resp:
        report = await resp.json()
        assert resp.status == 200, report
    listed = sum(1 for line in shared.read_text().splitlines()[1:] if line.strip())
    assert report["accepted"] == listed and report["rejected"] == 1
    assert report["rejected_rows"][0]["value"] == "not-a-number"
    row = await st.gw.pool.fetchrow("SELECT source, added_at FROM dnc_numbers LIMIT 1")
    assert row["source"] == "national-dnc-2026-11" and row["added_at"] is not None
