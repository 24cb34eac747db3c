"""arq jobs that hand confirmed self-service requests to the back office (gateway/webhooks.py).

``post_service_request(ctx, request_id)`` runs on the care queue, one job per request (job id
``svcreq:<id>``, so enqueueing a request that already has a job is a no-op). It needs in
``ctx``: ``service_requests`` (a :class:`ServiceRequestStore`), ``webhook`` (a
:class:`WebhookConfig`) and ``http`` (an ``aiohttp.ClientSession``). A failed post is counted
on the row and retried by ``raise Retry(defer=...)`` with exponential back-off until
``webhook.max_attempts``; then the request is marked 'failed' with the last error.

``sweep_service_requests`` (cron, every minute) expires requests whose confirmation window
passed and re-enqueues confirmed requests that have no job (the enqueue after the reply
failed, or the worker died mid-post); it also needs ``enqueue_service_request`` (from
:func:`make_enqueuer`) in ``ctx``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from arq import Retry, cron
from arq.connections import ArqRedis
from arq.cron import CronJob

from gateway.config import WebhookConfig
from gateway.store.service_requests import RequestStatus, ServiceRequestStore
from gateway.webhooks import WebhookError, post_request

log = logging.getLogger("smsgw.jobs.webhooks")

POST_FUNCTION = "post_service_request"
JOB_ID_PREFIX = "svcreq:"
#: A confirmed request still unposted after this long is re-enqueued by the sweeper.
UNPOSTED_GRACE_S = 120.0
SWEEP_BATCH = 500


def job_id(request_id: int) -> str:
    return f"{JOB_ID_PREFIX}{request_id}"


def make_enqueuer(redis: ArqRedis, queue_name: str) -> Callable[[int], Awaitable[None]]:
    """``await enqueue(request_id)``: one ``post_service_request`` job on ``queue_name``."""

    async def enqueue(request_id: int) -> None:
        await redis.enqueue_job(POST_FUNCTION, request_id, _job_id=job_id(request_id),
                                _queue_name=queue_name)

    return enqueue


def _store(ctx: dict[str, Any]) -> ServiceRequestStore:
    store = ctx["service_requests"]
    assert isinstance(store, ServiceRequestStore)
    return store


def _webhook(ctx: dict[str, Any]) -> WebhookConfig:
    cfg = ctx["webhook"]
    assert isinstance(cfg, WebhookConfig)
    return cfg


async def post_service_request(ctx: dict[str, Any], request_id: int) -> str:
    """Post one confirmed request; returns what happened ("posted", "failed", "skipped: …")."""
    store, cfg = _store(ctx), _webhook(ctx)
    request = await store.get(request_id)
    if request is None:
        log.warning("service request id %d does not exist; nothing to post", request_id)
        return "skipped: unknown request"
    if request.status is not RequestStatus.CONFIRMED:
        return f"skipped: {request.status.value}"
    if not cfg.configured:
        log.info("no back-office webhook configured: service request %s stays confirmed",
                 request.reference)
        return "skipped: no webhook configured"
    try:
        await post_request(ctx["http"], cfg, request)
    except WebhookError as exc:
        return await _failed_attempt(store, cfg, request_id, request.reference, str(exc))
    await store.mark_posted(request_id, at=datetime.now(UTC))
    log.info("service request %s (%s) posted to the back office (attempt %d)",
             request.reference, request.kind.value, request.attempts + 1)
    return "posted"


async def _failed_attempt(store: ServiceRequestStore, cfg: WebhookConfig, request_id: int,
                          reference: str, error: str) -> str:
    after = await store.record_attempt(request_id, error, max_attempts=cfg.max_attempts)
    if after is None:  # moved on meanwhile (posted or failed by another run)
        return "skipped: no longer confirmed"
    if after.status is RequestStatus.FAILED:
        log.error("service request %s failed after %d attempt(s): %s", reference,
                  after.attempts, error)
        return "failed"
    delay = cfg.retry_delay_s(after.attempts)
    log.warning("posting service request %s failed (attempt %d of %d: %s); retrying in %gs",
                reference, after.attempts, cfg.max_attempts, error, delay)
    raise Retry(defer=delay)


async def sweep_service_requests(ctx: dict[str, Any]) -> int:
    """Expire overdue confirmations; re-enqueue confirmed requests left unposted. Returns
    how many were re-enqueued."""
    store, cfg = _store(ctx), _webhook(ctx)
    now = datetime.now(UTC)
    await store.expire_overdue(now)
    if not cfg.configured:
        return 0
    enqueue: Callable[[int], Awaitable[None]] = ctx["enqueue_service_request"]
    ids = await store.unposted(confirmed_before=now - timedelta(seconds=UNPOSTED_GRACE_S),
                               limit=SWEEP_BATCH)
    for request_id in ids:
        await enqueue(request_id)  # a request whose job is pending or retrying: a no-op
    if ids:
        log.info("re-enqueued %d unposted service request(s)", len(ids))
    return len(ids)


def cron_jobs() -> list[CronJob]:
    """The sweeper, every minute (unique per tick across workers) and at start-up."""
    return [cron(sweep_service_requests, name="service_requests:sweep", run_at_startup=True,
                 unique=True, timeout=300)]
