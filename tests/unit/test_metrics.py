"""Metrics: observer events, scrape-time gauges (cache, shared reads, failures), rendering."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from smpplib import consts

from gateway.config import SmppConfig
from gateway.metrics import Metrics, Sample
from gateway.smpp.codec import Pdu
from gateway.smpp.link import Link

ROK = int(consts.SMPP_ESME_ROK)
RTHROTTLED = int(consts.SMPP_ESME_RTHROTTLED)
RMSGQFUL = int(consts.SMPP_ESME_RMSGQFUL)
RINVDSTADR = int(consts.SMPP_ESME_RINVDSTADR)


def parse(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return scrape.get((name, tuple(sorted(labels.items()))))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_events_are_counted_per_link_status_and_keyword() -> None:
    m = Metrics()
    for latency in (0.003, 0.02, 0.02, 0.7):
        m.submit_answered("vtl", ROK, latency)
    m.submit_answered("vtl", RTHROTTLED, 0.01)
    m.submit_answered("vtl", RMSGQFUL, 0.01)
    m.submit_answered("mobi", RINVDSTADR, 0.04)
    m.reconnecting("vtl")
    m.reconnecting("vtl")
    m.receipt_unmatched("mobi")
    for keyword in ("HD", "HD", "TC", None, "SURVEY"):
        m.mo_handled(keyword)
    s = parse(await m.render())
    assert value(s, "smsgw_smpp_submit_latency_seconds_count", link="vtl") == 6
    assert value(s, "smsgw_smpp_submit_latency_seconds_bucket", link="vtl", le="0.005") == 1
    assert value(s, "smsgw_smpp_submit_latency_seconds_bucket", link="vtl", le="0.025") == 5
    assert value(s, "smsgw_smpp_submit_latency_seconds_bucket", link="vtl", le="+Inf") == 6
    assert value(s, "smsgw_smpp_submit_latency_seconds_sum", link="vtl") == pytest.approx(0.763)
    assert value(s, "smsgw_smpp_submit_results_total", link="vtl", status="ESME_ROK") == 4
    assert value(s, "smsgw_smpp_submit_results_total", link="vtl",
                 status="ESME_RTHROTTLED") == 1
    assert value(s, "smsgw_smpp_submit_results_total", link="mobi",
                 status="ESME_RINVDSTADR") == 1
    assert value(s, "smsgw_smpp_throttled_total", link="vtl", status="ESME_RTHROTTLED") == 1
    assert value(s, "smsgw_smpp_throttled_total", link="vtl", status="ESME_RMSGQFUL") == 1
    assert value(s, "smsgw_smpp_throttled_total", link="mobi", status="ESME_RINVDSTADR") is None
    assert value(s, "smsgw_smpp_reconnects_total", link="vtl") == 2
    assert value(s, "smsgw_receipts_unmatched_total", link="mobi") == 1
    assert value(s, "smsgw_mo_messages_total", keyword="HD") == 2
    assert value(s, "smsgw_mo_messages_total", keyword="TC") == 1
    assert value(s, "smsgw_mo_messages_total", keyword="none") == 1
    assert value(s, "smsgw_mo_messages_total", keyword="SURVEY") == 1


async def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # same names, no DuplicateTimeseries
    a.reconnecting("x")
    assert value(parse(await a.render()), "smsgw_smpp_reconnects_total", link="x") == 1
    assert value(parse(await b.render()), "smsgw_smpp_reconnects_total", link="x") is None


async def test_a_source_is_cached_for_cache_s() -> None:
    clock = Clock()
    m = Metrics(clock=clock)
    reads = 0

    async def read() -> list[Sample]:
        nonlocal reads
        reads += 1
        return [(("care", "queued"), float(reads))]

    m.add_source("smsgw_test_rows", "Rows.", ("class", "status"), read, cache_s=5.0)
    for _ in range(3):
        s = parse(await m.render())
        assert value(s, "smsgw_test_rows", **{"class": "care", "status": "queued"}) == 1
    clock.now += 4.9
    await m.render()
    assert reads == 1
    clock.now += 0.2
    s = parse(await m.render())
    assert reads == 2
    assert value(s, "smsgw_test_rows", **{"class": "care", "status": "queued"}) == 2


async def test_concurrent_scrapes_share_one_read() -> None:
    m = Metrics()
    reads = 0
    release = asyncio.Event()

    async def read() -> list[Sample]:
        nonlocal reads
        reads += 1
        await release.wait()
        return [((), 7.0)]

    m.add_source("smsgw_test_slow", "Slow.", (), read, cache_s=1.0)
    scrapes = [asyncio.create_task(m.render()) for _ in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    texts = await asyncio.gather(*scrapes)
    assert reads == 1
    assert {value(parse(t), "smsgw_test_slow") for t in texts} == {7.0}


async def test_a_failing_or_hung_source_is_left_out_and_counted() -> None:
    clock = Clock()
    m = Metrics(clock=clock, timeout_s=0.05)
    broken = True

    async def flaky() -> list[Sample]:
        if broken:
            raise ConnectionRefusedError("postgres is down")
        return [(("a",), 1.0)]

    async def hung() -> list[Sample]:
        await asyncio.sleep(10)
        return []

    async def fine() -> list[Sample]:
        return [((), 3.0)]

    m.add_source("smsgw_test_flaky", "Flaky.", ("x",), flaky, cache_s=5.0)
    m.add_source("smsgw_test_hung", "Hung.", (), hung)
    m.add_source("smsgw_test_fine", "Fine.", (), fine)
    s = parse(await m.render())
    assert value(s, "smsgw_test_flaky", x="a") is None
    assert value(s, "smsgw_test_fine") == 3
    assert value(s, "smsgw_metrics_source_errors_total", source="smsgw_test_flaky") == 1
    assert value(s, "smsgw_metrics_source_errors_total", source="smsgw_test_hung") == 1
    broken = False
    s = parse(await m.render())  # the failure is cached too: no retry storm on a down DB
    assert value(s, "smsgw_test_flaky", x="a") is None
    assert value(s, "smsgw_metrics_source_errors_total", source="smsgw_test_flaky") == 1
    assert value(s, "smsgw_metrics_source_errors_total", source="smsgw_test_hung") == 2
    clock.now += 5.0
    s = parse(await m.render())
    assert value(s, "smsgw_test_flaky", x="a") == 1


async def test_a_gauge_name_is_registered_once() -> None:
    m = Metrics()

    async def read() -> list[Sample]:
        return []

    m.add_source("smsgw_test_once", "Once.", (), read)
    with pytest.raises(ValueError, match="already registered"):
        m.add_source("smsgw_test_once", "Twice.", (), read)


async def _refuse(pdu: Pdu) -> int:
    return int(consts.SMPP_ESME_RX_T_APPN)


async def test_link_gauges_of_links_not_started() -> None:
    limited = Link(SmppConfig(name="vtl", tps=50, binds=2), on_deliver=_refuse)
    unlimited = Link(SmppConfig(name="mobi", bind_mode="tx+rx"), on_deliver=_refuse)
    m = Metrics()
    m.watch_links({"vtl": limited, "mobi": unlimited})
    s = parse(await m.render())
    assert value(s, "smsgw_link_rate_tps", link="vtl") == 50
    assert value(s, "smsgw_link_rate_tps", link="mobi") == math.inf
    for link, bind in (("vtl", "vtl-trx1"), ("vtl", "vtl-trx2"), ("mobi", "mobi-tx1"),
                       ("mobi", "mobi-rx1")):
        assert value(s, "smsgw_smpp_window_in_use", link=link, bind=bind) == 0
    for link in ("vtl", "mobi"):
        assert value(s, "smsgw_link_queue_depth", link=link) == 0
        assert value(s, "smsgw_link_sent_tps", link=link) == 0
        # the event series of a watched link exist from the start, at 0
        assert value(s, "smsgw_smpp_submit_latency_seconds_count", link=link) == 0
        assert value(s, "smsgw_smpp_submit_results_total", link=link, status="ESME_ROK") == 0
        assert value(s, "smsgw_smpp_throttled_total", link=link,
                     status="ESME_RTHROTTLED") == 0
        assert value(s, "smsgw_smpp_reconnects_total", link=link) == 0


def test_render_output_is_the_text_format() -> None:
    m = Metrics()
    m.submit_answered("vtl", ROK, 0.01)
    text = asyncio.run(m.render()).decode()
    assert "# TYPE smsgw_smpp_submit_results_total counter" in text
    assert 'smsgw_smpp_submit_results_total{link="vtl",status="ESME_ROK"} 1.0' in text
    families: dict[str, Any] = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["smsgw_smpp_submit_latency_seconds"].type == "histogram"
