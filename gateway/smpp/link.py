"""One SMSC link: its binds, an ordered send queue, and its throttle.

Every part submitted on the link waits in one priority queue (priority, then arrival order).
A single dispatcher takes the head only when (a) a bind that can send has a free window slot
and (b) the throttle grants one segment, so every bind is kept as busy as the carrier allows
and no faster. A part answered ``ESME_RTHROTTLED`` / ``ESME_RMSGQFUL`` goes back into the
queue under its original key — it is resent before anything that arrived after it — while
the throttle cuts the link's rate (multiplicative decrease, short pause) and later recovers
it additively.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import SmppConfig
from gateway.ratelimit import AdaptiveRate, RedisTokenBucket, Throttle
from gateway.smpp.client import (
    THROTTLE_STATUSES,
    Ambiguous,
    Bind,
    BindObserver,
    DeliverHandler,
    EsmeClient,
    NotSent,
    SubmitResult,
    Unsendable,
)

log = logging.getLogger("smsgw.smpp.link")


@dataclass(order=True)
class _Item:
    key: tuple[int, int]
    params: Mapping[str, Any] = field(compare=False)
    fut: asyncio.Future[SubmitResult] = field(compare=False)
    deadline: float = field(default=0.0, compare=False)
    dispatched: bool = field(default=False, compare=False)
    cancelled: bool = field(default=False, compare=False)
    #: asked right before the part is written: False withdraws it (a paused campaign)
    keep: Callable[[], bool] | None = field(default=None, compare=False)


class Link:
    """The binds of one SMSC account entry (``[[smsc]]``) behind one ordered queue.

    ``observer`` (e.g. :class:`gateway.metrics.Metrics`) hears every bind's submit responses
    and reconnects; None costs nothing.
    """

    def __init__(self, config: SmppConfig, *, on_deliver: DeliverHandler,
                 global_bucket: RedisTokenBucket | None = None,
                 observer: BindObserver | None = None) -> None:
        self.config = config
        self.name = config.name
        self.client = EsmeClient(config, on_deliver=on_deliver, name=config.name,
                                 observer=observer)
        self.throttle = Throttle(
            config.tps or None, shared=global_bucket,
            adaptive=AdaptiveRate(max_rate=config.tps or None, pause_s=config.throttle_pause_s))
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._reserved: dict[Bind, int] = {b: 0 for b in self.client.binds}
        self._rr = 0
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.throttled = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.client.start()
        self._task = asyncio.create_task(self._dispatch(), name=f"link-{self.name}")

    async def stop(self, timeout: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._heap:
            if not item.fut.done():
                item.fut.set_exception(NotSent(f"link {self.name} is stopping"))
        self._heap.clear()
        await self.client.stop(timeout)

    @property
    def up(self) -> bool:
        """At least one bind can send."""
        return any(b.can_submit for b in self.client.binds)

    @property
    def queued(self) -> int:
        return sum(1 for i in self._heap if not i.cancelled)

    def status(self) -> dict[str, Any]:
        return {"link": self.name, "up": self.up, "queued": self.queued,
                "in_flight": self.client.in_flight, "throttled": self.throttled,
                "rate": self.throttle.state(), "binds": self.client.status()}

    # -- submitting --------------------------------------------------------------------------
    async def submit(self, params: Mapping[str, Any], *, priority: int = 1,
                     wait_s: float = 5.0, keep: Callable[[], bool] | None = None
                     ) -> SubmitResult:
        """Queue one part; returns its response. NotSent if it was not dispatched within
        ``wait_s`` (e.g. the link is down): it is then withdrawn and never sent. ``keep`` is
        asked when the part's turn comes; False withdraws it the same way (NotSent)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[SubmitResult] = loop.create_future()
        item = _Item((priority, next(self._seq)), params, fut, deadline=loop.time() + wait_s,
                     keep=keep)
        heapq.heappush(self._heap, item)
        self._wake.set()
        timer = loop.call_at(item.deadline, self._expire, item)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, item: _Item) -> None:
        """Withdraw an item still waiting in the queue at its deadline (never one in flight:
        once written, its answer or Ambiguous is awaited)."""
        if not item.dispatched and not item.fut.done():
            item.cancelled = True
            item.fut.set_exception(NotSent(
                f"link {self.name}: not sent in time (link down or throttled)"))

    def _free_bind(self) -> Bind | None:
        binds = [b for b in self.client.binds if b.can_submit
                 and self._reserved[b] < self.config.window]
        if not binds:
            return None
        self._rr = (self._rr + 1) % len(binds)
        return binds[self._rr]

    async def _dispatch(self) -> None:
        while True:
            while self._heap and self._heap[0].cancelled:
                heapq.heappop(self._heap)
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            bind = self._free_bind()
            if bind is None:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), 0.05)
                continue
            await self.throttle.acquire(1)
            while self._heap and self._heap[0].cancelled:
                heapq.heappop(self._heap)
            if not self._heap:
                continue
            item = heapq.heappop(self._heap)
            if item.keep is not None and not item.keep():
                item.cancelled = True
                if not item.fut.done():
                    item.fut.set_exception(NotSent(f"link {self.name}: withdrawn before sending"))
                continue
            item.dispatched = True
            self._reserved[bind] += 1
            task = asyncio.create_task(self._run(item, bind))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _requeue(self, item: _Item) -> None:
        item.dispatched = False
        if asyncio.get_running_loop().time() >= item.deadline:
            self._expire(item)
            return
        heapq.heappush(self._heap, item)  # same key: ahead of everything that came later
        self._wake.set()

    async def _run(self, item: _Item, bind: Bind) -> None:
        try:
            res = await bind.submit(item.params)
        except NotSent:
            self._requeue(item)  # never left this process: safe to send on another bind
            return
        except (Ambiguous, Unsendable) as exc:
            if not item.fut.done():
                item.fut.set_exception(exc)
            return
        finally:
            self._reserved[bind] -= 1
            self._slot_freed.set()
        if res.status in THROTTLE_STATUSES:
            self.throttled += 1
            self.throttle.on_throttled()
            self._requeue(item)
            return
        self.throttle.on_success(1)
        if not item.fut.done():
            item.fut.set_result(res)
