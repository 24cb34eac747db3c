"""Self-service requests end to end: actions on real Postgres, jobs on real Redis/arq, and a
real back-office webhook server on 127.0.0.1."""

from __future__ import annotations

import json
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from arq import Retry, Worker
from arq.connections import ArqRedis

from gateway.actions import ActionResult, MoContext
from gateway.actions.selfservice import (
    ADDRESS_HELP,
    ConfirmAction,
    ServiceRequestAction,
    build_actions,
)
from gateway.config import RedisConfig, WebhookConfig
from gateway.queue import connect, deserialize, serialize
from gateway.store.service_requests import (
    REFERENCE_RE,
    RequestKind,
    RequestStatus,
    ServiceRequest,
    ServiceRequestStore,
)
from gateway.webhooks import REFERENCE_HEADER, verify
from jobs.webhooks import (
    POST_FUNCTION,
    job_id,
    make_enqueuer,
    post_service_request,
    sweep_service_requests,
)

SECRET = "test-webhook-secret"
SHORTCODE = "1234"


# --------------------------------------------------------------------------- the back office


@dataclass
class BackOffice:
    """A back-office endpoint that records every post and answers from a script."""

    statuses: list[int] = field(default_factory=list)  # answers in order, then 200
    posts: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append({
            "valid": verify(body, request.headers, SECRET),
            "body": json.loads(body),
            "reference": request.headers.get(REFERENCE_HEADER),
        })
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status == 200}, status=status)


