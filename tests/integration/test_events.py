"""Billing and care events against the real parts: Postgres, the Redis queue, the templates.

Each test uses its own event ids, numbers, API keys and arq queue name, so tests share the
run's database and Redis db and may run in any order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import PROJECT_ROOT
from gateway.config import RedisConfig, SendingConfig
from gateway.domain import MessageClass
from gateway.events import EVENT_TYPES, EventsConfig, EventService
from gateway.http.app import create_app
from gateway.http.events import SCOPE_EVENTS, setup
from gateway.intake import Intake, IntakeError
from gateway.queue import BatchingEnqueuer, JobQueue, connect
from gateway.store.apikeys import ApiKeyStore
from gateway.store.events import BillStatus, EventStore, NewEvent
from gateway.store.messages import MessageStore
from gateway.templating import TemplateRenderer


async def _no_health() -> dict[str, Any]:
    raise AssertionError("health() was not expected to be called")


@dataclass
class Events:
    client: TestClient[Any, Any]
    service: EventService
    store: EventStore
    messages: MessageStore
    apikeys: ApiKeyStore
    renderer: TemplateRenderer
    intake: Intake
    queue: JobQueue
    enqueuer: BatchingEnqueuer
    pool: asyncpg.Pool
    key: str  # plaintext of a key with events:write

    async def post(self, body: Any, *, key: str | None = None,
                   client: TestClient[Any, Any] | None = None) -> tuple[int, dict[str, Any]]:
        resp = await (client or self.client).post(
            "/v1/events", json=body, headers={"Authorization": f"Bearer {key or self.key}"})
        return resp.status, await resp.json()

    async def get(self, event_id: str, *, key: str | None = None) -> tuple[int, Any]:
        resp = await self.client.get(f"/v1/events/{event_id}",
                                     headers={"Authorization": f"Bearer {key or self.key}"})
        return resp.status, await resp.json()

    async def new_key(self, *scopes: str) -> str:
        _, plaintext = await self.apikeys.create(f"ev-test-{uuid.uuid4().hex[:10]}", scopes)
        return plaintext

    async def message_count(self, event_id: str) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM messages WHERE idempotency_key = $1", f"event:{event_id}")
        return count

    async def depth(self) -> int:
        await self.enqueuer.flush()
        return await self.queue.depth()

    def sample(self, template: str) -> dict[str, Any]:
        """The template's sample data, without its own msisdn (the event gives the number)."""
        data = dict(self.renderer.meta(template).sample)
        data.pop("msisdn", None)
        return data

    def app(self, service: EventService) -> web.Application:
        return _app(self.intake, self.messages, self.apikeys, service)


def _app(intake: Intake, messages: MessageStore, apikeys: ApiKeyStore,
         service: EventService) -> web.Application:
    """The API with the events extension, wired as the service wires it."""
    return create_app(intake=intake, store=messages, apikeys=apikeys, health=_no_health,
                      key_cache_ttl_s=0, extensions=[lambda app: setup(app, service=service)])


def _msisdn() -> str:
    """A random mobile in national form, e.g. 0961234567."""
    return "096" + str(uuid.uuid4().int)[:7]


def _e164(national: str) -> str:
    return "84" + national[1:]


def _event_id() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
async def ev(pg_pool: asyncpg.Pool, redis_dsn: str) -> AsyncIterator[Events]:
    messages = MessageStore(pg_pool)
    apikeys = ApiKeyStore(pg_pool)
    store = EventStore(pg_pool)
    renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms")
    cfg = RedisConfig(dsn=redis_dsn, queue_name=f"smsgw:test:events:{uuid.uuid4().hex}")
    redis = await connect(cfg)
    queue = JobQueue(redis, cfg)
    enqueuer = BatchingEnqueuer(queue)
    enqueuer.start()
    intake = Intake(store=messages, queue=enqueuer, renderer=renderer, sending=SendingConfig())
    service = EventService(store, intake, EventsConfig())
    _, key = await apikeys.create(f"ev-test-{uuid.uuid4().hex[:10]}", [SCOPE_EVENTS])
    try:
        async with TestClient(TestServer(_app(intake, messages, apikeys, service))) as client:
            yield Events(client=client, service=service, store=store, messages=messages,
                         apikeys=apikeys, renderer=renderer, intake=intake, queue=queue,
                         enqueuer=enqueuer, pool=pg_pool, key=key)
    finally:
        await enqueuer.stop()
        await redis.aclose()


