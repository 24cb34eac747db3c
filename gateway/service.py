"""``smsgw serve`` in one asyncio process: HTTP API, SMPP binds, arq worker, sweeper.

:class:`Gateway` has an aiosmtpd-style ``start()``/``stop()`` so tests and the demo embed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from aiohttp import web
from arq import Worker
from arq.connections import ArqRedis

from gateway import PROJECT_ROOT
from gateway.actions import Action, selfservice
from gateway.actions.bill import BillLookupAction
from gateway.actions.consent import OptInAdsAction, RefuseAdsAction
from gateway.adguard import AdvertisingGuard
from gateway.campaigns import CampaignGate, CampaignService
from gateway.compliance import Clock, utc_now
from gateway.config import Config, SmppConfig
from gateway.events import EventService
from gateway.greetings import GreetingRunner, calendar_from_names, parse_send_at
from gateway.http import campaigns as campaigns_http
from gateway.http import events as events_http
from gateway.http import keywords as keywords_http
from gateway.http import metrics as metrics_http
from gateway.http import openapi as openapi_http
from gateway.http import subscribers as subscribers_http
from gateway.http import surveys as surveys_http
from gateway.http import templates as templates_http
from gateway.http import ui as ui_http
from gateway.http.app import create_app
from gateway.http.keylimit import KeyRateLimiter
from gateway.intake import Intake
from gateway.keywords import KeywordRouter
from gateway.ledger import LedgerWriter
from gateway.metrics import Metrics
from gateway.mo import MoReceiver
from gateway.queue import BatchingEnqueuer, JobQueue, connect
from gateway.ratelimit import RedisTokenBucket
from gateway.routing import Router
from gateway.sender import Sender
from gateway.smpp.client import DeliverHandler, EsmeClient
from gateway.smpp.codec import Pdu
from gateway.smpp.link import Link
from gateway.store.advertising import AdvertisingStore
from gateway.store.apikeys import ApiKeyStore
from gateway.store.campaigns import CampaignStore
from gateway.store.consent import ConsentStore
from gateway.store.events import EventStore
from gateway.store.inbound import InboundStore
from gateway.store.messages import MessageStore
from gateway.store.mo_log import MoLogStore
from gateway.store.retention import RetentionStore, retention_loop
from gateway.store.service_requests import ServiceRequestStore
from gateway.store.subscribers import SubscriberStore
from gateway.store.surveys import SurveyStore
from gateway.surveys import SurveyService
from gateway.templating import TemplateRenderer, template_defaults
from jobs.greetings import cron_jobs as greeting_cron_jobs
from jobs.webhooks import cron_jobs as service_request_cron_jobs
from jobs.webhooks import make_enqueuer
from jobs.worker import build_worker

log = logging.getLogger("smsgw.service")


class DependencyDown(Exception):
    """Postgres or Redis cannot be reached; the message says which URL and what to do."""


def _safe_url(dsn: str) -> str:
    """Hide a password in a DSN before printing it."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


def postgres_down(dsn: str, exc: BaseException) -> DependencyDown:
    return DependencyDown(f"Postgres unreachable at {_safe_url(dsn)} ({exc}); start it or set "
                          "SMSGW_DATABASE_DSN / [database] dsn")


PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def open_postgres(cfg: Config) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(cfg.database.dsn, min_size=cfg.database.min_connections,
                                         max_size=cfg.database.max_connections, timeout=5)
    except PG_ERRORS as exc:
        raise postgres_down(cfg.database.dsn, exc) from exc
    assert pool is not None
    return pool


async def open_redis(cfg: Config) -> ArqRedis:
    try:
        redis = await connect(cfg.redis)
        await redis.ping()
    except Exception as exc:
        raise DependencyDown(
            f"Redis unreachable at {_safe_url(cfg.redis.dsn)} ({exc}); start it or set "
            "SMSGW_REDIS_DSN / [redis] dsn") from exc
    return redis


