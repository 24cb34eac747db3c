"""TC / DK QC / KT CUOC against the real Postgres and a real HTTP billing endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from aiohttp import web

from gateway.actions import MoContext
from gateway.actions.bill import BillLookupAction
from gateway.actions.consent import OptInAdsAction, RefuseAdsAction
from gateway.config import SendingConfig
from gateway.domain import Encoding, MessageClass, MessageStatus
from gateway.store.consent import (
    SUPPRESSED_DNC,
    SUPPRESSED_OPTED_OUT,
    ConsentAction,
    ConsentSource,
    ConsentStore,
    DncChannels,
)
from gateway.store.events import BillStatus, BillUpdate, EventStore
from gateway.store.messages import MessageStore, NewMessage
from gateway.templating import DEFAULT_TEMPLATES_DIR, TemplateRenderer, template_defaults

T0 = datetime(2026, 11, 20, 7, 5, tzinfo=UTC)  # 14:05 in Việt Nam


def _msisdn() -> str:
    """A number no other test uses (the session database is shared)."""
    return f"849{uuid.uuid4().int % 10**8:08d}"


def _ctx(msisdn: str, keyword: str, received_at: datetime) -> MoContext:
    return MoContext(inbound_id=uuid.uuid4(), msisdn=msisdn, destination="1234",
                     text=keyword, received_at=received_at, link="main", keyword=keyword)


def _message(msisdn: str, message_class: MessageClass) -> NewMessage:
    body = "[QC] Goi MAX90 chi 90.000d. Tu choi QC soan TC gui 1234" \
        if message_class is MessageClass.ADVERTISING else "Cuoc thang 11/2026: 385.000d"
    return NewMessage(msisdn=msisdn, sender="CSKH", body=body, encoding=Encoding.GSM7,
                      segments=1, message_class=message_class)


@pytest.fixture
def consent(pg_pool: asyncpg.Pool) -> ConsentStore:
    return ConsentStore(pg_pool)


@pytest.fixture
def messages(pg_pool: asyncpg.Pool) -> MessageStore:
    return MessageStore(pg_pool)


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(DEFAULT_TEMPLATES_DIR, defaults=template_defaults(SendingConfig()))


# --------------------------------------------------------------------------- TC / DK QC


async def test_refusal_records_cancels_and_confirms(
    consent: ConsentStore, messages: MessageStore, renderer: TemplateRenderer
) -> None:
    msisdn, other = _msisdn(), _msisdn()
    ads = [(await messages.create(_message(msisdn, MessageClass.ADVERTISING)))[0].id
           for _ in range(2)]
    care = (await messages.create(_message(msisdn, MessageClass.CARE)))[0].id
    claimed = (await messages.create(_message(msisdn, MessageClass.ADVERTISING)))[0].id
    assert [r.id for r in await messages.claim([claimed])] == [claimed]  # now submitting
    elsewhere = (await messages.create(_message(other, MessageClass.ADVERTISING)))[0].id

    ctx = _ctx(msisdn, "TC", T0)
    result = await RefuseAdsAction(consent, messages)(ctx)

    assert result.action == "refuse_ads" and result.handled
    assert result.reply_template == "keyword_refused"
    assert dict(result.reply_data) == {"received_at": "14:05 20/11/2026",
                                       "effective_from": "14:05 20/11/2026"}
    reply = renderer.render(result.reply_template, result.reply_data)
    assert "14:05 20/11/2026" in reply.text and reply.warnings == () and reply.segments <= 2

    [entry] = await consent.history(msisdn)
    assert entry.action is ConsentAction.REFUSE and entry.source is ConsentSource.SMS
    assert entry.source_ref == str(ctx.inbound_id)
    assert entry.at == T0 and entry.effective_at == T0 and entry.changed
    assert entry.scope == "advertising"
    state = await consent.state(msisdn)
    assert state is not None and state.refused and state.changed_at == T0
    assert state.ledger_id == entry.id

    for mid in ads:
        rec = await messages.get(mid)
        assert rec is not None and rec.status is MessageStatus.CANCELLED
        assert rec.status.terminal and rec.done_at is not None
        events = await messages.events(mid)
        assert [e.status for e in events] == [MessageStatus.QUEUED, MessageStatus.CANCELLED]
        assert str(ctx.inbound_id) in events[-1].detail
    for mid, status in ((care, MessageStatus.QUEUED), (claimed, MessageStatus.SUBMITTING),
                        (elsewhere, MessageStatus.QUEUED)):
        rec = await messages.get(mid)
        assert rec is not None and rec.status is status
    assert "2 queued advertising" in result.detail
    # a cancelled message cannot be claimed any more
    assert await messages.claim(ads) == []


async def test_second_refusal_within_24h_is_recorded_without_reply(
    consent: ConsentStore, messages: MessageStore
) -> None:
    msisdn = _msisdn()
    action = RefuseAdsAction(consent, messages)
    first = await action(_ctx(msisdn, "TC", T0))
    assert first.reply_template == "keyword_refused"
    # an ad queued after the refusal (by a sender not checking yet) is withdrawn by the next TC
    late_ad = (await messages.create(_message(msisdn, MessageClass.ADVERTISING)))[0].id

    second = await action(_ctx(msisdn, "TC", T0 + timedelta(hours=3)))
    assert second.reply_template is None and second.reply_text is None and second.handled
    late = await messages.get(late_ad)
    assert late is not None and late.status is MessageStatus.CANCELLED

    history = await consent.history(msisdn)
    assert [(e.action, e.changed) for e in history] == [
        (ConsentAction.REFUSE, True), (ConsentAction.REFUSE, False)]
    state = await consent.state(msisdn)
    assert state is not None and state.refused and state.changed_at == T0  # unchanged

    # more than 24 h after the last TC: a new confirmation
    third = await action(_ctx(msisdn, "TC", T0 + timedelta(hours=28)))
    assert third.reply_template == "keyword_refused"
    assert dict(third.reply_data)["received_at"] == "18:05 21/11/2026"
    assert len(await consent.history(msisdn)) == 3


async def test_opt_in_then_refusal_again_is_confirmed(
    consent: ConsentStore, messages: MessageStore, renderer: TemplateRenderer
) -> None:
    msisdn = _msisdn()
    refuse, opt_in = RefuseAdsAction(consent, messages), OptInAdsAction(consent)
    await refuse(_ctx(msisdn, "TC", T0))
    assert await consent.is_suppressed(msisdn) == SUPPRESSED_OPTED_OUT

    ctx = _ctx(msisdn, "DK QC", T0 + timedelta(minutes=30))
    result = await opt_in(ctx)
    assert result.action == "optin_ads" and result.reply_template == "keyword_optin"
    assert dict(result.reply_data) == {"received_at": "14:35 20/11/2026", "shortcode": "1234"}
    assert renderer.render(result.reply_template, result.reply_data).warnings == ()
    state = await consent.state(msisdn)
    assert state is not None and not state.refused
    assert await consent.is_suppressed(msisdn) is None
    last = (await consent.history(msisdn))[-1]
    assert last.action is ConsentAction.OPT_IN and last.source_ref == str(ctx.inbound_id)

    # TC again within the hour: the state changed, so it is a new refusal and is confirmed
    again = await refuse(_ctx(msisdn, "TC", T0 + timedelta(minutes=45)))
    assert again.reply_template == "keyword_refused"
    assert await consent.is_suppressed(msisdn) == SUPPRESSED_OPTED_OUT


async def test_an_older_request_processed_late_does_not_move_the_state(
    consent: ConsentStore, messages: MessageStore
) -> None:
    msisdn = _msisdn()
    await RefuseAdsAction(consent, messages)(_ctx(msisdn, "TC", T0))
    # a DK QC the subscriber sent before the TC, whose MO was flushed late
    late = await OptInAdsAction(consent)(_ctx(msisdn, "DK QC", T0 - timedelta(minutes=10)))
    assert late.reply_template is None
    state = await consent.state(msisdn)
    assert state is not None and state.refused
    history = await consent.history(msisdn)
    assert [(e.action, e.changed) for e in history] == [
        (ConsentAction.OPT_IN, False), (ConsentAction.REFUSE, True)]  # ordered by `at`


async def test_the_same_mo_handled_twice_is_recorded_once_and_answered_alike(
    consent: ConsentStore, messages: MessageStore
) -> None:
    msisdn = _msisdn()
    refuse = RefuseAdsAction(consent, messages)
    ctx = _ctx(msisdn, "TC", T0)
    first, again = await refuse(ctx), await refuse(ctx)  # e.g. the router crashed in between
    assert first.reply_template == again.reply_template == "keyword_refused"
    assert first.reply_data == again.reply_data
    assert "recorded before" in again.detail
    [entry] = await consent.history(msisdn)
    assert entry.changed
    # a real second TC (another MO) within 24 h is still not confirmed
    later = await refuse(_ctx(msisdn, "TC", T0 + timedelta(minutes=5)))
    assert later.reply_template is None
    # and handling that one again gives the same (no reply)
    direct = await consent.refuse(msisdn, source=ConsentSource.SMS,
                                  source_ref=(await consent.history(msisdn))[-1].source_ref,
                                  at=T0 + timedelta(minutes=5))
    assert direct.replayed and not direct.changed and direct.nearest_sms_refusal_at == T0
    assert len(await consent.history(msisdn)) == 2


async def test_concurrent_refusals_change_the_state_once(consent: ConsentStore) -> None:
    msisdn = _msisdn()
    changes = await asyncio.gather(*(
        consent.refuse(msisdn, source=ConsentSource.SMS, source_ref=str(i), at=T0)
        for i in range(6)))
    assert sum(c.changed for c in changes) == 1
    assert all(c.refused for c in changes)
    assert len(await consent.history(msisdn)) == 6


async def test_ledger_is_append_only(consent: ConsentStore, pg_pool: asyncpg.Pool) -> None:
    msisdn = _msisdn()
    change = await consent.refuse(msisdn, source=ConsentSource.API, source_ref=None, at=T0)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pg_pool.execute("UPDATE consent_ledger SET action = 'optin' WHERE id = $1",
                              change.entry.id)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pg_pool.execute("DELETE FROM consent_ledger WHERE id = $1", change.entry.id)
    assert len(await consent.history(msisdn)) == 1


async def test_naive_times_are_refused(consent: ConsentStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await consent.refuse(_msisdn(), source=ConsentSource.SMS, source_ref=None,
                             at=datetime(2026, 11, 20, 14, 5))


# --------------------------------------------------------------------------- suppression


async def test_is_suppressed_for_refused_and_dnc_numbers(consent: ConsentStore) -> None:
    refused, dnc, dnc_sms, voice_only, opted_in, unknown, both = (_msisdn() for _ in range(7))
    await consent.refuse(refused, source=ConsentSource.IMPORT, source_ref="list.csv", at=T0)
    await consent.refuse(both, source=ConsentSource.SMS, source_ref=None, at=T0)
    await consent.opt_in(opted_in, source=ConsentSource.API, source_ref="crm", at=T0)
    assert await consent.add_dnc([dnc, both, dnc], source="dnc-2026-11") == 2
    assert await consent.add_dnc([dnc_sms], source="dnc-2026-11",
                                 channels=DncChannels.SMS) == 1
    assert await consent.add_dnc([voice_only], source="dnc-2026-11",
                                 channels=DncChannels.VOICE) == 1

    assert await consent.is_suppressed(refused) == SUPPRESSED_OPTED_OUT == "opted out"
    assert await consent.is_suppressed(dnc) == SUPPRESSED_DNC == "Do-Not-Call"
    assert await consent.is_suppressed(dnc_sms) == SUPPRESSED_DNC
    assert await consent.is_suppressed(both) == SUPPRESSED_OPTED_OUT
    for number in (voice_only, opted_in, unknown):
        assert await consent.is_suppressed(number) is None

    # an opt-in does not take a number off the Do-Not-Call list
    await consent.opt_in(dnc, source=ConsentSource.SMS, source_ref=None, at=T0)
    assert await consent.is_suppressed(dnc) == SUPPRESSED_DNC

    every = [refused, dnc, dnc_sms, voice_only, opted_in, unknown, both, refused]
    assert await consent.suppressed_many(every) == {
        refused: SUPPRESSED_OPTED_OUT, dnc: SUPPRESSED_DNC, dnc_sms: SUPPRESSED_DNC,
        both: SUPPRESSED_OPTED_OUT}
    assert await consent.suppressed_many([]) == {}
    assert await consent.suppressed_many(iter([unknown])) == {}


async def test_suppressed_many_handles_a_campaign_sized_list(consent: ConsentStore) -> None:
    numbers = [_msisdn() for _ in range(5000)]
    await consent.add_dnc(numbers[::100], source="dnc")
    await consent.refuse(numbers[1], source=ConsentSource.SMS, source_ref=None, at=T0)
    found = await consent.suppressed_many(numbers)
    assert len(found) == 51 and found[numbers[1]] == SUPPRESSED_OPTED_OUT


# --------------------------------------------------------------------------- the status


async def test_cancelled_status_is_accepted_by_store_and_tables(
    messages: MessageStore, pg_pool: asyncpg.Pool
) -> None:
    msisdn = _msisdn()
    mid = (await messages.create(_message(msisdn, MessageClass.ADVERTISING)))[0].id
    assert await messages.cancel_pending_advertising(msisdn, "test") == 1
    assert await messages.cancel_pending_advertising(msisdn, "test") == 0  # nothing left
    rec = await messages.get(mid)
    assert rec is not None and rec.status is MessageStatus.CANCELLED
    counts = await messages.counts_by_status()
    assert counts[MessageStatus.CANCELLED] >= 1
    await pg_pool.execute(
        "INSERT INTO message_events (message_id, status, detail) VALUES ($1, 'cancelled', 'x')",
        mid)
    with pytest.raises(asyncpg.CheckViolationError):
        await pg_pool.execute("UPDATE messages SET status = 'withdrawn' WHERE id = $1", mid)
    with pytest.raises(asyncpg.CheckViolationError):
        await pg_pool.execute(
            "INSERT INTO message_events (message_id, status) VALUES ($1, 'withdrawn')", mid)


# --------------------------------------------------------------------------- KT CUOC


@dataclass
class BillingServer:
    """A billing endpoint on 127.0.0.1: /ok answers, /slow sleeps 2 s, /error answers 500."""

    base: str
    bill: dict[str, object]
    asked: list[str] = field(default_factory=list)


@pytest.fixture
async def billing() -> AsyncIterator[BillingServer]:
    stop = asyncio.Event()
    server = BillingServer(base="", bill={"period": "12/2026", "amount": 512000,
                                         "due_date": "2027-01-20", "status": "due"})

    async def ok(request: web.Request) -> web.Response:
        server.asked.append(request.query.get("msisdn", ""))
        return web.json_response(server.bill)

    async def slow(request: web.Request) -> web.Response:
        server.asked.append(request.query.get("msisdn", ""))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        return web.json_response(server.bill)

    async def error(request: web.Request) -> web.Response:
        server.asked.append(request.query.get("msisdn", ""))
        return web.json_response({"error": "internal"}, status=500)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/slow", slow)
    app.router.add_get("/error", error)
    app.router.add_get("/garbage", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        stop.set()
        await runner.cleanup()


async def _store_bill(events: EventStore, msisdn: str) -> None:
    update = BillUpdate(msisdn=msisdn, status=BillStatus.OVERDUE, amount=385000,
                        event_id=f"test:{uuid.uuid4()}", received_at=T0, period="11/2026",
                        period_key=202611, due_date=date(2026, 12, 20))
    assert await events.update_latest_bill(update) is not None


async def test_bill_from_the_endpoint(
    pg_pool: asyncpg.Pool, billing: BillingServer, renderer: TemplateRenderer
) -> None:
    events, msisdn = EventStore(pg_pool), _msisdn()
    await _store_bill(events, msisdn)  # the endpoint wins over what Postgres knows
    action = BillLookupAction(events, endpoint=f"{billing.base}/ok", timeout_s=0.5)
    result = await action(_ctx(msisdn, "KT CUOC", T0))
    assert billing.asked == [msisdn]
    assert result.action == "bill_lookup" and result.reply_template == "keyword_bill"
    assert dict(result.reply_data) == {"period": "12/2026", "amount": 512000,
                                       "due_date": "2027-01-20", "status": "due"}
    assert "from endpoint" in result.detail
    text = renderer.render(result.reply_template, result.reply_data).text
    assert text == "Cước tháng 12/2026: 512.000đ, hạn thanh toán 20/01/2027. Hỗ trợ: 18001090."


async def test_bill_endpoint_timeout_falls_back_to_postgres(
    pg_pool: asyncpg.Pool, billing: BillingServer, renderer: TemplateRenderer
) -> None:
    events, msisdn = EventStore(pg_pool), _msisdn()
    await _store_bill(events, msisdn)
    action = BillLookupAction(events, endpoint=f"{billing.base}/slow", timeout_s=0.5)
    started = time.monotonic()
    result = await action(_ctx(msisdn, "KT CUOC", T0))
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.5, elapsed
    assert billing.asked == [msisdn]
    assert result.reply_template == "keyword_bill"
    assert dict(result.reply_data) == {"period": "11/2026", "amount": 385000,
                                       "due_date": "2026-12-20", "status": "overdue"}
    assert "from postgres" in result.detail and "within 0.5 s" in result.detail
    text = renderer.render(result.reply_template, result.reply_data).text
    assert "385.000đ, đã quá hạn từ 20/12/2026" in text


@pytest.mark.parametrize(("path", "why"), [("/error", "HTTP 500"), ("/garbage", "bad answer"),
                                           ("/missing", "HTTP 404")])
async def test_bill_endpoint_errors_fall_back_to_postgres(
    pg_pool: asyncpg.Pool, billing: BillingServer, path: str, why: str
) -> None:
    events, msisdn = EventStore(pg_pool), _msisdn()
    await _store_bill(events, msisdn)
    result = await BillLookupAction(events, endpoint=billing.base + path, timeout_s=0.5)(
        _ctx(msisdn, "KT CUOC", T0))
    assert result.reply_template == "keyword_bill"
    assert dict(result.reply_data)["status"] == "overdue"
    assert why in result.detail and msisdn not in result.detail


async def test_bill_endpoint_down_falls_back_to_postgres(pg_pool: asyncpg.Pool) -> None:
    events, msisdn = EventStore(pg_pool), _msisdn()
    await _store_bill(events, msisdn)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on the port any more
    result = await BillLookupAction(events, endpoint=f"http://127.0.0.1:{port}/bill",
                                    timeout_s=0.5)(_ctx(msisdn, "KT CUOC", T0))
    assert result.reply_template == "keyword_bill"
    assert "request failed" in result.detail


async def test_no_bill_anywhere_gets_the_unavailable_reply(
    pg_pool: asyncpg.Pool, billing: BillingServer, renderer: TemplateRenderer
) -> None:
    events, msisdn = EventStore(pg_pool), _msisdn()
    for endpoint in (f"{billing.base}/error", None):
        result = await BillLookupAction(events, endpoint=endpoint, timeout_s=0.5)(
            _ctx(msisdn, "KT CUOC", T0))
        assert result.reply_template == "keyword_bill_unavailable"
        assert result.detail.startswith("no bill known")
        text = renderer.render(result.reply_template, result.reply_data).text
        assert "vui lòng thử lại sau hoặc gọi 18001090" in text
