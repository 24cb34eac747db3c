"""The arq queue seen from the producer side (HTTP intake, sweeper).

Jobs are serialised with msgpack, never pickle: a pickled job in Redis would let anyone who
can write to Redis run code in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import msgpack
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from gateway.config import RedisConfig

log = logging.getLogger("smsgw.queue")

SEND_FUNCTION = "send_messages"


def serialize(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def deserialize(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def redis_settings(cfg: RedisConfig) -> RedisSettings:
    settings = RedisSettings.from_dsn(cfg.dsn)
    settings.conn_retries = 1
    settings.conn_timeout = 2
    return settings


async def connect(cfg: RedisConfig) -> ArqRedis:
    pool: ArqRedis = await create_pool(
        redis_settings(cfg), job_serializer=serialize, job_deserializer=deserialize,
        default_queue_name=cfg.queue_name)
    return pool


class JobQueue:
    """Enqueues send jobs; the job id is derived from the message ids so a re-enqueue of the
    same batch while its job is pending is a no-op in arq."""

    def __init__(self, redis: ArqRedis, cfg: RedisConfig) -> None:
        self.redis = redis
        self._queue = cfg.queue_name
        self._bulk_queue = cfg.bulk_queue_name

    async def enqueue_send(self, ids: Sequence[UUID], *, job_id: str | None = None,
                           defer_s: float | None = None, bulk: bool = False) -> bool:
        """Enqueue one send job on the care lane, or the bulk lane for advertising."""
        if not ids:
            return False
        jid = job_id or f"send:{ids[0]}" + (f"+{len(ids) - 1}" if len(ids) > 1 else "")
        job = await self.redis.enqueue_job(
            SEND_FUNCTION, [str(i) for i in ids], _job_id=jid,
            _queue_name=self._bulk_queue if bulk else self._queue, _defer_by=defer_s)
        return job is not None

    async def depth(self, *, bulk: bool = False) -> int:
        return int(await self.redis.zcard(self._bulk_queue if bulk else self._queue))

    async def ping(self) -> None:
        await self.redis.ping()


class BatchingEnqueuer:
    """Collects message ids from intake and enqueues them as one send job per batch.

    arq costs a few Redis round trips per job; one job per HTTP request would make Redis the
    ceiling. Ids wait at most ``linger_s`` (or until ``max_batch``). The rows are already in
    Postgres as ``queued``, so a crash before the flush loses nothing: the sweeper finds them.
    """

    def __init__(self, queue: JobQueue, *, max_batch: int = 200, linger_s: float = 0.005) -> None:
        self._queue = queue
        self._max = max_batch
        self._linger = linger_s
        self._pending: dict[bool, list[UUID]] = {False: [], True: []}  # bulk? → ids
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.jobs_enqueued = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="enqueue-batcher")

    def add(self, message_id: UUID, *, bulk: bool = False) -> None:
        self._pending[bulk].append(message_id)
        self._wakeup.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # care ids go out at once (latency); bulk ids wait a little to fill bigger jobs
            await self._flush_lane(False)
            if len(self._pending[True]) < self._max:
                await asyncio.sleep(self._linger)
            await self._flush()

    async def flush(self) -> None:
        """Enqueue everything pending now (tests, shutdown)."""
        await self._flush()

    async def _flush(self) -> None:
        for bulk in (False, True):  # the care lane first
            await self._flush_lane(bulk)

    async def _flush_lane(self, bulk: bool) -> None:
        while self._pending[bulk]:
            batch = self._pending[bulk][:self._max]
            self._pending[bulk] = self._pending[bulk][self._max:]
            try:
                await self._queue.enqueue_send(batch, bulk=bulk)
                self.jobs_enqueued += 1
            except Exception as exc:  # Redis down: rows stay queued; the sweeper enqueues them
                log.warning("could not enqueue %d message(s) (%s); the sweeper will retry",
                            len(batch), exc)
