"""The HTTP intake: ``POST /v1/messages``, ``GET /v1/messages/{id}``, ``GET /healthz``.

Handlers only translate between HTTP and the core: parsing is in :mod:`gateway.http.schemas`,
the work in :class:`~gateway.intake.Intake` and :class:`~gateway.store.messages.MessageStore`.
Every error, including aiohttp's own 404/405/413, leaves as ``{"error": {...}}`` JSON; an
unexpected exception is logged with its traceback and answered with a bare 500 that carries
only a request id to look it up (every response has an ``X-Request-Id`` header).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from gateway.http.auth import API_KEY, KeyVerifier, auth_middleware, public, requires_scope
from gateway.http.keylimit import KeyRateLimiter
from gateway.http.schemas import (
    decode_json_object,
    error_response,
    message_detail,
    message_summary,
    parse_message_id,
    parse_send_request,
)
from gateway.intake import Intake, IntakeError
from gateway.store.apikeys import ApiKeyStore
from gateway.store.messages import MessageStore

log = logging.getLogger("smsgw.http")

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]

#: Scope an API key needs to send messages and read their status.
SCOPE_SEND = "messages:send"
#: A health check slower than this counts as failed (a hung database must not hang probes).
HEALTH_TIMEOUT_S = 5.0
INTERNAL_ERROR_REASON = "internal error, see the gateway log"

INTAKE: web.AppKey[Intake] = web.AppKey("intake")
STORE: web.AppKey[MessageStore] = web.AppKey("store")
HEALTH: web.AppKey[HealthCheck] = web.AppKey("health")
KEY_VERIFIER: web.AppKey[KeyVerifier] = web.AppKey("key_verifier")

REQUEST_ID = web.RequestKey("request_id", str)


# --- handlers -------------------------------------------------------------------------------


@requires_scope(SCOPE_SEND)
async def post_message(request: web.Request) -> web.Response:
    """Accept one SMS: 202 when created, 200 when the idempotency key was already used."""
    body = decode_json_object(await request.read())
    send = parse_send_request(body, idempotency_header=request.headers.get("Idempotency-Key"))
    key = request[API_KEY]
    record, created = await request.app[INTAKE].submit(send, api_key_id=key.id)
    if not created:
        log.info("message %s: idempotency key reused by API key %r", record.id, key.name)
    return web.json_response(message_summary(record, created=created),
                             status=202 if created else 200)


@requires_scope(SCOPE_SEND)
async def get_message(request: web.Request) -> web.Response:
    """A message and its events; only the API key that sent it can see it."""
    raw_id = request.match_info["id"]
    message_id = parse_message_id(raw_id)
    store = request.app[STORE]
    record = None if message_id is None else await store.get(message_id)
    # Another key's message is answered like an unknown one: ids are not to be probed.
    if record is None or record.api_key_id != request[API_KEY].id:
        return error_response(404, f"no message with id {raw_id[:100]!r}", field="id")
    events = await store.events(record.id)
    return web.json_response(message_detail(record, events))


def component_healthy(value: Any) -> bool:
    """``True``, or a mapping whose ``ok`` (or, for SMPP, ``bound``) is true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return bool(value.get("ok", value.get("bound", False)))
    return False


@public
async def healthz(request: web.Request) -> web.Response:
    """200 ``{"status": "ok", ...}`` when SMPP, Postgres and Redis are all up, else 503.

    A gateway with no SMPP bind still accepts messages (they wait in the queue), but it
    reports 503 "degraded" so monitoring sees that nothing is being sent.
    """
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            report = await request.app[HEALTH]()
    except Exception:
        log.exception("health check failed")
        return web.json_response({"status": "degraded", "error": "health check failed, see "
                                                                 "the gateway log"}, status=503)
    healthy = all(component_healthy(v) for v in report.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded"}
    body.update((k, v) for k, v in report.items() if k != "status")
    return web.json_response(body, status=200 if healthy else 503,
                             headers={"Cache-Control": "no-store"})


# --- errors ---------------------------------------------------------------------------------


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's text/plain 4xx/5xx as the API's JSON error, keeping headers such as Allow."""
    headers = {k: v for k, v in exc.headers.items()
               if k.lower() not in ("content-type", "content-length")}
    if isinstance(exc, web.HTTPNotFound):
        reason = f"no such endpoint: {request.method} {request.path[:200]}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        reason = f"method {exc.method} is not allowed here; use {allowed}"
    elif exc.text and not exc.text.startswith(f"{exc.status}:"):
        reason = exc.text
    else:
        reason = exc.reason.lower()
    return error_response(exc.status, reason, headers=headers)


#: Errors that mean Postgres cannot be reached right now (restart, network): 503, not 500.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    response: web.StreamResponse
    try:
        response = await handler(request)
    except IntakeError as exc:
        response = error_response(exc.status, exc.reason, field=exc.field)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are not errors
            raise
        response = _http_error(request, exc)
    except HttpProcessingError as exc:  # the body did not parse (e.g. a bad multipart header)
        status = exc.code if 400 <= exc.code < 500 else 400
        detail = " ".join(exc.message.split())[:200] or "the body cannot be read"
        response = error_response(status, f"malformed request: {detail}")
    except DATABASE_DOWN as exc:
        log.warning("request %s (%s %s): Postgres unavailable (%s)", request_id,
                    request.method, request.path, type(exc).__name__)
        response = error_response(
            503, "the message store (Postgres) is unavailable; the request may not have been "
                 "recorded: retry it (with the same idempotency key) in a few seconds",
            request_id=request_id, headers={"Retry-After": "5"})
    except Exception:
        log.exception("request %s (%s %s) failed", request_id, request.method, request.path)
        response = error_response(500, INTERNAL_ERROR_REASON, request_id=request_id)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response


# --- the application ------------------------------------------------------------------------


def create_app(*, intake: Intake, store: MessageStore, apikeys: ApiKeyStore,
               health: HealthCheck, max_body_bytes: int = 1_048_576,
               key_cache_ttl_s: float = 5.0, key_limiter: KeyRateLimiter | None = None,
               extensions: Sequence[Callable[[web.Application], None]] = ()
               ) -> web.Application:
    """The aiohttp application; ``key_cache_ttl_s`` bounds how long a revoked key still works.

    ``extensions`` add the routes of other features (each registers its handlers and puts its
    dependencies under its own ``web.AppKey``); handlers declare scopes with
    :func:`gateway.http.auth.requires_scope`. ``key_limiter``: the per-API-key rate limit
    (429 + Retry-After); none = no limit.
    """
    verifier = KeyVerifier(apikeys, ttl_s=key_cache_ttl_s)
    app = web.Application(client_max_size=max_body_bytes,
                          middlewares=[error_middleware,
                                       auth_middleware(verifier, key_limiter)])
    app[INTAKE] = intake
    app[STORE] = store
    app[HEALTH] = health
    app[KEY_VERIFIER] = verifier
    app.router.add_post("/v1/messages", post_message)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_get("/healthz", healthz)
    for extend in extensions:
        extend(app)
    return app
