"""Batched ledger writes: submit results and receipts reach Postgres in batches.

Two independent writer tasks (results, receipts) so a burst of receipts never delays the
recording of submit results. Each caller awaits its own item: a submit job completes, and a
receipt's ``deliver_sm_resp`` is sent, only once the row is in Postgres. A failed write is
retried with backoff, never dropped. The store serialises the two writers per SMSC id, so a
receipt that overtakes its submit result is kept pending and applied, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from gateway.store.messages import MessageStore, ReceiptOutcome, ReceiptUpdate, SubmitResult

log = logging.getLogger("smsgw.ledger")

T = TypeVar("T")


class LedgerObserver(Protocol):
    """What the ledger reports once a batch is stored (e.g. :class:`gateway.metrics.Metrics`)."""

    def receipt_unmatched(self, link: str | None) -> None:
        """A receipt matched no part and was kept in ``pending_receipts``."""


class BatchWriter(Generic[T]):
    """One task that drains a queue of items into ``flush(batch)`` calls."""

    def __init__(self, name: str, flush: Callable[[Sequence[T]], Awaitable[Any]], *,
                 max_batch: int = 500, linger_s: float = 0.002) -> None:
        self.name = name
        self._flush_fn = flush
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[None]]] = asyncio.Queue()
        self._max_batch = max_batch
        self._linger = linger_s
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ledger-{self.name}")

    async def stop(self) -> None:
        while not self._queue.empty():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def put(self, item: T) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        await fut

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._linger and self._queue.qsize() < self._max_batch:
                await asyncio.sleep(self._linger)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = time.perf_counter()
            await self._write([item for item, _ in batch])
            log.debug("ledger %s: %d item(s) in %.1f ms", self.name, len(batch),
                      (time.perf_counter() - started) * 1000)
            self.batches += 1
            self.items += len(batch)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def _write(self, items: list[T]) -> None:
        delay = 0.2
        while True:
            try:
                await self._flush_fn(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres down: keep the batch and retry, never drop it
                log.error("ledger %s: writing %d item(s) failed (%s); retrying in %.1fs",
                          self.name, len(items), exc, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)


class LedgerWriter:
    """Submit results and receipts, each through its own :class:`BatchWriter`.

    ``observer`` hears of every stored receipt that matched no part; None costs nothing.
    """

    def __init__(self, store: MessageStore, *, max_batch: int = 500,
                 observer: LedgerObserver | None = None) -> None:
        self._store = store
        self.observer = observer
        self._results = BatchWriter[SubmitResult]("results", store.record_submit_results,
                                                  max_batch=max_batch)
        self._receipts = BatchWriter[ReceiptUpdate]("receipts", self._apply_receipts,
                                                    max_batch=max_batch)

    async def _apply_receipts(self, updates: Sequence[ReceiptUpdate]) -> list[ReceiptOutcome]:
        outcomes = await self._store.apply_receipts(updates)
        observer = self.observer
        if observer is not None:  # reported once the batch is committed, never on a retry
            for update, outcome in zip(updates, outcomes, strict=True):
                if outcome.message_id is None:
                    observer.receipt_unmatched(update.link)
        return outcomes

    def start(self) -> None:
        self._results.start()
        self._receipts.start()

    async def stop(self) -> None:
        await self._results.stop()
        await self._receipts.stop()

    async def record(self, result: SubmitResult) -> None:
        await self._results.put(result)

    async def receipt(self, update: ReceiptUpdate) -> None:
        await self._receipts.put(update)