# --- every type -----------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
async def test_each_type_sends_its_template(ev: Events, event_type: str) -> None:
    event_id, to = _event_id(), _msisdn()
    status, body = await ev.post({"event_id": event_id, "type": event_type, "msisdn": to,
                                  "data": ev.sample(event_type)})
    assert status == 202, body
    assert body["event_id"] == event_id and body["type"] == event_type
    assert body["duplicate"] is False
    assert body["status"] == "queued"
    assert body["encoding"] in ("gsm7", "ucs2") and body["segments"] >= 1
    record = await ev.messages.get(uuid.UUID(body["message_id"]))
    assert record is not None
    assert record.template == event_type
    assert record.message_class is MessageClass.CARE
    assert record.msisdn == _e164(to)
    assert record.idempotency_key == f"event:{event_id}"
    if "msisdn" in ev.renderer.meta(event_type).sample:  # the event's number, masked
        assert _e164(to)[-3:] in record.body and _e164(to) not in record.body
    row = await ev.store.get(event_id)
    assert row is not None and row.message_id == record.id and row.type == event_type
    assert row.msisdn == _e164(to) and row.message is not None
    assert await ev.depth() == 1


# --- idempotency ----------------------------------------------------------------------------


async def test_same_event_twice_is_one_sms(ev: Events) -> None:
    event: dict[str, Any] = {"event_id": _event_id(), "type": "payment_due",
                             "msisdn": _msisdn(), "data": ev.sample("payment_due")}
    first_status, first = await ev.post(event)
    again_status, again = await ev.post(event)
    assert (first_status, again_status) == (202, 200)
    assert again["message_id"] == first["message_id"]
    assert again["duplicate"] is True and first["duplicate"] is False
    assert {k: v for k, v in again.items() if k != "duplicate"} == \
        {k: v for k, v in first.items() if k != "duplicate"}
    assert await ev.message_count(event["event_id"]) == 1
    assert await ev.depth() == 1


