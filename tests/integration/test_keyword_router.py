"""The keyword router against a real Postgres: actions, replies and their limits, senders
that are no mobile number, redelivery, reloading (also over HTTP), and one run of the whole
gateway (MO from the simulator -> router -> reply back to the simulator).

Each test uses its own numbers, so the shared database's earlier rows never count.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import PROJECT_ROOT
from gateway.actions import ActionResult, MoContext
from gateway.config import SendingConfig
from gateway.http.app import create_app
from gateway.http.keywords import SCOPE_ADMIN, setup
from gateway.intake import Intake
from gateway.keywords import (
    NOT_MOBILE,
    KeywordRouter,
    KeywordsConfig,
    KeywordTableError,
    SurveyHook,
)
from gateway.mo import MoPart
from gateway.store.apikeys import ApiKeyStore
from gateway.store.inbound import InboundMessage, InboundStore
from gateway.store.messages import MessageStore
from gateway.store.mo_log import MoLogEntry, MoLogStore
from gateway.templating import TemplateRenderer, template_defaults
from tests.integration.conftest import MakeStack

SHORT_CODE = "8079"
TC_REPLY = "Da nhan yeu cau tu choi QC cua Quy khach."


def numbers(n: int) -> list[str]:
    """n fresh E.164 mobile numbers (8490xxxxxxx), unique per call."""
    base = uuid.uuid4().int % 9_000_000 + 1_000_000
    return [f"8490{(base + i) % 10_000_000:07d}" for i in range(n)]


def make_intake(pool: asyncpg.Pool) -> Intake:
    sending = SendingConfig()
    renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms",
                                defaults=template_defaults(sending))
    return Intake(store=MessageStore(pool), queue=None, renderer=renderer, sending=sending)


@dataclass
class StubAction:
    """An action for the tests: records its contexts, answers ``result`` (or raises)."""

    result: ActionResult
    error: Exception | None = None
    calls: list[MoContext] = field(default_factory=list)

    async def __call__(self, ctx: MoContext) -> ActionResult:
        self.calls.append(ctx)
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class SurveyStub:
    takes: bool
    calls: list[tuple[str, str, datetime, UUID]] = field(default_factory=list)

    async def __call__(self, msisdn: str, text: str, received_at: datetime,
                       inbound_id: UUID) -> bool:
        self.calls.append((msisdn, text, received_at, inbound_id))
        return self.takes


@dataclass
class Env:
    pool: asyncpg.Pool
    inbound: InboundStore
    log: MoLogStore
    intake: Intake
    path: Path
    tc: StubAction
    bill: StubAction
    surveys: SurveyStub

    def router(self, *, surveys: SurveyHook | None = None, **actions: Any) -> KeywordRouter:
        return KeywordRouter(self.path, actions={"refuse_ads": self.tc,
                                                 "bill_lookup": self.bill, **actions},
                             intake=self.intake, log_store=self.log, inbound=self.inbound,
                             surveys=surveys or self.surveys, limits=KeywordsConfig())

    async def mo(self, source: str, text: str) -> InboundMessage:
        """A stored single-part inbound message."""
        part = MoPart(link="default", source=source, destination=SHORT_CODE, ref=None,
                      total=1, seq=1, data_coding=8, payload=text.encode("utf-16-be"),
                      dedupe_key=uuid.uuid4().hex)
        stored, message_id = await self.inbound.store_part(part)
        assert stored and message_id is not None
        message = await self.inbound.get(message_id)
        assert message is not None
        return message

    async def replies(self, msisdn: str) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(
            "SELECT id, class, priority, template, body, idempotency_key, api_key_id "
            "FROM messages WHERE msisdn = $1 AND idempotency_key LIKE 'mo-reply:%' "
            "ORDER BY created_at, id", msisdn))

    async def entry(self, message: InboundMessage) -> MoLogEntry:
        found = await self.log.entry_for(message.id)
        assert found is not None
        return found


@pytest.fixture
async def env(pg_pool: asyncpg.Pool, tmp_path: Path) -> Env:
    path = tmp_path / "keywords.toml"
    shutil.copy(PROJECT_ROOT / "keywords.toml", path)
    tc = StubAction(ActionResult(action="refuse_ads", detail="refused", reply_text=TC_REPLY))
    bill = StubAction(ActionResult(action="bill_lookup", detail="bill found",
                                   reply_template="keyword_help",
                                   reply_data={"help_text": "Cuoc thang 11: 250.000d."}))
    return Env(pg_pool, InboundStore(pg_pool), MoLogStore(pg_pool), make_intake(pg_pool),
               path, tc, bill, SurveyStub(takes=False))


# --------------------------------------------------------------------------- keywords


async def test_keyword_calls_its_action_and_replies_as_care(env: Env) -> None:
    (number,) = numbers(1)
    router = env.router()
    msg = await env.mo(number, "Hủy_QC  vì Quá NHIỀU tin")
    await router.on_message(msg)

    (ctx,) = env.tc.calls
    assert (ctx.keyword, ctx.args, ctx.msisdn, ctx.inbound_id) == (
        "TC", ("vì", "Quá", "NHIỀU", "tin"), number, msg.id)
    assert (ctx.destination, ctx.link, ctx.text) == (SHORT_CODE, "default", msg.text)
    assert env.surveys.calls == []  # a keyword never goes to the survey hook
    (reply,) = await env.replies(number)
    assert (reply["class"], reply["priority"], reply["template"], reply["body"]) == (
        "care", 1, None, TC_REPLY)
    assert (reply["idempotency_key"], reply["api_key_id"]) == (f"mo-reply:{msg.id}", None)

    entry = await env.entry(msg)
    assert (entry.keyword, entry.action, entry.detail, entry.replied, entry.reply_kind) == (
        "TC", "refuse_ads", "refused", True, "action")
    assert entry.reply_message_id == reply["id"] and entry.reason is None
    assert entry.handled_at is not None and entry.msisdn == number
    handled = await env.inbound.get(msg.id)
    assert handled is not None and handled.keyword == "TC" and handled.handled_at is not None


async def test_template_reply_and_table_override(env: Env, tmp_path: Path) -> None:
    a, b = numbers(2)
    router = env.router()
    msg = await env.mo(a, "kt cuoc T11")
    await router.on_message(msg)
    (reply,) = await env.replies(a)
    assert reply["template"] == "keyword_help"
    assert reply["body"] == "Cuoc thang 11: 250.000d. Ho tro: 18001090."
    assert env.bill.calls[0].args == ("T11",)

    # the table's reply_template replaces the action's reply (with the action's data)
    env.path.write_text(env.path.read_text(encoding="utf-8").replace(
        'action = "refuse_ads"', 'action = "refuse_ads"\nreply_template = "keyword_unknown"'),
        encoding="utf-8")
    router.reload()
    tc = StubAction(ActionResult(action="refuse_ads", reply_text="ignored",
                                 reply_data={"help_text": "TC da ghi nhan."}))
    router = env.router(refuse_ads=tc)
    msg = await env.mo(b, "TC")
    await router.on_message(msg)
    (reply,) = await env.replies(b)
    assert reply["template"] == "keyword_unknown"
    assert reply["body"] == "Tin nhan chua dung cu phap. TC da ghi nhan. Ho tro: 18001090."


async def test_help_keyword_and_not_configured_action(env: Env) -> None:
    a, b = numbers(2)
    router = env.router()
    await router.on_message(await env.mo(a, "hd"))
    (reply,) = await env.replies(a)
    assert reply["template"] == "keyword_help"
    assert reply["body"].startswith("Cu phap: TC tu choi QC;")

    msg = await env.mo(b, "Đổi SIM")  # no sim_swap implementation given
    await router.on_message(msg)
    (reply,) = await env.replies(b)
    assert "dang duoc cap nhat" in reply["body"]
    entry = await env.entry(msg)
    assert (entry.keyword, entry.action, entry.detail) == (
        "DOI SIM", "sim_swap", "action not configured")


# --------------------------------------------------------------------------- unknown, limits


async def test_unknown_gets_help_once_per_hour(env: Env) -> None:
    (number,) = numbers(1)
    router = env.router()
    first = await env.mo(number, "alo tong dai oi")
    await router.on_message(first)
    second = await env.mo(number, "sao khong tra loi")
    await router.on_message(second)

    (reply,) = await env.replies(number)
    assert reply["template"] == "keyword_unknown"
    assert "alo" not in reply["body"]  # never the subscriber's text
    assert reply["body"].startswith("Tin nhan chua dung cu phap. Cu phap:")
    e1, e2 = await env.entry(first), await env.entry(second)
    assert (e1.action, e1.replied, e1.reply_kind, e1.keyword) == ("unknown", True, "help", None)
    assert (e2.action, e2.replied, e2.reply_message_id) == ("unknown", False, None)
    assert e2.reason is not None and "help already sent" in e2.reason
    assert len(env.surveys.calls) == 2
    assert await env.log.last_unknown_reply(number) == e1.at
    # a keyword is still answered within the hour
    await router.on_message(await env.mo(number, "TC"))
    assert len(await env.replies(number)) == 2
    # entries_for: newest first
    assert [e.id for e in await env.log.entries_for(number)][1:] == [e2.id, e1.id]


async def test_six_messages_in_ten_minutes_get_five_replies(env: Env) -> None:
    (number,) = numbers(1)
    router = env.router()
    msgs = [await env.mo(number, "HD") for _ in range(6)]
    # at once, as an auto-responder loop would: the lock on the number keeps the count exact
    await asyncio.gather(*(router.on_message(m) for m in msgs))
    assert len(await env.replies(number)) == 5
    entries = [await env.entry(m) for m in msgs]
    refused = [e for e in entries if not e.replied]
    assert len(refused) == 1 and refused[0].reason is not None
    assert "rate limited" in refused[0].reason
    assert all(e.handled_at is not None for e in entries)
    since = datetime.now(UTC) - timedelta(minutes=10)
    assert await env.log.replies_since(number, since) == 5
    # other numbers are not affected
    (other,) = numbers(1)
    await router.on_message(await env.mo(other, "HD"))
    assert len(await env.replies(other)) == 1


@pytest.mark.parametrize("source", ["VIETTEL", "1543", "MobiFone"])
async def test_alphanumeric_and_short_code_sources_get_no_reply(env: Env, source: str) -> None:
    router = env.router()
    before = {e.id for e in await env.log.entries_for(source)}
    msg = await env.mo(source, "TC")
    await router.on_message(msg)
    assert env.tc.calls == [] and env.surveys.calls == []
    assert await env.replies(source) == []
    entry = await env.entry(msg)
    assert entry.id not in before
    assert (entry.msisdn, entry.keyword, entry.action, entry.replied, entry.reason) == (
        source, "TC", None, False, NOT_MOBILE)
    handled = await env.inbound.get(msg.id)
    assert handled is not None and handled.handled_at is not None


async def test_national_source_is_answered_on_e164(env: Env) -> None:
    (number,) = numbers(1)
    router = env.router()
    await router.on_message(await env.mo("0" + number[2:], "hd"))
    assert len(await env.replies(number)) == 1


# --------------------------------------------------------------------------- redelivery


async def test_message_handled_twice_is_answered_once(env: Env) -> None:
    a, b = numbers(2)
    router = env.router()
    msg = await env.mo(a, "TC")
    await router.on_message(msg)
    await router.on_message(msg)  # redelivered / replayed
    assert len(env.tc.calls) == 1
    assert len(await env.replies(a)) == 1

    # twice at the same moment (the hook and a sweeper, two processes)
    msg = await env.mo(b, "TC")
    other = env.router()
    await asyncio.gather(router.on_message(msg), other.on_message(msg))
    assert len(env.tc.calls) == 2
    assert len(await env.replies(b)) == 1


async def test_unfinished_claim_is_taken_over_when_stale(env: Env) -> None:
    (number,) = numbers(1)
    msg = await env.mo(number, "TC")
    t0 = datetime.now(UTC)
    entry_id = await env.log.claim(msg.id, number, msg.received_at, at=t0)
    assert entry_id is not None
    assert await env.log.claim(msg.id, number, msg.received_at,
                               at=t0 + timedelta(seconds=10)) is None
    later = t0 + timedelta(seconds=301)
    assert await env.log.claim(msg.id, number, msg.received_at, at=later) == entry_id
    await env.log.record(entry_id, keyword="TC", action="refuse_ads", detail="done")
    assert await env.log.claim(msg.id, number, msg.received_at,
                               at=later + timedelta(hours=1)) is None


async def test_reply_reserved_before_a_crash_is_sent_once_on_takeover(env: Env) -> None:
    (number,) = numbers(1)
    msg = await env.mo(number, "TC")
    stale = datetime.now(UTC) - timedelta(minutes=10)
    entry_id = await env.log.claim(msg.id, number, msg.received_at, at=stale)
    assert entry_id is not None
    assert await env.log.reserve_reply(entry_id, number, kind="action", since=stale,
                                       decide=lambda h: None) is None
    # the process died here; the router takes the message over later
    await env.router().on_message(msg)
    assert len(await env.replies(number)) == 1
    entry = await env.entry(msg)
    assert entry.replied and entry.reply_message_id is not None


# --------------------------------------------------------------------------- failures


async def test_failing_action_gets_the_error_reply(env: Env) -> None:
    (number,) = numbers(1)
    broken = StubAction(ActionResult(action="refuse_ads"), error=RuntimeError("db gone"))
    router = env.router(refuse_ads=broken)
    msg = await env.mo(number, "TC")
    await router.on_message(msg)
    (reply,) = await env.replies(number)
    assert reply["body"] == router.table.error_text
    entry = await env.entry(msg)
    assert (entry.action, entry.detail, entry.reason, entry.reply_kind) == (
        "refuse_ads", "action failed: RuntimeError", "action failed", "error")


async def test_declined_action_falls_back_to_help(env: Env) -> None:
    (number,) = numbers(1)
    confirm = StubAction(ActionResult(action="confirm", detail="nothing to confirm",
                                      handled=False))
    router = env.router(confirm=confirm)
    msg = await env.mo(number, "Y")
    await router.on_message(msg)
    (reply,) = await env.replies(number)
    assert reply["template"] == "keyword_help"
    entry = await env.entry(msg)
    assert (entry.keyword, entry.action, entry.reason, entry.reply_kind) == (
        "Y", "confirm", "action declined", "help")


async def test_reply_that_cannot_be_made_releases_its_slot(env: Env) -> None:
    (number,) = numbers(1)
    bad = StubAction(ActionResult(action="bill_lookup", reply_template="keyword_help"))
    router = env.router(bill_lookup=bad)  # keyword_help needs help_text: IntakeError
    msg = await env.mo(number, "KT CUOC")
    await router.on_message(msg)
    assert await env.replies(number) == []
    entry = await env.entry(msg)
    assert not entry.replied and entry.reason is not None
    assert entry.reason.startswith("reply failed: data:")
    assert await env.log.replies_since(number, datetime.now(UTC) - timedelta(hours=1)) == 0


# --------------------------------------------------------------------------- surveys


async def test_survey_hook_takes_what_is_no_keyword(env: Env) -> None:
    (number,) = numbers(1)
    surveys = SurveyStub(takes=True)
    router = env.router(surveys=surveys)
    msg = await env.mo(number, "5")
    await router.on_message(msg)
    assert surveys.calls == [(number, "5", msg.received_at, msg.id)]
    assert await env.replies(number) == []
    entry = await env.entry(msg)
    assert (entry.keyword, entry.action, entry.replied) == ("SURVEY", "survey", False)
    handled = await env.inbound.get(msg.id)
    assert handled is not None and handled.keyword == "SURVEY"


# --------------------------------------------------------------------------- reloading


async def test_reload_keeps_the_old_table_when_the_file_is_broken(env: Env) -> None:
    router = env.router()
    before = router.table
    env.path.write_text(env.path.read_text(encoding="utf-8") + '\n[[keyword]]\nkeyword = "HD"'
                        '\naction = "help"\n', encoding="utf-8")
    with pytest.raises(KeywordTableError, match="'HD'"):
        router.reload()
    assert router.table is before
    assert not router.try_reload()

    env.path.write_text('help_text = "Moi: TC"\n[[keyword]]\nkeyword = "TC"\n'
                        'action = "refuse_ads"\n', encoding="utf-8")
    assert router.try_reload()
    assert len(router.table) == 1 and router.table.match("hd") is None


@dataclass
class Api:
    client: TestClient[Any, Any]
    key: str

    async def reload(self, key: str | None = None) -> tuple[int, Any]:
        resp = await self.client.post("/v1/admin/keywords/reload",
                                      headers={"Authorization": f"Bearer {key or self.key}"})
        return resp.status, await resp.json()


async def _no_health() -> dict[str, Any]:
    return {}


@pytest.fixture
async def api(env: Env) -> AsyncIterator[tuple[Api, KeywordRouter, ApiKeyStore]]:
    router = env.router()
    apikeys = ApiKeyStore(env.pool)
    app: web.Application = create_app(
        intake=env.intake, store=MessageStore(env.pool), apikeys=apikeys, health=_no_health,
        key_cache_ttl_s=0, extensions=[lambda a: setup(a, router=router)])
    _, key = await apikeys.create(f"kw-test-{uuid.uuid4().hex[:10]}", [SCOPE_ADMIN])
    async with TestClient(TestServer(app)) as client:
        yield Api(client, key), router, apikeys


async def test_admin_reload_endpoint(api: tuple[Api, KeywordRouter, ApiKeyStore],
                                     env: Env) -> None:
    client, router, apikeys = api
    status, body = await client.reload()
    assert status == 200
    assert body["keywords"] == 11 and "refuse_ads" in body["actions"] and body["aliases"] > 10

    env.path.write_text('help_text = "h"\n[[keyword]]\nkeyword = "TC"\nactoin = "x"\n',
                        encoding="utf-8")
    before = router.table
    status, body = await client.reload()
    assert status == 422
    assert body["error"]["field"] == "keywords"
    assert "actoin" in body["error"]["reason"] and "stays in use" in body["error"]["reason"]
    assert router.table is before

    _, other = await apikeys.create(f"kw-send-{uuid.uuid4().hex[:10]}", ["messages:send"])
    status, _ = await client.reload(key=other)
    assert status == 403


# --------------------------------------------------------------------------- end to end


async def _until(pred: Callable[[], Awaitable[bool]] | Callable[[], bool],
                 timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = pred()
        if not isinstance(done, bool):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_end_to_end_through_the_simulator(make_stack: MakeStack, tmp_path: Path) -> None:
    st = await make_stack()
    gw = st.gw
    assert gw.pool is not None and gw.intake is not None and gw.mo is not None
    tc = StubAction(ActionResult(action="refuse_ads", detail="refused", reply_text=TC_REPLY))
    router = KeywordRouter(PROJECT_ROOT / "keywords.toml", actions={"refuse_ads": tc},
                           intake=gw.intake, log_store=MoLogStore(gw.pool),
                           inbound=InboundStore(gw.pool), surveys=None)
    gw.mo.on_message = router.on_message  # what gateway/service.py will wire
    (number,) = numbers(1)

    await st.sim.inject_mo(source=number, destination=SHORT_CODE, text="hd")
    await _until(lambda: len(st.sim.messages(number)) >= 1)
    (help_reply,) = st.sim.messages(number)
    assert help_reply.startswith("Cu phap: TC tu choi QC;")

    long_refusal = ("HỦY QC vì tôi nhận quá nhiều tin nhắn quảng cáo mỗi ngày, "
                    "đề nghị dừng gửi cho số thuê bao này ngay. Cảm ơn!")
    parts = await st.sim.inject_mo(source=number, destination=SHORT_CODE, text=long_refusal,
                                   data_coding=8, shuffle_parts=True)
    assert parts >= 2
    await _until(lambda: len(st.sim.messages(number)) >= 2)
    assert st.sim.messages(number)[1] == TC_REPLY
    (ctx,) = tc.calls
    assert ctx.keyword == "TC" and ctx.text == long_refusal
    assert ctx.args[:3] == ("vì", "tôi", "nhận")
    rows = await gw.pool.fetch("SELECT keyword, handled_at FROM inbound_messages "
                               "WHERE source = $1 ORDER BY created_at", number)
    assert [r["keyword"] for r in rows] == ["HD", "TC"]
    assert all(r["handled_at"] is not None for r in rows)
