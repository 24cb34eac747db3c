"""Builds the arq worker that ``smsgw serve`` runs inside its own event loop."""

from __future__ import annotations

from typing import Any

from arq import Worker
from arq.connections import ArqRedis

from gateway.config import RedisConfig, SendingConfig
from gateway.queue import deserialize, serialize
from jobs.send import send_messages
from jobs.webhooks import post_service_request


class _Worker(Worker):
    """arq's worker, minus a Redis round trip per poll for each job it is running itself.

    On every poll arq reads the queue's ready job ids -- jobs being run stay in the queue
    until they finish -- and checks each in Redis (WATCH, EXISTS, ZSCORE) before skipping
    the ones in progress. A campaign keeps tens of long send jobs in the queue, so that was
    thousands of round trips a second; the ones this worker runs are skipped here first."""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        running = self.tasks
        await super().start_jobs([j for j in job_ids if j.decode() not in running])


def build_worker(*, redis: ArqRedis, redis_cfg: RedisConfig, sending: SendingConfig,
                 ctx: dict[str, Any], bulk: bool = False, cron_jobs: Any = None) -> Worker:
    """The worker of one lane: care/transactional (default) or bulk (advertising)."""
    return _Worker(
        functions=[send_messages, post_service_request],
        cron_jobs=cron_jobs,
        queue_name=redis_cfg.bulk_queue_name if bulk else redis_cfg.queue_name,
        redis_pool=redis,
        handle_signals=False,
        max_jobs=sending.worker_max_jobs,
        # the care lane polls often: latency matters, and several gateway processes polling
        # often take turns at a campaign's jobs (arq starts every job it finds in one poll)
        poll_delay=0.05 if bulk else 0.005,
        job_timeout=max(300, int(sending.stale_submitting_s * 2)),
        keep_result=60,
        max_tries=50,
        ctx=ctx,
        job_serializer=serialize,
        job_deserializer=deserialize,
        log_results=False,
    )
