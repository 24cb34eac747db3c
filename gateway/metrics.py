"""Prometheus metrics of one gateway: events counted as they happen, state read at scrape time.

Each :class:`Metrics` owns its :class:`~prometheus_client.CollectorRegistry` (never the global
default one), so several gateways can run in one process.

* **Events** are counted where they happen. :class:`Metrics` is the observer the SMPP binds
  (:class:`~gateway.smpp.client.BindObserver`), the ledger
  (:class:`~gateway.ledger.LedgerObserver`) and the keyword router
  (:class:`~gateway.keywords.MoObserver`) take as an optional argument.
* **State** is read when ``/metrics`` is scraped, from sources registered with
  :meth:`Metrics.add_source` (the ``watch_*`` methods register the gateway's). prometheus_client
  collectors are synchronous, so :meth:`Metrics.render` first awaits every source, then
  renders. A source may be cached for ``cache_s`` (the Postgres counts are: a scrape storm
  costs one query per ``cache_s``), and concurrent scrapes share one read. A source that fails
  or takes longer than ``timeout_s`` is left out of that scrape (and of the next ones until
  ``cache_s`` has passed), counted in ``smsgw_metrics_source_errors_total`` and logged; the
  rest of the scrape still works.

Names (``link`` is the ``[[smsc]]`` name):

=========================================  =====================================================
``smsgw_smpp_submit_latency_seconds``      histogram {link}: submit_sm written → its resp
``smsgw_smpp_submit_results_total``        counter {link, status}: responses by status name
``smsgw_smpp_throttled_total``             counter {link, status}: ESME_RTHROTTLED / RMSGQFUL
``smsgw_smpp_reconnects_total``            counter {link}: a bind lost its connection, retries
``smsgw_receipts_unmatched_total``         counter {link}: receipts kept in pending_receipts
``smsgw_mo_messages_total``                counter {keyword}: inbound SMS handled (``none``:
                                           no keyword matched; ``SURVEY``: a survey answer)
``smsgw_messages``                         gauge {class, status}: rows in ``messages``
``smsgw_smpp_window_in_use``               gauge {link, bind}: submit_sm awaiting their resp
``smsgw_link_rate_tps``                    gauge {link}: the adaptive rate (+Inf: no limit)
``smsgw_link_sent_tps``                    gauge {link}: segments let through, last second
``smsgw_link_queue_depth``                 gauge {link}: parts waiting in the link's queue
``smsgw_arq_queue_depth``                  gauge {lane}: jobs in the lane's arq queue (ZCARD,
                                           deferred retries included)
=========================================  =====================================================
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.queue import JobQueue
from gateway.smpp.client import THROTTLE_STATUSES
from gateway.smpp.codec import status_name
from gateway.smpp.link import Link
from gateway.store.messages import MessageStore

log = logging.getLogger("smsgw.metrics")

#: Label values and value of one sample of a scrape-time gauge.
Sample = tuple[Sequence[str], float]
#: Reads the samples of one gauge family when ``/metrics`` is scraped.
Source = Callable[[], Awaitable[Iterable[Sample]]]

#: submit_sm → submit_sm_resp buckets: a healthy SMSC answers in milliseconds; the tail up to
#: the response timeout (30 s by default) shows a struggling one.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: How long the Postgres message counts are reused between scrapes.
MESSAGE_COUNTS_CACHE_S = 5.0
#: Label of an inbound message no keyword matched.
NO_KEYWORD = "none"
_OK = status_name(0)


@dataclass(eq=False)
class _Gauge:
    """One scrape-time gauge family and its last read."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    read: Source
    cache_s: float
    samples: list[Sample] | None = None  # None: the last read failed (or none yet)
    read_at: float = -math.inf
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _GaugeCollector:
    """Puts the last read of every scrape-time gauge into the registry's output."""

    def __init__(self, gauges: Sequence[_Gauge]) -> None:
        self._gauges = gauges

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(g.name, g.documentation, labels=g.labels)
                for g in self._gauges]

    def collect(self) -> Iterable[Metric]:
        for gauge in self._gauges:
            family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labels)
            for values, value in gauge.samples or ():
                family.add_metric(values, value)
            yield family


