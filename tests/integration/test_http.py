"""The HTTP API against the real parts: Postgres ledger and API keys, Redis queue, templates.

Each test gets its own API keys (unique names) and its own arq queue name, so tests share the
run's database and Redis db and may run in any order. There is no SMSC here: the health check
reports SMPP from a flag the test sets, Postgres and Redis from real pings.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import PROJECT_ROOT
from gateway.config import RedisConfig, SendingConfig
from gateway.http.app import create_app
from gateway.http.auth import KeyVerifier
from gateway.intake import Intake
from gateway.queue import BatchingEnqueuer, JobQueue, connect
from gateway.smpp.encoding import normalise
from gateway.store.apikeys import ApiKeyStore
from gateway.store.messages import MessageStore
from gateway.templating import TemplateRenderer

SEND = "messages:send"
VIETNAMESE = ("Quý khách đã thanh toán hóa đơn tháng 5 thành công. Chi tiết xem trên ứng dụng. "
              "Cảm ơn quý khách!")  # 97 characters: 2 UCS-2 parts, 1 GSM-7 part without marks


@dataclass
class Api:
    client: TestClient[Any, Any]
    store: MessageStore
    apikeys: ApiKeyStore
    queue: JobQueue
    enqueuer: BatchingEnqueuer
    renderer: TemplateRenderer
    pool: asyncpg.Pool
    key: str  # plaintext of a key with messages:send
    state: dict[str, Any] = field(default_factory=lambda: {"smpp_bound": True})

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def post(self, body: Any, *, key: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post("/v1/messages", json=body,
                                      headers={**self.auth(key), **(headers or {})})
        return resp.status, await resp.json()

    async def get(self, message_id: str, *, key: str | None = None) -> tuple[int, Any]:
        resp = await self.client.get(f"/v1/messages/{message_id}", headers=self.auth(key))
        return resp.status, await resp.json()

    async def depth(self) -> int:
        """Jobs in this test's arq queue, once intake's batched enqueue has been flushed."""
        await self.enqueuer.flush()
        return await self.queue.depth()

    async def new_key(self, *scopes: str) -> str:
        _, plaintext = await self.apikeys.create(f"http-test-{uuid.uuid4().hex[:10]}", scopes)
        return plaintext


def _msisdn() -> str:
    """A random Viettel-range mobile in national form, e.g. 0961234567."""
    return "096" + str(uuid.uuid4().int)[:7]


@pytest.fixture
async def api(pg_pool: asyncpg.Pool, redis_dsn: str) -> AsyncIterator[Api]:
    store = MessageStore(pg_pool)
    apikeys = ApiKeyStore(pg_pool)
    renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms")
    cfg = RedisConfig(dsn=redis_dsn, queue_name=f"smsgw:test:http:{uuid.uuid4().hex}")
    redis = await connect(cfg)
    queue = JobQueue(redis, cfg)
    enqueuer = BatchingEnqueuer(queue)
    enqueuer.start()
    intake = Intake(store=store, queue=enqueuer, renderer=renderer, sending=SendingConfig())
    state: dict[str, Any] = {"smpp_bound": True}

    async def health() -> dict[str, Any]:
        postgres = redis_ok = True
        try:
            await store.ping()
        except Exception:
            postgres = False
        try:
            await queue.ping()
        except Exception:
            redis_ok = False
        return {"smpp": {"bound": state["smpp_bound"], "binds": []}, "postgres": postgres,
                "redis": redis_ok}

    app = create_app(intake=intake, store=store, apikeys=apikeys, health=health,
                     max_body_bytes=64 * 1024)
    _, key = await apikeys.create(f"http-test-{uuid.uuid4().hex[:10]}", [SEND])
    try:
        async with TestClient(TestServer(app)) as client:
            yield Api(client, store, apikeys, queue, enqueuer, renderer, pg_pool, key, state)
    finally:
        await enqueuer.stop()
        await redis.aclose()


async def _never_called() -> dict[str, Any]:
    raise AssertionError("health() was not expected to be called")


# --- authentication -------------------------------------------------------------------------


async def test_missing_key_is_401_with_a_hint(api: Api) -> None:
    resp = await api.client.post("/v1/messages", json={"to": _msisdn(), "text": "hi"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    error = (await resp.json())["error"]
    assert error["field"] == "Authorization"
    assert "smsgw apikey create --name NAME" in error["reason"]


async def test_wrong_key_is_401(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": "hi"},
                                  key="smsgw_" + "x" * 43)
    assert status == 401
    assert body["error"]["field"] == "Authorization"
    resp = await api.client.get("/v1/messages/" + str(uuid.uuid4()),
                                headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 401


async def test_key_without_the_scope_is_403(api: Api) -> None:
    key = await api.new_key("campaigns:write")
    status, body = await api.post({"to": _msisdn(), "text": "hi"}, key=key)
    assert status == 403
    assert "messages:send" in body["error"]["reason"]


async def test_revoked_key_is_refused(api: Api) -> None:
    # The fixture's app caches keys for 5 s; this one does not, so the revocation is seen at
    # once (with the cache it is seen within the TTL, see test_key_cache_serves_until_its_ttl).
    app = create_app(intake=Intake(store=api.store, queue=None, renderer=api.renderer,
                                   sending=SendingConfig()),
                     store=api.store, apikeys=api.apikeys, health=_never_called,
                     key_cache_ttl_s=0)
    name = f"http-test-{uuid.uuid4().hex[:10]}"
    _, key = await api.apikeys.create(name, [SEND])
    async with TestClient(TestServer(app)) as client:
        url = f"/v1/messages/{uuid.uuid4()}"
        resp = await client.get(url, headers=api.auth(key))
        assert resp.status == 404  # a valid key, an unknown id
        assert await api.apikeys.revoke(name)
        resp = await client.get(url, headers=api.auth(key))
        assert resp.status == 401
        assert (await resp.json())["error"]["reason"] == "unknown or revoked API key"


async def test_key_cache_serves_until_its_ttl(api: Api) -> None:
    now = [100.0]
    verifier = KeyVerifier(api.apikeys, ttl_s=5.0, clock=lambda: now[0])
    name = f"http-test-{uuid.uuid4().hex[:10]}"
    record, key = await api.apikeys.create(name, [SEND])
    cached = await verifier.verify(key)
    assert cached is not None and cached.id == record.id
    await api.apikeys.revoke(name)
    now[0] += 4.9
    assert await verifier.verify(key) is not None  # still cached: revocation not seen yet
    now[0] += 0.2
    assert await verifier.verify(key) is None  # TTL over: the revocation applies


# --- sending --------------------------------------------------------------------------------


async def test_text_is_accepted_stored_and_enqueued(api: Api) -> None:
    to = _msisdn()
    status, body = await api.post({"to": to, "text": "Ma xac thuc cua ban la 123456"})
    assert status == 202
    assert body["created"] is True
    assert body["status"] == "queued"
    assert body["encoding"] == "gsm7"
    assert body["segments"] == 1
    full = "84" + to[1:]
    assert body["to"] != full and body["to"].endswith(full[-3:])
    record = await api.store.get(uuid.UUID(body["id"]))
    assert record is not None and record.msisdn == full
    assert await api.depth() == 1
    assert await api.queue.redis.exists(f"arq:job:send:{body['id']}") == 1


async def test_vietnamese_text_is_ucs2(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": VIETNAMESE})
    assert status == 202
    assert body["encoding"] == "ucs2"
    assert body["segments"] == 2  # 70 characters fit one UCS-2 part; this has more


async def test_khong_dau_sends_without_diacritics(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": VIETNAMESE, "khong_dau": True})
    assert status == 202
    assert body["encoding"] == "gsm7"
    assert body["segments"] == 1


async def test_template_with_sample_data(api: Api) -> None:
    sample = dict(api.renderer.meta("bill_issued").sample)
    status, body = await api.post({"to": _msisdn(), "template": "bill_issued", "data": sample})
    assert status == 202, body
    assert body["created"] is True
    assert body["encoding"] in ("gsm7", "ucs2")
    record = await api.store.get(uuid.UUID(body["id"]))
    assert record is not None and record.template == "bill_issued"
    assert await api.depth() == 1


async def test_template_missing_variable_is_422_naming_it(api: Api) -> None:
    sample = dict(api.renderer.meta("bill_issued").sample)
    missing = "full_name"
    del sample[missing]
    status, body = await api.post({"to": _msisdn(), "template": "bill_issued", "data": sample})
    assert status == 422
    assert body["error"]["field"] == "data"
    assert missing in body["error"]["reason"]


async def test_unknown_template_is_422(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "template": "no_such_template_x"})
    assert status == 422
    assert body["error"]["field"] == "template"


async def _count_key(api: Api, idempotency_key: str) -> int:
    count: int = await api.pool.fetchval(
        "SELECT count(*) FROM messages WHERE idempotency_key = $1", idempotency_key)
    return count


async def test_idempotency_key_in_body(api: Api) -> None:
    idem = f"order-{uuid.uuid4().hex}"
    msg = {"to": _msisdn(), "text": "Don hang cua ban da duoc giao", "idempotency_key": idem}
    first_status, first = await api.post(msg)
    again_status, again = await api.post(msg)
    assert (first_status, again_status) == (202, 200)
    assert again["id"] == first["id"]
    assert first["created"] is True and again["created"] is False
    assert {k: v for k, v in again.items() if k != "created"} == \
        {k: v for k, v in first.items() if k != "created"}
    assert await _count_key(api, idem) == 1
    assert await api.depth() == 1  # one SMS


async def test_idempotency_key_header(api: Api) -> None:
    idem = f"order-{uuid.uuid4().hex}"
    msg = {"to": _msisdn(), "text": "Don hang cua ban da duoc giao"}
    first_status, first = await api.post(msg, headers={"Idempotency-Key": idem})
    again_status, again = await api.post(msg, headers={"Idempotency-Key": idem})
    assert (first_status, again_status) == (202, 200)
    assert again["id"] == first["id"] and again["created"] is False
    # the body field with the same key names the same message
    body_status, in_body = await api.post({**msg, "idempotency_key": idem})
    assert (body_status, in_body["id"]) == (200, first["id"])
    assert await _count_key(api, idem) == 1
    status, body = await api.post({**msg, "idempotency_key": "other"},
                                  headers={"Idempotency-Key": idem})
    assert status == 422 and body["error"]["field"] == "idempotency_key"


async def test_idempotency_keys_are_per_api_key(api: Api) -> None:
    idem = f"order-{uuid.uuid4().hex}"
    msg = {"to": _msisdn(), "text": "Xin chao", "idempotency_key": idem}
    other = await api.new_key(SEND)
    s1, first = await api.post(msg)
    s2, second = await api.post(msg, key=other)
    assert (s1, s2) == (202, 202)
    assert first["id"] != second["id"]


# --- rejected requests ----------------------------------------------------------------------


async def test_bad_number_is_422_saying_why(api: Api) -> None:
    status, body = await api.post({"to": "09012", "text": "hi"})
    assert status == 422
    assert body["error"]["field"] == "to"
    assert "too short" in body["error"]["reason"]


@pytest.mark.parametrize("extra", [{}, {"data": {"a": 1}}])
async def test_neither_text_nor_template_is_422(api: Api, extra: dict[str, Any]) -> None:
    status, body = await api.post({"to": _msisdn(), **extra})
    assert status == 422
    assert body["error"]["field"] == "text"
    assert "text" in body["error"]["reason"] and "template" in body["error"]["reason"]


async def test_both_text_and_template_is_422(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": "hi", "template": "bill_issued"})
    assert status == 422
    assert "exactly one" in body["error"]["reason"]


async def test_missing_to_is_422(api: Api) -> None:
    status, body = await api.post({"text": "hi"})
    assert (status, body["error"]["field"]) == (422, "to")


async def test_malformed_json_is_400(api: Api) -> None:
    resp = await api.client.post("/v1/messages", data=b'{"to": "0901234567", "text": ',
                                 headers={**api.auth(), "Content-Type": "application/json"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == "body"
    assert "not valid JSON" in error["reason"]


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "empty"),
    (b"[1, 2]", "not an array"),
    (b'"text"', "not a string"),
    (b"\xff\xfe{}", "UTF-8"),
])
async def test_body_must_be_a_json_object(api: Api, raw: bytes, words: str) -> None:
    resp = await api.client.post("/v1/messages", data=raw, headers=api.auth())
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == "body"
    assert words in error["reason"]


async def test_unknown_fields_are_422_naming_them(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": "hi", "priorty": 1, "cc": "x"})
    assert status == 422
    assert "'priorty'" in body["error"]["reason"] and "'cc'" in body["error"]["reason"]


@pytest.mark.parametrize(("patch", "field_name"), [
    ({"to": 84901234567}, "to"),
    ({"to": None}, "to"),
    ({"text": ["a"]}, "text"),
    ({"data": [], "template": "bill_issued", "text": None}, "data"),
    ({"khong_dau": "yes"}, "khong_dau"),
    ({"sender": 5}, "sender"),
    ({"class": 1}, "class"),
])
async def test_wrong_types_are_400_naming_the_field(api: Api, patch: dict[str, Any],
                                                    field_name: str) -> None:
    body = {"to": _msisdn(), "text": "hi", **patch}
    status, answer = await api.post({k: v for k, v in body.items()
                                     if v is not None or k == "to"})
    assert status == 400
    assert answer["error"]["field"] == field_name


async def test_bad_class_value_is_422(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": "hi", "class": "spam"})
    assert (status, body["error"]["field"]) == (422, "class")


async def test_bad_sender_is_422(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": "hi", "sender": "TOO-LONG-NAME"})
    assert (status, body["error"]["field"]) == (422, "sender")


async def test_body_too_large_is_413_json(api: Api) -> None:
    resp = await api.client.post("/v1/messages", data=b"x" * (65 * 1024), headers=api.auth())
    assert resp.status == 413
    assert "error" in await resp.json()


async def test_rejected_requests_store_and_enqueue_nothing(api: Api) -> None:
    await api.post({"to": "09012", "text": "hi"})
    await api.post({"to": _msisdn(), "text": "hi", "bogus": True})
    assert await api.depth() == 0


# --- reading --------------------------------------------------------------------------------


async def test_get_returns_the_message_and_its_events(api: Api) -> None:
    to = _msisdn()
    _, sent = await api.post({"to": to, "text": VIETNAMESE, "sender": "SHOP"})
    status, body = await api.get(sent["id"])
    assert status == 200
    assert body["id"] == sent["id"]
    assert body["to"] == "84" + to[1:]  # full number for the key that sent it
    assert body["sender"] == "SHOP"
    assert (body["status"], body["encoding"], body["segments"]) == ("queued", "ucs2", 2)
    assert body["class"] == "care"
    assert body["attempts"] == 0
    assert body["smsc_message_id"] is None and body["submitted_at"] is None
    assert body["done_at"] is None and body["last_error"] is None
    assert "T" in body["created_at"] and "T" in body["updated_at"]
    assert len(body["events"]) == 1
    event = body["events"][0]
    assert (event["status"], event["detail"]) == ("queued", "created")
    assert "T" in event["at"]
    assert body["text"] == normalise(VIETNAMESE).strip()  # the owner key may read its text
    assert body["template"] is None


async def test_get_after_submit_shows_new_events(api: Api) -> None:
    from gateway.domain import MessageStatus
    from gateway.store.messages import SubmitResult

    _, sent = await api.post({"to": _msisdn(), "text": "hi", "class": "care"})
    mid = uuid.UUID(sent["id"])
    await api.store.claim([mid])
    smsc_id = uuid.uuid4().hex[:16]
    await api.store.record_submit_results(
        [SubmitResult(mid, MessageStatus.SUBMITTED, part_ids=(smsc_id,))])
    status, body = await api.get(sent["id"])
    assert status == 200
    assert body["status"] == "submitted"
    assert body["smsc_message_id"] == smsc_id
    assert body["attempts"] == 1 and body["submitted_at"] is not None
    assert [e["status"] for e in body["events"]] == ["queued", "submitting", "submitted"]


async def test_get_unknown_id_is_404(api: Api) -> None:
    status, body = await api.get(str(uuid.uuid4()))
    assert status == 404
    assert body["error"]["field"] == "id"


async def test_get_malformed_id_is_404(api: Api) -> None:
    status, body = await api.get("not-a-uuid")
    assert status == 404
    assert body["error"]["field"] == "id"


async def test_get_another_keys_message_is_404(api: Api) -> None:
    _, sent = await api.post({"to": _msisdn(), "text": "hi"})
    other = await api.new_key(SEND)
    status, _ = await api.get(sent["id"], key=other)
    assert status == 404


# --- health and generic errors --------------------------------------------------------------


async def test_healthz_ok_when_everything_is_up(api: Api) -> None:
    resp = await api.client.get("/healthz")  # no key needed
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["postgres"] is True and body["redis"] is True
    assert body["smpp"]["bound"] is True


async def test_healthz_503_when_smpp_is_unbound(api: Api) -> None:
    # Spine rule: 503 whenever any of SMPP, Postgres, Redis is down. Messages are still
    # accepted meanwhile (they wait in the queue).
    api.state["smpp_bound"] = False
    resp = await api.client.get("/healthz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["smpp"]["bound"] is False and body["postgres"] is True
    status, _ = await api.post({"to": _msisdn(), "text": "hi"})
    assert status == 202


async def test_healthz_503_when_postgres_is_down(api: Api, pg_dsn: str) -> None:
    dead_pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    await dead_pool.close()
    dead_store = MessageStore(dead_pool)

    async def health() -> dict[str, Any]:
        try:
            await dead_store.ping()
            postgres = True
        except Exception:
            postgres = False
        return {"smpp": {"bound": True, "binds": []}, "postgres": postgres, "redis": True}

    app = create_app(intake=Intake(store=dead_store, queue=None, renderer=api.renderer,
                                   sending=SendingConfig()),
                     store=dead_store, apikeys=api.apikeys, health=health)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert (await resp.json())["postgres"] is False


async def test_unexpected_error_is_a_bare_500(api: Api, pg_dsn: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    dead_pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    await dead_pool.close()
    dead_store = MessageStore(dead_pool)

    async def health() -> dict[str, Any]:
        raise RuntimeError("boom")

    app = create_app(intake=Intake(store=dead_store, queue=None, renderer=api.renderer,
                                   sending=SendingConfig()),
                     store=dead_store, apikeys=api.apikeys, health=health)
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.ERROR, logger="smsgw.http"):
            resp = await client.get(f"/v1/messages/{uuid.uuid4()}", headers=api.auth())
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert error["reason"] == "internal error, see the gateway log"
        assert error["request_id"] == resp.headers["X-Request-Id"]
        assert set(error) == {"reason", "request_id"}
        assert error["request_id"] in caplog.text and "Traceback" in caplog.text
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert "boom" not in await resp.text()


async def test_unknown_route_and_method_are_json(api: Api) -> None:
    resp = await api.client.get("/v2/nothing")
    assert resp.status == 404
    assert "error" in await resp.json()
    resp = await api.client.delete("/v1/messages", headers=api.auth())
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert "POST" in (await resp.json())["error"]["reason"]


async def test_logs_mask_the_number_and_omit_the_text(api: Api,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    to = _msisdn()
    with caplog.at_level(logging.INFO):
        idem = uuid.uuid4().hex
        await api.post({"to": to, "text": "Mat khau bi mat 987123", "idempotency_key": idem})
        await api.post({"to": to, "text": "Mat khau bi mat 987123", "idempotency_key": idem})
    assert to[1:] not in caplog.text
    assert "987123" not in caplog.text


async def test_advertising_is_labelled_and_carries_refusal_instructions(api: Api) -> None:
    status, body = await api.post({"to": _msisdn(), "text": "Uu dai nap the 50% hom nay",
                                   "class": "advertising"})
    assert status == 202, body
    status, detail = await api.get(body["id"])
    assert detail["text"] == "[QC] Uu dai nap the 50% hom nay. Tu choi QC soan TC gui 1234"
    assert detail["class"] == "advertising"
