"""Surveys against a real Postgres: sending once per number, the reply window, results, the
HTTP API, and one run of the whole gateway (invite to the simulator, MO reply back).

Store-level tests share the run's database: each uses its own numbers and its own segment
name, so segments and open invitations of other tests never show.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import PROJECT_ROOT
from gateway.config import SendingConfig
from gateway.http.app import create_app
from gateway.http.surveys import SCOPE_CAMPAIGNS, setup
from gateway.intake import Intake, IntakeError
from gateway.store.apikeys import ApiKeyStore
from gateway.store.inbound import InboundStore
from gateway.store.messages import MessageStore
from gateway.store.subscribers import Subscriber, SubscriberStore
from gateway.store.surveys import SurveyStore
from gateway.surveys import SurveyService
from gateway.templating import TemplateRenderer, template_defaults
from tests.integration.conftest import MakeStack

FIVE = ["1", "2", "3", "4", "5"]


def make_intake(pool: asyncpg.Pool) -> Intake:
    sending = SendingConfig()
    renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms",
                                defaults=template_defaults(sending))
    return Intake(store=MessageStore(pool), queue=None, renderer=renderer, sending=sending)


def numbers(n: int) -> list[str]:
    """n fresh E.164 mobile numbers (8490xxxxxxx), unique per call."""
    base = uuid.uuid4().int % 9_000_000 + 1_000_000
    return [f"8490{(base + i) % 10_000_000:07d}" for i in range(n)]


@dataclass
class Env:
    pool: asyncpg.Pool
    service: SurveyService
    store: SurveyStore
    subscribers: SubscriberStore

    async def sent_at(self, survey_id: UUID, msisdn: str) -> datetime:
        value: datetime = await self.pool.fetchval(
            "SELECT sent_at FROM survey_recipients WHERE survey_id = $1 AND msisdn = $2",
            survey_id, msisdn)
        return value

    async def messages(self, survey_id: UUID) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(
            "SELECT msisdn, class, template, body, status FROM messages "
            "WHERE idempotency_key LIKE $1 ORDER BY msisdn", f"survey:{survey_id}:%"))


@pytest.fixture
async def env(pg_pool: asyncpg.Pool) -> Env:
    subscribers = SubscriberStore(pg_pool)
    store = SurveyStore(pg_pool)
    service = SurveyService(store, make_intake(pg_pool), subscribers,
                            inbound=InboundStore(pg_pool), batch=2)
    return Env(pg_pool, service, store, subscribers)


async def _invited(env: Env, count: int = 3, window: int = 3600) -> tuple[UUID, list[str]]:
    survey = await env.service.create("CSAT tổng đài", "Hài lòng không?", FIVE, window)
    people = numbers(count)
    report = await env.service.send(survey.id, msisdns=people)
    assert report.invited == count
    return survey.id, people


# --- sending --------------------------------------------------------------------------------


async def test_send_to_a_tier_segment_once_per_recipient(env: Env) -> None:
    segment = f"seg-{uuid.uuid4().hex[:8]}"
    gold = numbers(5)
    silver, suspended, other_segment = numbers(3)
    await env.subscribers.upsert_many([
        *(Subscriber(msisdn=m, tier="Vàng", segment=segment, khong_dau=(i == 0))
          for i, m in enumerate(gold)),
        Subscriber(msisdn=silver, tier="Bạc", segment=segment),
        Subscriber(msisdn=suspended, tier="Vàng", segment=segment, status="suspended"),
        Subscriber(msisdn=other_segment, tier="Vàng", segment=segment + "-x"),
    ])
    survey = await env.service.create("CSAT", "Hài lòng không?", FIVE, 86400)
    assert survey.status == "draft" and survey.template == "survey_invite"

    report = await env.service.send(survey.id, tiers=["vang"], segment=segment,
                                    data={"contact_date": "2026-12-05"})
    assert (report.invited, report.already_invited, report.rejected) == (5, 0, ())
    sent = await env.messages(survey.id)
    assert [r["msisdn"] for r in sent] == sorted(gold)
    assert {(r["class"], r["template"], r["status"]) for r in sent} == {
        ("care", "survey_invite", "queued")}
    assert all("05/12/2026" in r["body"] for r in sent)
    by_number = {r["msisdn"]: r["body"] for r in sent}
    assert "tổng đài CSKH" in by_number[gold[1]]
    assert "tong dai CSKH" in by_number[gold[0]]  # the subscriber prefers khong dau
    got = await env.store.get(survey.id)
    assert got is not None and got.status == "sent"

    again = await env.service.send(survey.id, tiers=["Vàng"], segment=segment)
    assert (again.invited, again.already_invited) == (0, 5)
    assert len(await env.messages(survey.id)) == 5

    newcomer = numbers(1)[0]
    await env.subscribers.upsert_many([Subscriber(msisdn=newcomer, tier="Vàng",
                                                  segment=segment)])
    third = await env.service.send(survey.id, tiers=["Vàng"], segment=segment)
    assert (third.invited, third.already_invited) == (1, 5)
    assert len(await env.messages(survey.id)) == 6


async def test_concurrent_sends_make_one_message_per_recipient(env: Env) -> None:
    survey = await env.service.create("CSAT", "Hài lòng không?", FIVE, 86400)
    people = numbers(7)
    reports = await asyncio.gather(*(env.service.send(survey.id, msisdns=people)
                                     for _ in range(3)))
    assert sum(r.invited for r in reports) == 7
    assert all(r.invited + r.already_invited == 7 for r in reports)
    assert [r["msisdn"] for r in await env.messages(survey.id)] == sorted(people)
    results = await env.service.results(survey.id)
    assert results.invited == 7


async def test_send_to_a_list_reports_rejected_numbers(env: Env) -> None:
    survey = await env.service.create("CSAT", "Hài lòng không?", FIVE, 86400)
    good = numbers(1)[0]
    national = "0" + good[2:]
    report = await env.service.send(survey.id, msisdns=[
        national, good, "+" + good, "12345", "0281234567", "09O1234567"])
    assert report.invited == 1 and report.already_invited == 0
    assert [r.value for r in report.rejected] == ["12345", "0281234567", "09O1234567"]
    assert all(r.reason for r in report.rejected)
    assert [r["msisdn"] for r in await env.messages(survey.id)] == [good]


async def test_send_refuses_bad_requests(env: Env) -> None:
    survey = await env.service.create("CSAT", "Hài lòng không?", FIVE, 86400)
    with pytest.raises(IntakeError) as err:
        await env.service.send(survey.id)
    assert err.value.field == "msisdns"
    with pytest.raises(IntakeError) as err:
        await env.service.send(survey.id, tiers=["Bạch kim"])
    assert err.value.field == "tiers"
    with pytest.raises(IntakeError) as err:
        await env.service.send(survey.id, msisdns=numbers(1), segment="x")
    assert err.value.field == "msisdns"
    with pytest.raises(IntakeError) as err:
        await env.service.send(uuid.uuid4(), msisdns=numbers(1))
    assert err.value.status == 404
    await env.service.close(survey.id)
    with pytest.raises(IntakeError) as err:
        await env.service.send(survey.id, msisdns=numbers(1))
    assert err.value.status == 409


async def test_a_template_that_cannot_render_invites_nobody(env: Env) -> None:
    survey = await env.service.create("CSAT", "Hài lòng không?", FIVE, 86400,
                                      template="bill_issued")  # needs amount, period...
    with pytest.raises(IntakeError) as err:
        await env.service.send(survey.id, msisdns=numbers(3))
    assert err.value.field == "data"
    assert (await env.service.results(survey.id)).invited == 0
    count = await env.pool.fetchval(
        "SELECT count(*) FROM survey_recipients WHERE survey_id = $1", survey.id)
    assert count == 0


# --- replies --------------------------------------------------------------------------------


async def test_replies_inside_the_window_are_recorded_outside_not(env: Env) -> None:
    survey_id, (a, b, c) = await _invited(env, window=3600)
    sent = await env.sent_at(survey_id, a)
    inbound = uuid.uuid4()
    assert await env.service.on_inbound("0" + a[2:], " 4 ", sent + timedelta(minutes=10),
                                        inbound)
    reply = await env.store.reply(survey_id, a)
    assert reply is not None and (reply.answer, reply.comment) == ("4", None)
    assert reply.inbound_id == inbound

    late = await env.sent_at(survey_id, b) + timedelta(seconds=3601)
    assert not await env.service.on_inbound(b, "5", late, None)
    early = await env.sent_at(survey_id, c) - timedelta(seconds=1)
    assert not await env.service.on_inbound(c, "5", early, None)
    assert await env.store.reply(survey_id, b) is None
    assert await env.store.reply(survey_id, c) is None
    assert not await env.service.on_inbound(numbers(1)[0], "5", sent, None)  # not invited
    assert not await env.service.on_inbound("not-a-number", "5", sent, None)
    # the store checks the window itself, whatever the caller checked
    assert not await env.store.record_reply(survey_id, b, answer="5", comment=None,
                                            received_at=late)
    assert not await env.store.record_reply(survey_id, a, answer="9", comment=None,
                                            received_at=sent)  # no such answer


async def test_a_later_reply_replaces_the_earlier_one(env: Env) -> None:
    survey_id, (a,) = await _invited(env, count=1)
    t0 = await env.sent_at(survey_id, a)
    assert await env.service.on_inbound(a, "4", t0 + timedelta(minutes=1))
    assert await env.service.on_inbound(a, "rất chậm", t0 + timedelta(minutes=2))
    reply = await env.store.reply(survey_id, a)
    assert reply is not None and (reply.answer, reply.comment) == ("4", "rất chậm")
    assert await env.service.on_inbound(a, "2 tot hon roi", t0 + timedelta(minutes=3))
    reply = await env.store.reply(survey_id, a)
    assert reply is not None and (reply.answer, reply.comment) == ("2", "tot hon roi")
    # a reply older than the stored one (flushed late by the MO sweeper) changes nothing
    assert await env.service.on_inbound(a, "5", t0 + timedelta(seconds=30))
    reply = await env.store.reply(survey_id, a)
    assert reply is not None and reply.answer == "2"
    assert reply.received_at == t0 + timedelta(minutes=3)


async def test_the_most_recent_open_survey_gets_the_reply(env: Env) -> None:
    first = await env.service.create("Lần 1", "?", FIVE, 86400)
    second = await env.service.create("Lần 2", "?", ["Có", "Không"], 86400)
    (a,) = numbers(1)
    await env.service.send(first.id, msisdns=[a])
    await env.service.send(second.id, msisdns=[a])
    at = await env.sent_at(second.id, a) + timedelta(seconds=5)
    assert await env.store.open_invite_for(a, at) == (second.id, ("Có", "Không"))
    assert await env.service.on_inbound(a, "khong", at)
    reply = await env.store.reply(second.id, a)
    assert reply is not None and reply.answer == "Không"
    await env.service.close(second.id)
    assert await env.service.on_inbound(a, "3", at + timedelta(seconds=1))
    reply = await env.store.reply(first.id, a)
    assert reply is not None and reply.answer == "3"
    await env.service.close(first.id)
    assert not await env.service.on_inbound(a, "3", at + timedelta(seconds=2))


async def test_results_count_every_answer_and_the_response_rate(env: Env) -> None:
    survey_id, people = await _invited(env, count=5)
    t0 = max([await env.sent_at(survey_id, m) for m in people]) + timedelta(seconds=1)
    for m, text in zip(people, ["5", "5 rat tot", "3", "tong dai cham qua"], strict=False):
        assert await env.service.on_inbound(m, text, t0)
    results = await env.service.results(survey_id)
    assert (results.invited, results.replied, results.response_rate) == (5, 3, 0.6)
    assert results.counts == {"1": 0, "2": 0, "3": 1, "4": 0, "5": 2}
    assert list(results.counts) == FIVE
    assert sorted(c.text for c in results.comments) == ["rat tot", "tong dai cham qua"]
    assert results.comments_total == 2
    assert {c.msisdn for c in results.comments} == {
        f"{m[:5]}***{m[-3:]}" for m in people[1:4:2]}
    empty = await env.service.create("Trống", "?", FIVE, 600)
    none = await env.service.results(empty.id)
    assert (none.invited, none.replied, none.response_rate) == (0, 0, 0.0)
    assert none.counts == dict.fromkeys(FIVE, 0) and none.comments == ()


# --- HTTP -----------------------------------------------------------------------------------


async def _no_health() -> dict[str, Any]:
    raise AssertionError("health() was not expected to be called")


@dataclass
class Api:
    client: TestClient[Any, Any]
    key: str
    apikeys: ApiKeyStore

    async def call(self, method: str, path: str, body: Any = None, *,
                   key: str | None = None) -> tuple[int, Any]:
        resp = await self.client.request(method, path, json=body,
                                         headers={"Authorization": f"Bearer {key or self.key}"})
        return resp.status, await resp.json()


@pytest.fixture
async def api(env: Env) -> AsyncIterator[Api]:
    apikeys = ApiKeyStore(env.pool)
    intake = make_intake(env.pool)
    app: web.Application = create_app(
        intake=intake, store=MessageStore(env.pool), apikeys=apikeys, health=_no_health,
        key_cache_ttl_s=0, extensions=[lambda a: setup(a, service=env.service)])
    _, key = await apikeys.create(f"sv-test-{uuid.uuid4().hex[:10]}", [SCOPE_CAMPAIGNS])
    async with TestClient(TestServer(app)) as client:
        yield Api(client, key, apikeys)


async def test_http_create_send_results(api: Api, env: Env) -> None:
    status, survey = await api.call("POST", "/v1/surveys", {
        "name": "CSAT 12/2026", "question": "Quý khách hài lòng không?", "answers": FIVE,
        "reply_window_s": 86400})
    assert status == 201, survey
    assert survey["status"] == "draft" and survey["answers"] == FIVE
    sid = survey["id"]
    a, b = numbers(2)
    status, body = await api.call("POST", f"/v1/surveys/{sid}/send",
                                  {"msisdns": [a, "0" + b[2:], "12345"]})
    assert status == 202, body
    assert (body["invited"], body["already_invited"], body["rejected_total"]) == (2, 0, 1)
    assert body["rejected"][0]["value"] == "12345" and body["rejected"][0]["reason"]
    status, body = await api.call("POST", f"/v1/surveys/{sid}/send", {"msisdns": [a, b]})
    assert status == 202 and (body["invited"], body["already_invited"]) == (0, 2)

    assert await env.service.on_inbound(a, "5", await env.sent_at(UUID(sid), a))
    status, results = await api.call("GET", f"/v1/surveys/{sid}/results")
    assert status == 200, results
    assert results["counts"] == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 1}
    assert (results["invited"], results["replied"], results["response_rate"]) == (2, 1, 0.5)
    status, got = await api.call("GET", f"/v1/surveys/{sid}")
    assert status == 200 and got["status"] == "sent"
    status, closed = await api.call("POST", f"/v1/surveys/{sid}/close")
    assert status == 200 and closed["status"] == "closed"
    status, body = await api.call("POST", f"/v1/surveys/{sid}/send", {"msisdns": [a]})
    assert status == 409, body


async def test_http_errors_and_scope(api: Api) -> None:
    status, body = await api.call("POST", "/v1/surveys", {
        "name": "x", "question": "?", "answers": "12345", "reply_window_s": 600})
    assert status == 400 and body["error"]["field"] == "answers"
    status, body = await api.call("POST", "/v1/surveys", {
        "name": "x", "question": "?", "answers": FIVE, "reply_window_s": 5})
    assert status == 422 and body["error"]["field"] == "reply_window_s"
    status, body = await api.call("POST", "/v1/surveys", {
        "name": "x", "question": "?", "answers": FIVE, "reply_window_s": 600, "colour": 1})
    assert status == 422 and body["error"]["field"] == "colour"
    for path in ("/v1/surveys/nope/results", f"/v1/surveys/{uuid.uuid4()}/results",
                 f"/v1/surveys/{uuid.uuid4()}"):
        status, body = await api.call("GET", path)
        assert status == 404, (path, body)
    status, body = await api.call("POST", f"/v1/surveys/{uuid.uuid4()}/send",
                                  {"msisdns": ["0901234567"]})
    assert status == 404
    _, weak = await api.apikeys.create(f"sv-weak-{uuid.uuid4().hex[:10]}", ["messages:send"])
    status, body = await api.call("POST", "/v1/surveys", {}, key=weak)
    assert status == 403


# --- end to end -----------------------------------------------------------------------------


async def test_survey_end_to_end_through_the_simulator(make_stack: MakeStack) -> None:
    st = await make_stack()
    gw = st.gw
    assert gw.pool is not None and gw.intake is not None and gw.mo is not None
    inbound = InboundStore(gw.pool)
    subscribers = SubscriberStore(gw.pool)
    service = SurveyService(SurveyStore(gw.pool), gw.intake, subscribers, inbound=inbound)
    gw.mo.on_message = service.on_message  # what gateway/service.py will wire
    segment = f"seg-{uuid.uuid4().hex[:8]}"
    (number,) = numbers(1)
    await subscribers.upsert_many([Subscriber(msisdn=number, tier="Kim cương",
                                              segment=segment)])

    survey = await service.create("CSAT e2e", "Hài lòng không?", FIVE, 3600)
    report = await service.send(survey.id, tiers=["Kim cuong"], segment=segment)
    assert report.invited == 1
    (message_id,) = await gw.pool.fetch(
        "SELECT id FROM messages WHERE idempotency_key = $1", f"survey:{survey.id}:{number}")
    status = await st.wait_terminal([str(message_id["id"])])
    assert status[str(message_id["id"])] == "delivered"

    await st.sim.inject_mo(source=number, destination="8079", text="4")
    deadline = time.monotonic() + 10
    results = await service.results(survey.id)
    while results.replied < 1:
        assert time.monotonic() < deadline, "the reply was not recorded in time"
        await asyncio.sleep(0.05)
        results = await service.results(survey.id)
    assert results.counts == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}
    assert (results.invited, results.response_rate) == (1, 1.0)
    row = await gw.pool.fetchrow(
        "SELECT id, keyword, handled_at FROM inbound_messages WHERE source = $1", number)
    assert row is not None and row["keyword"] == "SURVEY" and row["handled_at"] is not None
    reply = await service.store.reply(survey.id, number)
    assert reply is not None and reply.inbound_id == row["id"]