async def test_twenty_concurrent_posts_make_one_sms(ev: Events) -> None:
    event: dict[str, Any] = {"event_id": _event_id(), "type": "overdue",
                             "msisdn": _msisdn(), "data": ev.sample("overdue")}
    answers = await asyncio.gather(*(ev.post(event) for _ in range(20)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 19 + [202], answers
    assert len({body["message_id"] for _, body in answers}) == 1
    assert sum(not body["duplicate"] for _, body in answers) == 1
    assert await ev.message_count(event["event_id"]) == 1
    assert await ev.depth() == 1
    row = await ev.store.get(event["event_id"])
    assert row is not None and str(row.message_id) == answers[0][1]["message_id"]


async def test_concurrent_records_and_handles_at_the_store_and_service(ev: Events) -> None:
    to = _e164(_msisdn())
    event_id = _event_id()
    recorded = await asyncio.gather(*(
        ev.store.record(NewEvent(event_id=event_id, type="incident", msisdn=to,
                                 data=ev.sample("incident"))) for _ in range(20)))
    assert sum(created for _, created in recorded) == 1
    # 20 handlers finding the event without a message all make (or find) the same one
    results = await asyncio.gather(*(
        ev.service.handle(event_id, "incident", to, ev.sample("incident"), api_key_id=None)
        for _ in range(20)))
    assert all(r.duplicate for r in results)
    assert len({r.message_id for r in results}) == 1
    assert await ev.message_count(event_id) == 1
    assert await ev.depth() == 1
    # concurrent posts of an event that cannot be sent: all refused, nothing left behind
    bad_id = _event_id()
    outcomes = await asyncio.gather(*(
        ev.service.handle(bad_id, "incident", to, {"service": "4G"}, api_key_id=None)
        for _ in range(10)), return_exceptions=True)
    assert all(isinstance(o, IntakeError) and o.field == "data" for o in outcomes), outcomes
    assert await ev.store.get(bad_id) is None


async def test_event_ids_are_global_across_api_keys(ev: Events) -> None:
    event: dict[str, Any] = {"event_id": _event_id(), "type": "incident",
                             "msisdn": _msisdn(), "data": ev.sample("incident")}
    other = await ev.new_key(SCOPE_EVENTS)
    s1, first = await ev.post(event)
    s2, second = await ev.post(event, key=other)
    assert (s1, s2) == (202, 200)
    assert second["message_id"] == first["message_id"] and second["duplicate"] is True
    assert await ev.message_count(event["event_id"]) == 1


async def test_reused_id_for_another_event_is_409(ev: Events) -> None:
    event_id, to = _event_id(), _msisdn()
    status, _ = await ev.post({"event_id": event_id, "type": "incident", "msisdn": to,
                               "data": ev.sample("incident")})
    assert status == 202
    status, body = await ev.post({"event_id": event_id, "type": "incident_fixed",
                                  "msisdn": to, "data": ev.sample("incident_fixed")})
    assert status == 409
    assert body["error"]["field"] == "event_id" and "incident" in body["error"]["reason"]
    status, body = await ev.post({"event_id": event_id, "type": "incident",
                                  "msisdn": _msisdn(), "data": ev.sample("incident")})
    assert status == 409
    assert await ev.message_count(event_id) == 1


async def test_event_recorded_before_a_crash_is_completed_by_a_repost(ev: Events) -> None:
    # The process died after inserting the event and before making its message.
    key = await ev.apikeys.create(f"ev-test-{uuid.uuid4().hex[:10]}", [SCOPE_EVENTS])
    to = _msisdn()
    event_id = _event_id()
    row, created = await ev.store.record(NewEvent(event_id=event_id, type="usage_high",
                                                  msisdn=_e164(to),
                                                  data=ev.sample("usage_high"),
                                                  api_key_id=key[0].id))
    assert created and row.message_id is None
    status, body = await ev.post({"event_id": event_id, "type": "usage_high", "msisdn": to,
                                  "data": ev.sample("usage_high")})
    assert status == 200 and body["duplicate"] is True and body["message_id"]
    record = await ev.messages.get(uuid.UUID(body["message_id"]))
    # the message belongs to the key that recorded the event, not to the reposting one
    assert record is not None and record.api_key_id == key[0].id
    assert await ev.message_count(event_id) == 1
    assert await ev.depth() == 1


async def test_resume_unattached_makes_the_missing_message(ev: Events) -> None:
    event_id, to = _event_id(), _e164(_msisdn())
    await ev.store.record(NewEvent(event_id=event_id, type="package_expiring", msisdn=to,
                                   data=ev.sample("package_expiring")))
    broken_id = _event_id()
    await ev.store.record(NewEvent(event_id=broken_id, type="package_expiring", msisdn=to,
                                   data={}))
    assert await ev.service.resume_unattached(older_than_s=3600) == 0  # all too young
    row = await ev.store.get(event_id)
    assert row is not None and row.message_id is None
    assert await ev.service.resume_unattached(older_than_s=0, limit=1000) >= 1
    row = await ev.store.get(event_id)
    assert row is not None and row.message_id is not None and row.message is not None
    assert await ev.message_count(event_id) == 1
    assert await ev.store.get(broken_id) is None  # could never be sent: forgotten
    assert await ev.service.resume_unattached(older_than_s=0, limit=1000) == 0
    assert await ev.message_count(event_id) == 1


# --- refusals -------------------------------------------------------------------------------


async def test_unknown_type_is_422_listing_the_types(ev: Events) -> None:
    status, body = await ev.post({"event_id": _event_id(), "type": "birthday",
                                  "msisdn": _msisdn(), "data": {}})
    assert status == 422
    assert body["error"]["field"] == "type"
    assert "'birthday'" in body["error"]["reason"]
    assert all(t in body["error"]["reason"] for t in EVENT_TYPES)


async def test_missing_variable_is_422_naming_it_and_the_id_stays_usable(ev: Events) -> None:
    event_id, to = _event_id(), _msisdn()
    data = ev.sample("bill_issued")
    del data["due_date"]
    status, body = await ev.post({"event_id": event_id, "type": "bill_issued", "msisdn": to,
                                  "data": data})
    assert status == 422
    assert body["error"]["field"] == "data"
    assert "due_date" in body["error"]["reason"]
    assert await ev.store.get(event_id) is None
    assert await ev.message_count(event_id) == 0
    status, body = await ev.post({"event_id": event_id, "type": "bill_issued", "msisdn": to,
                                  "data": ev.sample("bill_issued")})
    assert status == 202 and body["duplicate"] is False


async def test_bad_msisdn_is_422_saying_why(ev: Events) -> None:
    event_id = _event_id()
    status, body = await ev.post({"event_id": event_id, "type": "incident",
                                  "msisdn": "09012", "data": ev.sample("incident")})
    assert status == 422
    assert body["error"]["field"] == "msisdn"
    assert "too short" in body["error"]["reason"]
    status, body = await ev.post({"event_id": event_id, "type": "incident",
                                  "msisdn": "0241234567", "data": ev.sample("incident")})
    assert status == 422 and body["error"]["field"] == "msisdn"
    assert await ev.store.get(event_id) is None


async def test_malformed_bodies_are_400(ev: Events) -> None:
    headers = {"Authorization": f"Bearer {ev.key}", "Content-Type": "application/json"}
    resp = await ev.client.post("/v1/events", data=b'{"event_id": "x",', headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "body"
    resp = await ev.client.post("/v1/events", data=b"[]", headers=headers)
    assert resp.status == 400
    status, body = await ev.post({"event_id": _event_id(), "type": "incident",
                                  "msisdn": _msisdn(), "data": "service=4G"})
    assert (status, body["error"]["field"]) == (400, "data")


async def test_unusable_template_mapping_is_500_and_forgets_the_event(ev: Events) -> None:
    service = EventService(ev.store, ev.intake,
                           EventsConfig(templates={"incident": "no_such_template"}))
    event_id = _event_id()
    async with TestClient(TestServer(ev.app(service))) as client:
        status, body = await ev.post({"event_id": event_id, "type": "incident",
                                      "msisdn": _msisdn(), "data": ev.sample("incident")},
                                     client=client)
    assert status == 500 and "request_id" in body["error"]
    assert await ev.store.get(event_id) is None


async def test_type_mapped_to_another_template(ev: Events) -> None:
    service = EventService(ev.store, ev.intake,
                           EventsConfig(templates={"usage_high": "payment_due"}))
    async with TestClient(TestServer(ev.app(service))) as client:
        status, body = await ev.post({"event_id": _event_id(), "type": "usage_high",
                                      "msisdn": _msisdn(), "data": ev.sample("payment_due")},
                                     client=client)
    assert status == 202, body
    record = await ev.messages.get(uuid.UUID(body["message_id"]))
    assert record is not None and record.template == "payment_due"


# --- latest bill ----------------------------------------------------------------------------


async def test_latest_bill_follows_billing_events_and_ignores_late_old_ones(ev: Events) -> None:
    to = _msisdn()
    msisdn = _e164(to)

    async def post(event_type: str, **data: Any) -> None:
        status, body = await ev.post({"event_id": _event_id(), "type": event_type,
                                      "msisdn": to, "data": {**ev.sample(event_type), **data}})
        assert status == 202, body

    assert await ev.store.latest_bill(msisdn) is None
    # no bill known yet: a payment without a period has nothing to mark paid
    await post("payment_received", amount=100000)
    assert await ev.store.latest_bill(msisdn) is None

    await post("bill_issued", period="11/2026", amount=1250000, due_date="2026-12-20")
    bill = await ev.store.latest_bill(msisdn)
    assert bill is not None
    assert (bill.period, bill.period_key, bill.amount, bill.due_date, bill.status) == \
        ("11/2026", 202611, 1250000, date(2026, 12, 20), BillStatus.ISSUED)

    await post("payment_received", amount=1250000)  # no period: the latest known bill
    bill = await ev.store.latest_bill(msisdn)
    assert bill is not None
    assert (bill.period, bill.amount, bill.status, bill.due_date) == \
        ("11/2026", 1250000, BillStatus.PAID, date(2026, 12, 20))
    paid_event = bill.event_id

    # late arrivals: October's bill, and November's reminder once November is paid
    await post("bill_issued", period="10/2026", amount=990000, due_date="2026-11-20")
    await post("payment_due", period="11/2026", amount=1250000, due_date="2026-12-20")
    await post("overdue", period="11/2026", amount=1250000)
    bill = await ev.store.latest_bill(msisdn)
    assert bill is not None
    assert (bill.period, bill.status, bill.event_id) == ("11/2026", BillStatus.PAID, paid_event)

    # a new period replaces it; the reminders of that period move it forward
    await post("bill_issued", period="2026-12", amount=400000, due_date="2027-01-20")
    await post("suspended_one_way", amount=400000)
    bill = await ev.store.latest_bill(msisdn)
    assert bill is not None
    assert (bill.period_key, bill.amount, bill.status, bill.due_date) == \
        (202612, 400000, BillStatus.OVERDUE, date(2027, 1, 20))
    await post("payment_due", period="12/2026", amount=400000)  # due < overdue: ignored
    bill = await ev.store.latest_bill(msisdn)
    assert bill is not None and bill.status is BillStatus.OVERDUE

    # care events leave the bill alone
    await post("usage_high", amount=5000000)
    after = await ev.store.latest_bill(msisdn)
    assert after == bill


async def test_corrected_bill_of_the_same_period_wins(ev: Events) -> None:
    to = _msisdn()
    for amount in (500000, 450000):
        status, _ = await ev.post({"event_id": _event_id(), "type": "bill_issued",
                                   "msisdn": to, "data": {**ev.sample("bill_issued"),
                                                          "period": "11/2026",
                                                          "amount": amount}})
        assert status == 202
    bill = await ev.store.latest_bill(_e164(to))
    assert bill is not None and bill.amount == 450000


async def test_bad_billing_field_is_422(ev: Events) -> None:
    status, body = await ev.post({"event_id": _event_id(), "type": "bill_issued",
                                  "msisdn": _msisdn(),
                                  "data": {**ev.sample("bill_issued"), "period": "tháng 11"}})
    assert status == 422 and body["error"]["field"] == "data.period"


# --- reading an event -----------------------------------------------------------------------


async def test_get_event_shows_its_message_status(ev: Events) -> None:
    event_id, to = _event_id(), _msisdn()
    _, posted = await ev.post({"event_id": event_id, "type": "incident_fixed", "msisdn": to,
                               "data": ev.sample("incident_fixed")})
    status, body = await ev.get(event_id)
    assert status == 200
    assert body["event_id"] == event_id and body["type"] == "incident_fixed"
    assert body["msisdn"] == _e164(to)
    assert body["data"] == ev.sample("incident_fixed")
    assert body["message_id"] == posted["message_id"]
    assert body["message_status"] == "queued"
    status, body = await ev.get("no-such-event")
    assert status == 404 and body["error"]["field"] == "event_id"


# --- authentication -------------------------------------------------------------------------


async def test_auth_401_and_403(ev: Events) -> None:
    event: dict[str, Any] = {"event_id": _event_id(), "type": "incident",
                             "msisdn": _msisdn(), "data": ev.sample("incident")}
    resp = await ev.client.post("/v1/events", json=event)
    assert resp.status == 401
    status, _ = await ev.post(event, key="smsgw_" + "x" * 43)
    assert status == 401
    resp = await ev.client.get(f"/v1/events/{event['event_id']}")
    assert resp.status == 401
    send_only = await ev.new_key("messages:send")
    status, body = await ev.post(event, key=send_only)
    assert status == 403 and SCOPE_EVENTS in body["error"]["reason"]
    status, _ = await ev.get(event["event_id"], key=send_only)
    assert status == 403
    assert await ev.store.get(event["event_id"]) is None