class Metrics:
    """Every metric of one gateway, in its own registry (see the module docstring)."""

    def __init__(self, *, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._timeout_s = timeout_s
        self._clock = clock
        self._gauges: list[_Gauge] = []
        r = self.registry
        self.submit_latency = Histogram(
            "smsgw_smpp_submit_latency_seconds",
            "Seconds from a submit_sm written to its submit_sm_resp.", ["link"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.submit_results = Counter(
            "smsgw_smpp_submit_results", "submit_sm_resp received, by SMPP status name.",
            ["link", "status"], registry=r)
        self.throttled = Counter(
            "smsgw_smpp_throttled", "submit_sm answered ESME_RTHROTTLED or ESME_RMSGQFUL.",
            ["link", "status"], registry=r)
        self.reconnects = Counter(
            "smsgw_smpp_reconnects", "Times a bind lost or could not open its connection.",
            ["link"], registry=r)
        self.receipts_unmatched = Counter(
            "smsgw_receipts_unmatched", "Receipts that matched no part, kept in "
            "pending_receipts (applied when the submit_sm_resp is recorded).", ["link"],
            registry=r)
        self.mo_messages = Counter(
            "smsgw_mo_messages", f"Inbound SMS handled, by keyword ({NO_KEYWORD}: no "
            "keyword matched).", ["keyword"], registry=r)
        self.source_errors = Counter(
            "smsgw_metrics_source_errors", "Scrape-time reads that failed or timed out.",
            ["source"], registry=r)
        r.register(_GaugeCollector(self._gauges))

    # -- events (the observer protocols) ---------------------------------------------------
    def submit_answered(self, link: str, status: int, latency_s: float) -> None:
        name = status_name(status)
        self.submit_latency.labels(link).observe(latency_s)
        self.submit_results.labels(link, name).inc()
        if status in THROTTLE_STATUSES:
            self.throttled.labels(link, name).inc()

    def reconnecting(self, link: str) -> None:
        self.reconnects.labels(link).inc()

    def receipt_unmatched(self, link: str | None) -> None:
        self.receipts_unmatched.labels(link or "").inc()

    def mo_handled(self, keyword: str | None) -> None:
        self.mo_messages.labels(keyword or NO_KEYWORD).inc()

    # -- scrape-time state -----------------------------------------------------------------
    def add_source(self, name: str, documentation: str, labels: Sequence[str], read: Source,
                   *, cache_s: float = 0.0) -> None:
        """Register a gauge family whose samples ``read()`` gives at scrape time."""
        if any(g.name == name for g in self._gauges):
            raise ValueError(f"metric {name} is already registered")
        self._gauges.append(_Gauge(name, documentation, tuple(labels), read, cache_s))

    def watch_messages(self, store: MessageStore, *,
                       cache_s: float = MESSAGE_COUNTS_CACHE_S) -> None:
        """``smsgw_messages{class, status}`` from Postgres, cached ``cache_s`` seconds."""
        async def read() -> list[Sample]:
            counts = await store.counts_by_class_status()
            return [((c.value, s.value), float(n)) for (c, s), n in counts.items()]

        self.add_source("smsgw_messages", "Messages in the ledger by class and status.",
                        ("class", "status"), read, cache_s=cache_s)

    def watch_links(self, links: Mapping[str, Link]) -> None:
        """Window, rate and queue gauges of every link; the links' event series start at 0."""
        for name in links:
            self.submit_latency.labels(name)
            self.submit_results.labels(name, _OK)
            self.reconnects.labels(name)
            for status in sorted(THROTTLE_STATUSES):
                self.throttled.labels(name, status_name(status))

        async def window() -> list[Sample]:
            return [((link.name, bind.name), float(bind.in_flight))
                    for link in links.values() for bind in link.client.binds]

        async def rate() -> list[Sample]:
            now = time.monotonic()
            out: list[Sample] = []
            for link in links.values():
                current = link.throttle.adaptive.current(now)
                out.append(((link.name,), math.inf if current is None else current))
            return out

        async def sent() -> list[Sample]:
            now = time.monotonic()
            return [((link.name,), link.throttle.sent.rate(now)) for link in links.values()]

        async def queued() -> list[Sample]:
            return [((link.name,), float(link.queued)) for link in links.values()]

        self.add_source("smsgw_smpp_window_in_use",
                        "submit_sm written and awaiting their resp, per bind.",
                        ("link", "bind"), window)
        self.add_source("smsgw_link_rate_tps", "The link's adaptive send rate in segments/s "
                        "(+Inf: no limit until the SMSC throttles).", ("link",), rate)
        self.add_source("smsgw_link_sent_tps", "Segments let through over the last second.",
                        ("link",), sent)
        self.add_source("smsgw_link_queue_depth", "Parts waiting in the link's priority queue.",
                        ("link",), queued)

    def watch_arq(self, queue: JobQueue) -> None:
        """``smsgw_arq_queue_depth{lane}``: ZCARD of the care and bulk arq queues."""
        async def read() -> list[Sample]:
            care, bulk = await asyncio.gather(queue.depth(bulk=False), queue.depth(bulk=True))
            return [(("care",), float(care)), (("bulk",), float(bulk))]

        self.add_source("smsgw_arq_queue_depth", "Jobs in the lane's arq queue, deferred "
                        "retries included.", ("lane",), read)

    async def _refresh(self, gauge: _Gauge) -> None:
        async with gauge.lock:  # a scrape arriving meanwhile waits and reuses this read
            now = self._clock()
            if now - gauge.read_at < gauge.cache_s:
                return
            try:
                async with asyncio.timeout(self._timeout_s):
                    samples = list(await gauge.read())
            except Exception as exc:
                gauge.samples, gauge.read_at = None, now
                self.source_errors.labels(gauge.name).inc()
                log.warning("metrics: reading %s failed (%s: %s); left out of this scrape",
                            gauge.name, type(exc).__name__, exc)
                return
            gauge.samples, gauge.read_at = samples, now

    async def render(self) -> bytes:
        """Every metric in the Prometheus text format (0.0.4), scrape-time gauges read now."""
        await asyncio.gather(*(self._refresh(g) for g in self._gauges))
        return generate_latest(self.registry)
