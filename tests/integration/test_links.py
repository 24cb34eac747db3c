"""Several SMSC links: routing, failover, binds per link, throttling, receipt expiry, options.

Each link talks to its own simulator over TCP; Postgres and Redis are real (own db per test).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.config import (
    Config,
    DatabaseConfig,
    HttpConfig,
    RedisConfig,
    RouteConfig,
    SendingConfig,
    SmppConfig,
)
from gateway.service import Gateway
from gateway.smpp.simulator import SimulatorConfig, SmscSimulator
from gateway.store.apikeys import ApiKeyStore
from tests.integration.conftest import TERMINAL, daytime_clock, numbers


@dataclasses.dataclass
class Multi:
    gw: Gateway
    sims: dict[str, SmscSimulator]
    http: aiohttp.ClientSession
    base: str

    async def send(self, **body: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.base}/v1/messages", json=body) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status in (200, 202), (resp.status, data)
            return data

    async def get(self, mid: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/v1/messages/{mid}") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def wait_terminal(self, ids: list[str], timeout: float = 20,
                            done: frozenset[str] = frozenset(TERMINAL)) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            for mid in ids:
                status[mid] = (await self.get(mid))["status"]
            if all(s in done for s in status.values()):
                break
            await asyncio.sleep(0.05)
        return status


MakeMulti = Callable[..., Awaitable[Multi]]


@pytest.fixture
async def make_multi(fresh_pg_dsn: str, redis_dsn: str) -> AsyncIterator[MakeMulti]:
    made: list[Multi] = []

    async def factory(links: dict[str, dict[str, Any]], *,
                      sims: dict[str, dict[str, Any]] | None = None,
                      routes: list[dict[str, Any]] | None = None,
                      sending: dict[str, Any] | None = None,
                      queue: str | None = None, start_sims: bool = True,
                      wait_bound: bool = True) -> Multi:
        simulators = {}
        for name in links:
            sim = SmscSimulator(SimulatorConfig(**{"port": 0, "receipt_delay_s": 0.05,
                                                   **(sims or {}).get(name, {})}))
            if start_sims:
                await sim.start()
            simulators[name] = sim
        smsc = tuple(SmppConfig(name=name, port=simulators[name].port if start_sims else 1,
                                reconnect_min_s=0.05, reconnect_max_s=0.2, **cfg)
                     for name, cfg in links.items())
        cfg = Config(
            database=DatabaseConfig(dsn=fresh_pg_dsn),
            redis=RedisConfig(dsn=redis_dsn,
                              queue_name=queue or f"smsgw:test:{uuid.uuid4().hex}"),
            http=HttpConfig(port=0),
            sending=SendingConfig(**{"sweep_interval_s": 3600.0, **(sending or {})}),
            smsc=smsc,
            route=tuple(RouteConfig(**r) for r in routes or ()),
        )
        gw = Gateway(cfg, clock=daytime_clock())
        await gw.start()
        assert gw.pool is not None
        _, key = await ApiKeyStore(gw.pool).create(f"t-{uuid.uuid4().hex[:8]}",
                                                   ("messages:send",), rate_per_s=0)
        http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
        multi = Multi(gw, simulators, http, f"http://127.0.0.1:{gw.http_port}")
        made.append(multi)
        if start_sims and wait_bound:
            assert await gw.wait_bound(5)
        return multi

    yield factory
    for m in made:
        await m.http.close()
        await m.gw.stop(timeout=5)
        for sim in m.sims.values():
            await sim.stop()


def e164(national: str) -> str:
    return "84" + national[1:]


async def test_routes_pick_links_and_the_link_is_recorded(make_multi: MakeMulti) -> None:
    m = await make_multi({"vt": {}, "vn": {}}, routes=[
        {"prefixes": ("8496", "8497"), "links": ("vt",)},
        {"message_class": "advertising", "links": ("vn",)},
    ])
    vt_to, care_to, ad_to = "0961234567", numbers(1)[0], numbers(1)[0]
    a = await m.send(to=vt_to, text="viettel route")
    b = await m.send(to=care_to, text="default route")  # no rule: every link, in order
    c = await m.send(to=ad_to, text="[QC] promo. Tu choi QC soan TC gui 1234",
                     **{"class": "advertising"})
    statuses = await m.wait_terminal([a["id"], b["id"], c["id"]])
    assert set(statuses.values()) == {"delivered"}
    assert (await m.get(a["id"]))["link"] == "vt"
    assert (await m.get(b["id"]))["link"] == "vt"  # first link of the default order
    assert (await m.get(c["id"]))["link"] == "vn"
    assert m.sims["vt"].messages(e164(vt_to)) == ["viettel route"]
    assert m.sims["vn"].messages(e164(ad_to)) == ["[QC] promo. Tu choi QC soan TC gui 1234"]
    assert m.sims["vn"].messages(e164(vt_to)) == []


async def test_permanent_error_on_a_link_fails_over_to_the_next(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {}, "b": {}}, sims={"a": {"reject_prefixes": ("84",)}},
                         routes=[{"links": ("a", "b")}])
    tos = numbers(5)
    ids = [(await m.send(to=t, text=f"failover {i}"))["id"] for i, t in enumerate(tos)]
    statuses = await m.wait_terminal(ids)
    assert set(statuses.values()) == {"delivered"}
    for i, t in enumerate(tos):
        assert m.sims["a"].messages(e164(t)) == []
        assert m.sims["b"].messages(e164(t)) == [f"failover {i}"]
    assert {(await m.get(i))["link"] for i in ids} == {"b"}


async def test_a_down_link_is_skipped(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {}, "b": {}}, routes=[{"links": ("a", "b")}])
    await m.sims["a"].stop()
    await asyncio.sleep(0.3)
    health = await m.gw.health()
    assert [link["up"] for link in health["smpp"]["links"]] == [False, True]
    tos = numbers(3)
    ids = [(await m.send(to=t, text="around a dead link"))["id"] for t in tos]
    assert set((await m.wait_terminal(ids)).values()) == {"delivered"}
    assert {(await m.get(i))["link"] for i in ids} == {"b"}


async def test_every_route_refusing_rejects_with_the_status(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {}, "b": {}}, sims={"a": {"reject_prefixes": ("84",)},
                                                   "b": {"reject_prefixes": ("84",)}})
    [to] = numbers(1)
    mid = (await m.send(to=to, text="nobody takes it"))["id"]
    assert (await m.wait_terminal([mid]))[mid] == "rejected"
    detail = await m.get(mid)
    assert "ESME_RINVDSTADR" in detail["last_error"] and "link b" in detail["last_error"]


async def test_binds_per_link_share_the_load(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {"binds": 3, "window": 2}}, sims={"a": {"resp_delay_s": 0.05}})
    assert m.sims["a"].bound_connections == 3
    tos = numbers(30)
    ids = [(await m.send(to=t, text=f"spread {i}"))["id"] for i, t in enumerate(tos)]
    assert set((await m.wait_terminal(ids)).values()) == {"delivered"}
    link = m.gw.links["a"]
    per_bind = [b["reconnects"] for b in link.client.status()]
    assert len(per_bind) == 3
    assert m.sims["a"].duplicates() == {}


async def test_link_tps_is_counted_in_segments(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {"tps": 20.0, "window": 10}})
    long_text = "x" * 300  # 2 GSM-7 parts each
    tos = numbers(10)
    started = time.monotonic()
    ids = [(await m.send(to=t, text=long_text))["id"] for t in tos]
    assert set((await m.wait_terminal(ids)).values()) == {"delivered"}
    elapsed = time.monotonic() - started
    # 20 segments at 20/s after a burst of at most 2: close to 0.9 s, certainly not 0.45 s
    assert elapsed >= 0.8, elapsed
    assert m.sims["a"].parts_received == 20


async def test_adaptive_backoff_on_throttling_keeps_order(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {"window": 5, "throttle_pause_s": 0.2}},
                         sims={"a": {"tps_limit": 20}})
    tos = numbers(60)
    ids = [d["id"] for d in await asyncio.gather(
        *(m.send(to=t, text=f"throttled {i}") for i, t in enumerate(tos)))]
    statuses = await m.wait_terminal(ids, timeout=30)
    assert set(statuses.values()) == {"delivered"}
    assert m.sims["a"].submits_throttled > 0
    status = m.gw.links["a"].status()
    assert status["throttled"] > 0 and status["rate"]["adaptive"]["throttles"] >= 1
    assert m.sims["a"].duplicates() == {}


async def test_throttled_parts_are_resent_in_their_original_order() -> None:
    from gateway.smpp.codec import Pdu
    from gateway.smpp.link import Link

    sim = SmscSimulator(SimulatorConfig(port=0, tps_limit=25, receipt_delay_s=0.05))
    await sim.start()

    async def ack(pdu: Pdu) -> int:
        return 0

    link = Link(SmppConfig(name="a", port=sim.port, window=1, throttle_pause_s=0.1,
                           reconnect_min_s=0.05), on_deliver=ack)
    link.start()
    try:
        assert await link.client.wait_bound(5)
        params = [{"source_addr": "CSKH", "destination_addr": "84901000001",
                   "short_message": f"{i:03d}".encode()} for i in range(80)]
        results = await asyncio.gather(*(link.submit(p, wait_s=30) for p in params))
        assert all(r.ok for r in results)
        assert sim.submits_throttled > 0  # the SMSC did throttle us ...
        assert sim.messages("84901000001") == [f"{i:03d}" for i in range(80)]  # ... in order
        assert link.throttle.adaptive.throttles >= 1
    finally:
        await link.stop(2)
        await sim.stop()


async def test_no_receipt_in_time_expires_and_a_late_receipt_still_counts(
        make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {}}, sims={"a": {"receipt_delay_s": 2.0}},
                         sending={"receipt_timeout_s": 0.3})
    [to] = numbers(1)
    mid = (await m.send(to=to, text="slow receipt"))["id"]
    assert (await m.wait_terminal([mid], done=frozenset({"submitted"})))[mid] == "submitted"
    await asyncio.sleep(0.5)
    await m.gw.sweep_once()
    detail = await m.get(mid)
    assert detail["status"] == "expired"
    assert "no delivery receipt within 0.3 s" in detail["events"][-1]["detail"]
    await asyncio.sleep(2.0)
    assert (await m.get(mid))["status"] == "delivered"


async def test_per_message_options_reach_the_wire(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {}})
    to1, to2 = numbers(2)
    no_dlr = await m.send(to=to1, text="no receipt wanted", registered_delivery=False,
                          validity_period=3600, priority_flag=2)
    ucs2 = await m.send(to=to2, text="plain ascii but forced UCS-2", data_coding=8)
    assert ucs2["encoding"] == "ucs2"
    await asyncio.sleep(0.6)
    assert (await m.get(no_dlr["id"]))["status"] == "submitted"  # no receipt asked
    assert (await m.get(no_dlr["id"]))["options"] == {
        "validity_s": 3600, "priority_flag": 2, "registered_delivery": 0, "default_sender": 1}
    assert (await m.wait_terminal([ucs2["id"]]))[ucs2["id"]] == "delivered"
    assert m.sims["a"].messages(e164(to2)) == ["plain ascii but forced UCS-2"]
    [wire] = m.sims["a"].submit_options(e164(to1))
    assert wire["validity_period"] == "000000010000000R"  # 1 h, SMPP relative format
    assert wire["priority_flag"] == 2 and wire["registered_delivery"] == 0
    assert (wire["source_addr"], wire["source_addr_ton"], wire["source_addr_npi"]) == (
        "CSKH", 5, 0)  # alphanumeric sender
    [forced] = m.sims["a"].submit_options(e164(to2))
    assert forced["data_coding"] == 8
    numeric = await m.send(to=to1, text="from a short code", sender="1543")
    long_numeric = await m.send(to=to2, text="from a long number", sender="84901234567")
    assert set((await m.wait_terminal([numeric["id"], long_numeric["id"]])).values()) == {
        "delivered"}
    assert m.sims["a"].submit_options(e164(to1))[-1]["source_addr_ton"] == 3  # network-specific
    assert m.sims["a"].submit_options(e164(to2))[-1]["source_addr_ton"] == 1  # international
    async with m.http.post(f"{m.base}/v1/messages", json={
            "to": to1, "text": "Tiếng Việt", "data_coding": 0}) as resp:
        body = await resp.json()
        assert resp.status == 422 and body["error"]["field"] == "data_coding"


async def test_shared_account_limit_across_two_gateways(make_multi: MakeMulti) -> None:
    # Two gateway processes' worth of links on one Redis, same carrier account at 40 seg/s.
    first = await make_multi({"a": {"account": "carrier-x", "account_tps": 40.0}})
    # Its own simulator stands for the same SMSC: it must not hand out the ids the first one
    # does (both number from the current second), or the two gateways' receipts, on the same
    # link name in one database, match each other's messages.
    second = await make_multi({"a": {"account": "carrier-x", "account_tps": 40.0}},
                              sims={"a": {"first_message_id": 0x7_0000_0000_0000}})
    started = time.monotonic()
    ids1 = [(await first.send(to=t, text="shared"))["id"] for t in numbers(60)]
    ids2 = [(await second.send(to=t, text="shared"))["id"] for t in numbers(60)]
    s1, s2 = await asyncio.gather(first.wait_terminal(ids1, timeout=30),
                                  second.wait_terminal(ids2, timeout=30))
    elapsed = time.monotonic() - started
    assert set(s1.values()) | set(s2.values()) == {"delivered"}
    # 120 segments at 40/s for the account (burst 4): at least ~2.9 s in all
    assert elapsed >= 2.7, elapsed


async def test_smpp_over_tls(make_multi: MakeMulti, tmp_path: Any) -> None:
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    m = await make_multi({"secure": {"tls": True, "tls_ca_file": str(cert)}},
                         sims={"secure": {"tls_cert_file": str(cert), "tls_key_file": str(key)}})
    [to] = numbers(1)
    mid = (await m.send(to=to, text="over TLS"))["id"]
    assert (await m.wait_terminal([mid]))[mid] == "delivered"
    assert m.sims["secure"].messages(e164(to)) == ["over TLS"]


async def test_tls_certificate_is_verified(make_multi: MakeMulti, tmp_path: Any) -> None:
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    # no CA given: the self-signed certificate must be refused, the link stays down
    m = await make_multi({"secure": {"tls": True}}, wait_bound=False,
                         sims={"secure": {"tls_cert_file": str(cert), "tls_key_file": str(key)}})
    link = m.gw.links["secure"]
    assert not await link.client.wait_bound(1.0)
    assert "CERTIFICATE_VERIFY_FAILED" in link.client.status()[0]["last_error"]
    assert m.sims["secure"].binds == 0


async def test_a_message_that_could_not_be_sent_is_retried_without_the_sweeper(
        make_multi: MakeMulti) -> None:
    # Parts wait at most stale_submitting_s / 2 = 1 s for a bind; then the message goes back
    # to the queue and is re-enqueued with a growing delay (the sweeper is off here).
    m = await make_multi({"a": {"response_timeout_s": 0.5}},
                         sending={"stale_submitting_s": 2.0, "max_attempts": 10})
    port = m.sims["a"].port
    await m.sims["a"].stop()
    [to] = numbers(1)
    mid = (await m.send(to=to, text="retried later"))["id"]
    await asyncio.sleep(2.5)
    detail = await m.get(mid)
    assert detail["status"] in ("queued", "submitting") and detail["attempts"] >= 1
    m.sims["a"] = SmscSimulator(SimulatorConfig(port=port, receipt_delay_s=0.05))
    await m.sims["a"].start()
    assert (await m.wait_terminal([mid], timeout=20))[mid] == "delivered"
    assert m.sims["a"].messages(e164(to)) == ["retried later"]
    assert any("requeued" in e["detail"] or e["status"] == "queued"
               for e in (await m.get(mid))["events"][1:])


async def test_a_links_default_sender_replaces_the_global_default(make_multi: MakeMulti) -> None:
    m = await make_multi({"a": {"default_sender": "VTCARE"}})
    to1, to2 = numbers(2)
    plain = await m.send(to=to1, text="no sender given")
    chosen = await m.send(to=to2, text="sender chosen", sender="BILLING")
    assert set((await m.wait_terminal([plain["id"], chosen["id"]])).values()) == {"delivered"}
    assert m.sims["a"].submit_options(e164(to1))[0]["source_addr"] == "VTCARE"
    assert m.sims["a"].submit_options(e164(to2))[0]["source_addr"] == "BILLING"