class Gateway:
    """Every part of the running gateway, wired once from :class:`Config`."""

    def __init__(self, config: Config, *, http: bool = True, clock: Clock = utc_now) -> None:
        self.config = config
        self.metrics: Metrics | None = None
        self.clock = clock  # what the advertising rules and campaigns take as "now"
        self.campaigns: CampaignService | None = None
        self.guard: AdvertisingGuard | None = None
        self._campaign_stop = asyncio.Event()
        self._campaign_task: asyncio.Task[None] | None = None
        self._retention_stop = asyncio.Event()
        self._retention_task: asyncio.Task[None] | None = None
        self._http_enabled = http
        self.pool: asyncpg.Pool | None = None
        self.redis: ArqRedis | None = None
        self.store: MessageStore | None = None
        self.links: dict[str, Link] = {}
        self.sender: Sender | None = None
        self.mo: MoReceiver | None = None
        self.ledger: LedgerWriter | None = None
        self.intake: Intake | None = None
        self.queue: JobQueue | None = None
        self.enqueuer: BatchingEnqueuer | None = None
        self._workers: dict[bool, Worker] = {}  # bulk lane? → its current arq worker
        self._worker_tasks: list[asyncio.Task[None]] = []
        self.events: EventService | None = None
        self._fast_tasks: set[asyncio.Task[int]] = set()
        self.surveys: SurveyService | None = None
        self.keywords: KeywordRouter | None = None
        self.service_requests: ServiceRequestStore | None = None
        self.webhook_http: aiohttp.ClientSession | None = None
        self.greetings: GreetingRunner | None = None
        self._sweeper_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None

    async def start(self) -> None:
        cfg = self.config
        self.pool = await open_postgres(cfg)
        self.redis = await open_redis(cfg)
        self.store = MessageStore(self.pool)
        self.queue = JobQueue(self.redis, cfg.redis)
        self.metrics = metrics = Metrics()
        self.ledger = LedgerWriter(self.store, observer=metrics)
        self.ledger.start()
        self.links = {link.name: Link(link, on_deliver=self._deliver_handler(link),
                                      global_bucket=self._global_bucket(link),
                                      observer=metrics)
                      for link in cfg.links}
        metrics.watch_messages(self.store)
        metrics.watch_links(self.links)
        metrics.watch_arq(self.queue)
        self.mo = MoReceiver(InboundStore(self.pool))
        consent = ConsentStore(self.pool)
        self.guard = AdvertisingGuard(AdvertisingStore(self.pool), consent, cfg.advertising,
                                      clock=self.clock)
        campaign_store = CampaignStore(self.pool)
        gate = CampaignGate(loader=campaign_store.running_ids)
        gate.replace(await campaign_store.running_ids())
        self.sender = Sender(store=self.store, links=self.links,
                             router=Router(cfg.route, list(self.links)), ledger=self.ledger,
                             sending=cfg.sending, on_mo=self.mo.on_mo,
                             requeue=self._requeue, guard=self.guard, gate=gate)
        for link in self.links.values():
            link.start()
        renderer = TemplateRenderer(PROJECT_ROOT / "templates_sms",
                                    defaults=template_defaults(cfg.sending))
        self.enqueuer = BatchingEnqueuer(self.queue)
        self.enqueuer.start()
        self.intake = Intake(store=self.store, queue=self.enqueuer, renderer=renderer,
                             sending=cfg.sending, fast_lane=self._send_now)
        self.events = EventService(EventStore(self.pool), self.intake, cfg.events,
                                   region=cfg.sending.region)
        self.service_requests = ServiceRequestStore(self.pool)
        self.webhook_http = aiohttp.ClientSession()
        self.surveys = SurveyService(SurveyStore(self.pool), self.intake,
                                     SubscriberStore(self.pool), region=cfg.sending.region,
                                     inbound=InboundStore(self.pool))
        self.campaigns = CampaignService(
            campaign_store, renderer, sending=cfg.sending, advertising=cfg.advertising,
            campaigns=cfg.campaigns, tps=self._links_tps, clock=self.clock, gate=gate)
        actions: dict[str, Action] = {
            "refuse_ads": RefuseAdsAction(consent, self.store),
            "optin_ads": OptInAdsAction(consent),
            "bill_lookup": BillLookupAction(EventStore(self.pool),
                                            endpoint=cfg.billing.endpoint or None,
                                            timeout_s=cfg.billing.timeout_s),
            **selfservice.build_actions(self.service_requests,
                                        make_enqueuer(self.redis, cfg.redis.queue_name)),
        }
        self.keywords = KeywordRouter(
            cfg.keywords.path, actions=actions, intake=self.intake,
            log_store=MoLogStore(self.pool), inbound=InboundStore(self.pool),
            surveys=self.surveys.on_inbound, limits=cfg.keywords, region=cfg.sending.region,
            observer=metrics)
        self.mo.on_message = self.keywords.on_message
        g = cfg.greetings
        self.greetings = GreetingRunner(
            self.pool, self.intake, tz=g.timezone, send_at=parse_send_at(g.send_at),
            batch=g.batch_size, concurrency=g.concurrency, retry_after_s=g.retry_after_s,
            calendar=calendar_from_names(g.care_days, tiered=g.vip_care_days, tiers=g.vip_tiers),
        ) if g.enabled else None
        self._worker_tasks = [
            asyncio.create_task(self._run_worker(bulk=False), name="arq-worker-care"),
            asyncio.create_task(self._run_worker(bulk=True), name="arq-worker-bulk")]
        self._sweeper_task = asyncio.create_task(self._sweep_forever(), name="sweeper")
        self._retention_stop.clear()
        self._retention_task = asyncio.create_task(retention_loop(
            RetentionStore(self.pool), days=cfg.retention.body_days,
            interval_s=cfg.retention.interval_s, stop=self._retention_stop), name="retention")
        self._campaign_stop.clear()
        self._campaign_task = asyncio.create_task(
            self.campaigns.run(self._enqueue_campaign, self._campaign_stop),
            name="campaign-runner")
        if self._http_enabled:
            app = create_app(
                intake=self.intake, store=self.store, apikeys=ApiKeyStore(self.pool),
                health=self.health, max_body_bytes=cfg.http.max_body_bytes,
                key_limiter=KeyRateLimiter(self.redis, default_rate=cfg.http.key_rate_per_s,
                                           default_burst=cfg.http.key_burst),
                extensions=[
                    partial(templates_http.setup, renderer=renderer),
                    partial(subscribers_http.setup, store=SubscriberStore(self.pool),
                            region=cfg.sending.region),
                    partial(events_http.setup, service=self.events),
                    partial(surveys_http.setup, service=self.surveys),
                    partial(keywords_http.setup, router=self.keywords),
                    partial(campaigns_http.setup, service=self.campaigns, consent=consent,
                            default_sender=cfg.sending.default_sender,
                            timezone=cfg.advertising.timezone,
                            max_upload_mb=cfg.campaigns.max_upload_mb),
                    ui_http.setup,
                    partial(metrics_http.setup, metrics=metrics,
                            public=cfg.http.metrics_public),
                    openapi_http.setup,
                ])
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, cfg.http.host, cfg.http.port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            self.http_port = sockets[0].getsockname()[1] if sockets else cfg.http.port
            log.info("HTTP API on http://%s:%s", cfg.http.host, self.http_port)

    async def _run_worker(self, *, bulk: bool) -> None:
        """Run one lane's arq worker; if Redis fails under it, log, wait and start a new one."""
        assert self.redis is not None and self.sender is not None
        delay = 0.5
        while True:
            care_cron = [] if bulk else [
                *(greeting_cron_jobs() if self.greetings is not None else []),
                *service_request_cron_jobs()]
            worker = build_worker(redis=self.redis, redis_cfg=self.config.redis,
                                  sending=self.config.sending, bulk=bulk,
                                  ctx={"sender": self.sender, "greetings": self.greetings,
                                       "lane": "bulk" if bulk else "care",
                                       "service_requests": self.service_requests,
                                       "webhook": self.config.webhook, "http": self.webhook_http,
                                       "enqueue_service_request": make_enqueuer(
                                           self.redis, self.config.redis.queue_name)},
                                  cron_jobs=care_cron or None)
            self._workers[bulk] = worker
            started = time.monotonic()
            try:
                await worker.async_run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarted: keep retrying, never give up
                if time.monotonic() - started > 30:
                    delay = 0.5
                log.error("arq worker stopped (%s: %s); restarting in %.1fs",
                          type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    def _send_now(self, message_id: UUID) -> None:
        """Fast lane for care/transactional messages: claim and send in this process at once
        (no queue hop) when a link is up. The arq job enqueued beside it stays the durable
        path: if this process dies first, the job (or the sweeper) sends the message."""
        if self.sender is None or not any(link.up for link in self.links.values()):
            return
        task = asyncio.create_task(self.sender.send_ids([message_id]))
        self._fast_tasks.add(task)
        task.add_done_callback(self._fast_done)

    def _fast_done(self, task: asyncio.Task[int]) -> None:
        self._fast_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # e.g. Postgres down: the arq job enqueued beside it (or the sweeper) sends it
            log.warning("fast lane: %s; the queued job will send the message",
                        type(task.exception()).__name__)

    def _deliver_handler(self, link: SmppConfig) -> DeliverHandler:
        async def handle(pdu: Pdu) -> int:
            assert self.sender is not None
            return await self.sender.on_deliver(pdu, link=link)

        return handle

    async def _requeue(self, ids: Sequence[UUID], delay: float, attempt: int,
                       bulk: bool) -> None:
        assert self.queue is not None
        await self.queue.enqueue_send(ids, job_id=f"retry:{ids[0]}:{attempt}", defer_s=delay,
                                      bulk=bulk)

    async def _enqueue_campaign(self, ids: Sequence[UUID]) -> None:
        assert self.queue is not None
        await self.queue.enqueue_send(ids, job_id=f"campaign:{ids[0]}:{uuid.uuid4().hex[:8]}",
                                      bulk=True)

    def _links_tps(self) -> float:
        """Segments per second the links can take: each link's TPS (100 when none is set),
        capped per SMSC account by its shared account_tps."""
        per_account: dict[str, float] = {}
        total = 0.0
        for link in self.links.values():
            tps = float(link.config.tps or 100)
            if link.config.account_tps:
                account = link.config.account or link.name
                per_account[account] = per_account.get(account, 0.0) + tps
            else:
                total += tps
        caps = {link.config.account or link.name: float(link.config.account_tps)
                for link in self.links.values() if link.config.account_tps}
        return total + sum(min(tps, caps[account]) for account, tps in per_account.items())

    def _global_bucket(self, link: SmppConfig) -> RedisTokenBucket | None:
        if not link.account_tps:
            return None
        assert self.redis is not None
        return RedisTokenBucket(self.redis, link.account or link.name, link.account_tps,
                                prefetch=max(1, int(link.account_tps // 100)))

    @property
    def client(self) -> EsmeClient | None:
        """The first link's binds (single-link setups, the demo and tests)."""
        return next(iter(self.links.values())).client if self.links else None

    async def wait_bound(self, timeout: float) -> bool:
        results = await asyncio.gather(*(link.client.wait_bound(timeout)
                                         for link in self.links.values()))
        return all(results)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop intake, let the window drain, unbind, close everything."""
        deadline = time.monotonic() + timeout
        if self._runner is not None:
            await self._runner.cleanup()  # stop intake first
        if self.enqueuer is not None:
            await self.enqueuer.stop()
        await self._stop_background()
        for task in self._worker_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        jobs: list[asyncio.Task[Any]] = [
            t for w in self._workers.values() for t in w.tasks.values() if not t.done()]
        jobs.extend(t for t in self._fast_tasks if not t.done())
        if jobs:
            await asyncio.wait(jobs, timeout=max(0.5, deadline - time.monotonic() - 2))
        await asyncio.gather(*(link.stop(timeout=max(1.0, deadline - time.monotonic() - 1))
                               for link in self.links.values()))
        if self.mo is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.mo.wait_hooks(), 2)
        if self.ledger is not None:
            await self.ledger.stop()
        if self.webhook_http is not None:
            await self.webhook_http.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose(close_connection_pool=True)
        if self.pool is not None:
            await self.pool.close()

    async def _stop_background(self) -> None:
        """The retention loop, the campaign runner and the sweeper."""
        self._retention_stop.set()
        self._campaign_stop.set()
        for task in (self._retention_task, self._campaign_task, self._sweeper_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 2)

    async def health(self) -> dict[str, Any]:
        pg = rd = False
        with contextlib.suppress(Exception):
            assert self.store is not None
            await asyncio.wait_for(self.store.ping(), 2)
            pg = True
        with contextlib.suppress(Exception):
            assert self.queue is not None
            await asyncio.wait_for(self.queue.ping(), 2)
            rd = True
        links = [link.status() for link in self.links.values()]
        binds = [b for link in self.links.values() for b in link.client.status()]
        return {"smpp": {"bound": bool(links) and all(link["up"] for link in links),
                         "links": links, "binds": binds},
                "postgres": pg, "redis": rd}

    async def sweep_once(self) -> int:
        """Re-enqueue stale queued rows; settle stale submitting rows by the ambiguous policy."""
        assert self.store is not None and self.queue is not None
        s = self.config.sending
        queued, submitting = await self.store.stale(
            queued_before_s=s.stale_queued_s, submitting_before_s=s.stale_submitting_s)
        if submitting:
            reason = ("ambiguous: submit may have reached the SMSC but no response was recorded "
                      f"(ambiguous_policy={s.ambiguous_policy})")
            if s.ambiguous_policy == "resend":
                await self.store.release(submitting, reason)
                queued = list(queued) + list(submitting)
            else:
                await self.store.fail_submitting(submitting, reason)
        assert self.guard is not None
        due = await AdvertisingStore(self.pool).release_due(self.clock()) \
            if self.pool is not None else []
        queued = list(queued) + [mid for mid, _ in due]
        care, bulk = await self.store.split_by_lane(queued)
        for lane, ids in ((False, care), (True, bulk)):
            for i in range(0, len(ids), s.batch_size):
                batch = ids[i:i + s.batch_size]
                await self.queue.enqueue_send(
                    batch, job_id=f"sweep:{batch[0]}:{int(time.time())}", bulk=lane)
        if queued:
            log.info("sweeper re-enqueued %d stale message(s)", len(queued))
        if self.mo is not None:
            try:
                await self.mo.sweep(s.mo_reassembly_timeout_s)
            except Exception as exc:
                log.warning("sweeper: incomplete MO flush failed: %s", exc)
        if self.events is not None:
            try:
                await self.events.resume_unattached(older_than_s=max(60.0, s.stale_queued_s))
            except Exception as exc:
                log.warning("sweeper: resuming care events failed: %s", exc)
        expired = await self.store.expire_unreceipted(older_than_s=s.receipt_timeout_s)
        if expired:
            log.info("sweeper: %d message(s) expired without a delivery receipt", len(expired))
        return len(queued)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sending.sweep_interval_s)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sweeper pass failed: %s", exc)