@pytest.fixture
async def back_office() -> AsyncIterator[BackOffice]:
    office = BackOffice()
    app = web.Application()
    app.router.add_post("/service-requests", office.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    office.url = f"http://127.0.0.1:{port}/service-requests"
    try:
        yield office
    finally:
        await runner.cleanup()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def store(pg_pool: asyncpg.Pool) -> ServiceRequestStore:
    return ServiceRequestStore(pg_pool)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def arq_redis(redis_dsn: str) -> AsyncIterator[tuple[ArqRedis, str]]:
    queue = f"smsgw:test:svcreq:{uuid.uuid4().hex[:8]}"
    redis = await connect(RedisConfig(dsn=redis_dsn, queue_name=queue))
    try:
        yield redis, queue
    finally:
        await redis.delete(queue)
        await redis.aclose()


@dataclass
class Recorder:
    ids: list[int] = field(default_factory=list)

    async def __call__(self, request_id: int) -> None:
        self.ids.append(request_id)


def _number() -> str:
    return f"8491{random.randrange(10**7):07d}"


def _mo(msisdn: str, keyword: str, *args: str, at: datetime | None = None) -> MoContext:
    return MoContext(inbound_id=uuid.uuid4(), msisdn=msisdn, destination=SHORTCODE,
                     text=" ".join((keyword, *args)), received_at=at or datetime.now(UTC),
                     link="sim", keyword=keyword, args=args)


def _ctx(store: ServiceRequestStore, cfg: WebhookConfig,
         http: aiohttp.ClientSession) -> dict[str, Any]:
    return {"service_requests": store, "webhook": cfg, "http": http}


def _cfg(url: str, **over: Any) -> WebhookConfig:
    return WebhookConfig(url=url, secret=SECRET, timeout_s=2, retry_base_s=0.01,
                         retry_max_s=0.05, **over)


async def _by_ref(store: ServiceRequestStore, result: ActionResult) -> ServiceRequest:
    request = await store.get_by_reference(str(result.reply_data["reference"]))
    assert request is not None
    return request


Actions = dict[str, Callable[[MoContext], Awaitable[ActionResult]]]


# --------------------------------------------------------------------------- non-destructive


async def test_reconnect_is_confirmed_posted_and_replied(
        store: ServiceRequestStore, http: aiohttp.ClientSession, back_office: BackOffice,
        arq_redis: tuple[ArqRedis, str]) -> None:
    redis, queue = arq_redis
    actions = build_actions(store, make_enqueuer(redis, queue))
    msisdn = _number()
    mo = _mo(msisdn, "MO LAI")
    result = await actions["reconnect"](mo)

    assert result.action == "service_request" and result.handled
    assert result.reply_template == "keyword_request"
    assert result.reply_data["request_name"] == "mở lại dịch vụ"
    reference = str(result.reply_data["reference"])
    assert REFERENCE_RE.fullmatch(reference) and reference in result.detail
    request = await _by_ref(store, result)
    assert (request.kind, request.status, request.msisdn) == (
        RequestKind.RECONNECT, RequestStatus.CONFIRMED, msisdn)
    assert request.inbound_id == mo.inbound_id and request.confirm_by is None
    assert request.confirmed_at == mo.received_at == request.requested_at

    # the job is on the care queue under its idempotent id
    assert await redis.zscore(queue, job_id(request.id)) is not None
    assert await redis.zcard(queue) == 1

    outcome = await post_service_request(_ctx(store, _cfg(back_office.url), http), request.id)
    assert outcome == "posted"
    [post] = back_office.posts
    assert post["valid"] and post["reference"] == reference
    assert post["body"]["reference"] == reference and post["body"]["type"] == "reconnect"
    assert post["body"]["msisdn"] == msisdn and post["body"]["args"] == {}
    assert post["body"]["inbound_id"] == str(mo.inbound_id)
    posted = await store.get(request.id)
    assert posted is not None and posted.status is RequestStatus.POSTED
    assert posted.attempts == 1 and posted.posted_at is not None

    # a second run (a duplicate job) posts nothing more
    assert await post_service_request(_ctx(store, _cfg(back_office.url), http),
                                      request.id) == "skipped: posted"
    assert len(back_office.posts) == 1


async def test_enqueue_is_idempotent(arq_redis: tuple[ArqRedis, str]) -> None:
    redis, queue = arq_redis
    enqueue = make_enqueuer(redis, queue)
    await enqueue(424242)
    await enqueue(424242)
    await enqueue(424243)
    assert await redis.zcard(queue) == 2


async def test_same_mo_twice_makes_one_request(store: ServiceRequestStore) -> None:
    recorder = Recorder()
    action = ServiceRequestAction("reconnect", store, recorder, destructive=False)
    mo = _mo(_number(), "MO LAI")
    first = await action(mo)
    second = await action(mo)
    assert first.reply_data["reference"] == second.reply_data["reference"]
    assert recorder.ids == [(await _by_ref(store, first)).id] * 2  # the job id dedupes


async def test_enqueue_failure_still_replies(store: ServiceRequestStore) -> None:
    async def broken(request_id: int) -> None:
        raise ConnectionError("redis down")

    action = ServiceRequestAction("reconnect", store, broken, destructive=False)
    result = await action(_mo(_number(), "MO LAI"))
    assert result.reply_template == "keyword_request"
    assert (await _by_ref(store, result)).status is RequestStatus.CONFIRMED


# --------------------------------------------------------------------------- destructive + Y


async def test_suspend_awaits_confirmation(store: ServiceRequestStore) -> None:
    recorder = Recorder()
    actions = build_actions(store, recorder)
    mo = _mo(_number(), "TAM NGUNG")
    result = await actions["suspend"](mo)

    assert result.reply_template == "keyword_confirm"
    assert result.reply_data["shortcode"] == SHORTCODE and result.reply_data["window_min"] == 10
    assert result.reply_data["request_name"] == "tạm ngưng dịch vụ"
    request = await _by_ref(store, result)
    assert request.status is RequestStatus.AWAITING_CONFIRMATION
    assert request.confirm_by == mo.received_at + timedelta(minutes=10)
    assert request.confirmed_at is None
    assert recorder.ids == []


async def test_y_within_ten_minutes_confirms_and_posts(
        store: ServiceRequestStore, http: aiohttp.ClientSession,
        back_office: BackOffice) -> None:
    recorder = Recorder()
    actions = build_actions(store, recorder)
    msisdn = _number()
    asked = await actions["suspend"](_mo(msisdn, "TAM NGUNG"))
    reference = asked.reply_data["reference"]
    request = await _by_ref(store, asked)

    y = _mo(msisdn, "Y", at=request.requested_at + timedelta(minutes=9, seconds=59))
    result = await actions["confirm"](y)
    assert result.action == "service_request_confirm"
    assert result.reply_template == "keyword_request"
    assert result.reply_data == {"reference": reference, "request_name": "tạm ngưng dịch vụ"}
    assert recorder.ids == [request.id]
    confirmed = await store.get(request.id)
    assert confirmed is not None and confirmed.status is RequestStatus.CONFIRMED
    assert confirmed.confirmed_at == y.received_at

    assert await post_service_request(_ctx(store, _cfg(back_office.url), http),
                                      request.id) == "posted"
    [post] = back_office.posts
    assert post["valid"] and post["body"]["type"] == "suspend"
    assert post["body"]["reference"] == reference
    assert (await store.get(request.id)).status is RequestStatus.POSTED  # type: ignore[union-attr]

    # a second Y finds nothing left to confirm
    again = await actions["confirm"](_mo(msisdn, "Y", at=y.received_at + timedelta(seconds=5)))
    assert again.reply_template == "keyword_confirm_expired"
    assert again.reply_data == {"reference": ""}
    assert recorder.ids == [request.id]


async def test_y_after_ten_minutes_is_refused(store: ServiceRequestStore,
                                              back_office: BackOffice) -> None:
    recorder = Recorder()
    actions = build_actions(store, recorder)
    msisdn = _number()
    asked = await actions["sim_swap"](_mo(msisdn, "DOI SIM"))
    request = await _by_ref(store, asked)

    late = _mo(msisdn, "Y", at=request.requested_at + timedelta(minutes=11))
    result = await actions["confirm"](late)
    assert result.reply_template == "keyword_confirm_expired"
    assert result.reply_data == {"reference": request.reference}
    assert recorder.ids == [] and back_office.posts == []
    expired = await store.get(request.id)
    assert expired is not None and expired.status is RequestStatus.EXPIRED
    assert expired.confirmed_at is None


async def test_y_with_nothing_pending(store: ServiceRequestStore) -> None:
    result = await ConfirmAction(store, Recorder())(_mo(_number(), "Y"))
    assert result.reply_template == "keyword_confirm_expired"
    assert result.reply_data == {"reference": ""} and result.handled


async def test_y_confirms_only_the_newest_request(store: ServiceRequestStore) -> None:
    recorder = Recorder()
    actions = build_actions(store, recorder)
    msisdn = _number()
    now = datetime.now(UTC)
    first = await _by_ref(store, await actions["suspend"](_mo(msisdn, "TAM NGUNG", at=now)))
    second = await _by_ref(store, await actions["to_postpaid"](
        _mo(msisdn, "CHUYEN TRA SAU", at=now + timedelta(minutes=1))))
    other = await _by_ref(store, await actions["suspend"](_mo(_number(), "TAM NGUNG", at=now)))

    replaced = await store.get(first.id)
    assert replaced is not None and replaced.status is RequestStatus.EXPIRED
    assert replaced.last_error == f"replaced by {second.reference}"

    result = await actions["confirm"](_mo(msisdn, "Y", at=now + timedelta(minutes=2)))
    assert result.reply_data["reference"] == second.reference
    assert result.reply_data["request_name"] == "chuyển sang trả sau"
    assert recorder.ids == [second.id]
    again = await actions["confirm"](_mo(msisdn, "Y", at=now + timedelta(minutes=3)))
    assert again.reply_template == "keyword_confirm_expired"
    untouched = await store.get(other.id)
    assert untouched is not None and untouched.status is RequestStatus.AWAITING_CONFIRMATION


# --------------------------------------------------------------------------- change of address


async def test_change_address_stores_and_posts_the_address(
        store: ServiceRequestStore, http: aiohttp.ClientSession,
        back_office: BackOffice) -> None:
    recorder = Recorder()
    actions = build_actions(store, recorder)
    msisdn = _number()
    words = ("Số", "12", "Lê", "Lợi,", "Phường", "Bến", "Nghé,", "TP.HCM")
    result = await actions["change_address"](_mo(msisdn, "DOI DIA CHI", *words))
    assert result.reply_template == "keyword_request"
    assert result.reply_data["request_name"] == "đổi địa chỉ"
    assert "Lê" not in result.detail  # no address in what the router records
    request = await _by_ref(store, result)
    address = "Số 12 Lê Lợi, Phường Bến Nghé, TP.HCM"
    assert request.args == {"address": address}
    assert request.status is RequestStatus.CONFIRMED and recorder.ids == [request.id]

    assert await post_service_request(_ctx(store, _cfg(back_office.url), http),
                                      request.id) == "posted"
    [post] = back_office.posts
    assert post["valid"] and post["body"]["args"] == {"address": address}
    assert post["body"]["type"] == "change_address"


async def test_change_address_without_address(store: ServiceRequestStore,
                                              pg_pool: asyncpg.Pool) -> None:
    recorder = Recorder()
    action = build_actions(store, recorder)["change_address"]
    msisdn = _number()
    result = await action(_mo(msisdn, "DOI DIA CHI"))
    assert result.reply_text == ADDRESS_HELP.format(shortcode=SHORTCODE)
    assert result.reply_template is None and recorder.ids == []
    count = await pg_pool.fetchval("SELECT count(*) FROM service_requests WHERE msisdn = $1",
                                   msisdn)
    assert count == 0


# --------------------------------------------------------------------------- retries


async def test_back_office_500_twice_then_posted_via_arq_retry(
        store: ServiceRequestStore, http: aiohttp.ClientSession, back_office: BackOffice,
        arq_redis: tuple[ArqRedis, str]) -> None:
    redis, queue = arq_redis
    back_office.statuses = [500, 500]
    action = ServiceRequestAction("reconnect", store, make_enqueuer(redis, queue),
                                  destructive=False)
    request = await _by_ref(store, await action(_mo(_number(), "MO LAI")))

    worker = Worker(functions=[post_service_request], redis_pool=redis, burst=True,
                    queue_name=queue, ctx=_ctx(store, _cfg(back_office.url), http),
                    job_serializer=serialize, job_deserializer=deserialize,
                    handle_signals=False, max_tries=50, poll_delay=0.01, keep_result=60)
    await worker.main()  # burst: returns once the queue is empty (deferred retries included)
    assert (worker.jobs_retried, worker.jobs_complete, worker.jobs_failed) == (2, 1, 0)

    assert len(back_office.posts) == 3
    assert all(p["valid"] and p["body"]["reference"] == request.reference
               for p in back_office.posts)
    posted = await store.get(request.id)
    assert posted is not None and posted.status is RequestStatus.POSTED
    assert posted.attempts == 3 and posted.last_error == "back office answered HTTP 500"
    assert worker.functions[POST_FUNCTION].name == POST_FUNCTION


async def test_back_office_down_fails_after_max_attempts(
        store: ServiceRequestStore, http: aiohttp.ClientSession) -> None:
    cfg = _cfg(f"http://127.0.0.1:{_closed_port()}/service-requests", max_attempts=4)
    action = ServiceRequestAction("reconnect", store, Recorder(), destructive=False)
    request = await _by_ref(store, await action(_mo(_number(), "MO LAI")))
    ctx = _ctx(store, cfg, http)

    delays: list[int | None] = []
    for _ in range(3):
        with pytest.raises(Retry) as caught:
            await post_service_request(ctx, request.id)
        delays.append(caught.value.defer_score)
    assert delays == [20, 40, 50]  # ms: min(retry_max_s, retry_base_s * 2**attempts)
    assert await post_service_request(ctx, request.id) == "failed"

    failed = await store.get(request.id)
    assert failed is not None and failed.status is RequestStatus.FAILED
    assert failed.attempts == 4 and failed.posted_at is None
    assert failed.last_error is not None and "ClientConnectorError" in failed.last_error
    assert await post_service_request(ctx, request.id) == "skipped: failed"


async def test_back_office_down_through_the_worker(
        store: ServiceRequestStore, http: aiohttp.ClientSession,
        arq_redis: tuple[ArqRedis, str]) -> None:
    redis, queue = arq_redis
    cfg = _cfg(f"http://127.0.0.1:{_closed_port()}/service-requests", max_attempts=3)
    action = ServiceRequestAction("reconnect", store, make_enqueuer(redis, queue),
                                  destructive=False)
    request = await _by_ref(store, await action(_mo(_number(), "MO LAI")))
    worker = Worker(functions=[post_service_request], redis_pool=redis, burst=True,
                    queue_name=queue, ctx=_ctx(store, cfg, http), job_serializer=serialize,
                    job_deserializer=deserialize, handle_signals=False, max_tries=50,
                    poll_delay=0.01)
    await worker.main()  # burst: returns once the queue is empty (deferred retries included)
    assert (worker.jobs_retried, worker.jobs_complete) == (2, 1)
    failed = await store.get(request.id)
    assert failed is not None and failed.status is RequestStatus.FAILED
    assert failed.attempts == 3


async def test_no_webhook_configured_keeps_requests_confirmed(
        store: ServiceRequestStore, http: aiohttp.ClientSession) -> None:
    action = ServiceRequestAction("reconnect", store, Recorder(), destructive=False)
    request = await _by_ref(store, await action(_mo(_number(), "MO LAI")))
    outcome = await post_service_request(_ctx(store, WebhookConfig(), http), request.id)
    assert outcome == "skipped: no webhook configured"
    same = await store.get(request.id)
    assert same is not None and same.status is RequestStatus.CONFIRMED and same.attempts == 0


async def test_unknown_or_unconfirmed_requests_are_skipped(
        store: ServiceRequestStore, http: aiohttp.ClientSession,
        back_office: BackOffice) -> None:
    ctx = _ctx(store, _cfg(back_office.url), http)
    assert await post_service_request(ctx, 987_654_321) == "skipped: unknown request"
    action = ServiceRequestAction("suspend", store, Recorder(), destructive=True)
    request = await _by_ref(store, await action(_mo(_number(), "TAM NGUNG")))
    assert await post_service_request(ctx, request.id) == "skipped: awaiting_confirmation"
    assert back_office.posts == []


# --------------------------------------------------------------------------- the sweeper


async def test_sweeper_expires_and_re_enqueues(fresh_pg_dsn: str,
                                               http: aiohttp.ClientSession) -> None:
    pool = await asyncpg.create_pool(fresh_pg_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = ServiceRequestStore(pool)
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        old_confirmed = await store.create(RequestKind.RECONNECT, _number(),
                                           requested_at=long_ago)
        fresh = await store.create(RequestKind.RECONNECT, _number(),
                                   requested_at=datetime.now(UTC))
        overdue = await store.create(RequestKind.SUSPEND, _number(), requested_at=long_ago,
                                     confirm_by=long_ago + timedelta(minutes=10))
        recorder = Recorder()
        ctx = {**_ctx(store, _cfg("http://127.0.0.1:9/x"), http),
               "enqueue_service_request": recorder}
        assert await sweep_service_requests(ctx) == 1
        assert recorder.ids == [old_confirmed.id]
        assert (await store.get(overdue.id)).status is RequestStatus.EXPIRED  # type: ignore[union-attr]
        assert (await store.get(fresh.id)).status is RequestStatus.CONFIRMED  # type: ignore[union-attr]

        # without a webhook nothing is re-enqueued
        recorder.ids.clear()
        ctx["webhook"] = WebhookConfig()
        assert await sweep_service_requests(ctx) == 0 and recorder.ids == []
    finally:
        await pool.close()


async def test_store_rejects_naive_times(store: ServiceRequestStore) -> None:
    with pytest.raises(ValueError):
        await store.create(RequestKind.RECONNECT, _number(), requested_at=datetime.now())
    with pytest.raises(ValueError):
        await store.pending_confirmation(_number(), datetime.now())
