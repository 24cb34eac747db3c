"""The spine end to end over real parts: HTTP → Postgres → arq (Redis) → SMPP over TCP to the
simulator → delivery receipt → Postgres. Each test gets its own database and arq queue."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from gateway.smpp.encoding import normalise
from gateway.smpp.simulator import SimulatorConfig, SmscSimulator
from tests.integration.conftest import MakeStack
from tests.integration.conftest import numbers as _numbers


async def test_round_trip_http_to_receipt(make_stack: MakeStack) -> None:
    st = await make_stack()
    [to] = _numbers(1)
    data = await st.send(to=to, text="Cuoc thang 11/2026 cua Quy khach la 250.000d.")
    assert data["status"] == "queued" and data["encoding"] == "gsm7" and data["segments"] == 1
    assert (await st.wait_terminal([data["id"]]))[data["id"]] == "delivered"
    detail = await st.get(data["id"])
    assert [e["status"] for e in detail["events"]][:3] == ["queued", "submitting", "submitted"]
    assert detail["events"][-1]["status"] == "delivered"
    assert detail["smsc_message_id"]
    msisdn = "84" + to[1:]
    assert st.sim.messages(msisdn) == ["Cuoc thang 11/2026 cua Quy khach la 250.000d."]
    async with st.http.get(f"{st.base}/healthz") as resp:
        health = await resp.json()
        assert resp.status == 200 and health["smpp"]["bound"] is True


async def test_window_of_ten_really_has_ten_in_flight(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"resp_delay_s": 0.25}, smpp={"window": 10})
    numbers = _numbers(40)
    ids = [(await st.send(to=n, text=f"window test {i}"))["id"] for i, n in enumerate(numbers)]
    assert st.gw.client is not None
    peak = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and st.sim.parts_received < 40:
        peak = max(peak, st.gw.client.in_flight)
        await asyncio.sleep(0.005)
    assert peak == 10
    statuses = await st.wait_terminal(ids)
    assert set(statuses.values()) == {"delivered"}


async def test_enquire_link_both_ways(make_stack: MakeStack) -> None:
    # An idle link is probed by whichever side has the shorter interval.
    ours = await make_stack(smpp={"enquire_link_s": 0.2})
    theirs = await make_stack(sim={"enquire_link_interval_s": 0.2})
    await asyncio.sleep(1.5)
    assert ours.sim.enquire_links_received >= 2  # our probes, answered by the SMSC
    assert theirs.sim.enquire_links_answered >= 2  # the SMSC's probes, answered by us
    for st in (ours, theirs):
        assert st.gw.client is not None
        assert all(b.reconnects == 0 for b in st.gw.client.binds)


async def test_smsc_drops_mid_window_nothing_lost_nothing_doubled(make_stack: MakeStack) -> None:
    # The SMSC closes the connection on the 15th submit_sm without answering it; the submits it
    # answered before are acknowledged, the rest of the window never reached it.
    st = await make_stack(sim={"drop_after": 15}, smpp={"window": 10})
    numbers = _numbers(60)
    ids = [(await st.send(to=n, text=f"drop test {i}"))["id"] for i, n in enumerate(numbers)]
    statuses = await st.wait_terminal(ids)
    assert len(statuses) == 60
    assert set(statuses.values()) == {"delivered"}, statuses
    assert st.gw.client is not None
    assert sum(b.reconnects for b in st.gw.client.binds) >= 1
    assert st.sim.duplicates() == {}
    for i, n in enumerate(numbers):
        assert st.sim.messages("84" + n[1:]) == [f"drop test {i}"]


@pytest.mark.parametrize("policy", ["resend", "fail"])
async def test_lost_responses_follow_the_ambiguous_policy(make_stack: MakeStack,
                                                          policy: str) -> None:
    # Responses are delayed, so when the SMSC drops the link some submits it ACCEPTED have no
    # answer yet: the ambiguous window. "resend" delivers everything and may double exactly
    # those; "fail" never doubles and records them as failed. Either way each one is recorded.
    st = await make_stack(sim={"drop_after": 15, "resp_delay_s": 0.05}, smpp={"window": 10},
                          sending={"ambiguous_policy": policy})
    numbers = _numbers(40)
    ids = [(await st.send(to=n, text=f"ambiguous {i}"))["id"] for i, n in enumerate(numbers)]
    statuses = await st.wait_terminal(ids)
    assert len(statuses) == 40
    ambiguous = []
    for mid in ids:
        events = (await st.get(mid))["events"]
        if any("ambiguous" in e["detail"] for e in events):
            ambiguous.append(mid)
    assert ambiguous, "the drop must leave some submits unanswered"
    doubled = sum(c - 1 for c in st.sim.received.values() if c > 1)
    if policy == "resend":
        assert set(statuses.values()) == {"delivered"}
        assert doubled <= len(ambiguous)  # only ambiguous messages can be doubled
    else:
        assert doubled == 0
        assert {statuses[m] for m in ambiguous} == {"failed"}
        assert all(statuses[m] == "delivered" for m in ids if m not in ambiguous)
    for i, n in enumerate(numbers):  # nothing lost: every message reached the SMSC or failed
        got = st.sim.messages("84" + n[1:])
        assert got or statuses[ids[i]] == "failed"


async def test_throttling_backs_off_and_resends(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"tps_limit": 20}, smpp={"window": 10, "throttle_pause_s": 0.2})
    numbers = _numbers(120)
    ids = [d["id"] for d in await asyncio.gather(
        *(st.send(to=n, text=f"throttle {i}") for i, n in enumerate(numbers)))]
    statuses = await st.wait_terminal(ids, timeout=30)
    assert set(statuses.values()) == {"delivered"}
    assert st.sim.submits_throttled > 0
    assert st.sim.duplicates() == {}
    assert sum(st.sim.received.values()) >= 120


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x10\x00\x00\x00\x99\x00\x00\x00\x00\x00\x00\x00\x07",  # unknown command
    b"\xff\xff\xff\xff" + b"\x00" * 12,  # absurd command_length
    b"\x00\x00\x00\x14\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x08\x01\x02\x03\x04",
])
async def test_garbage_from_the_smsc_never_crashes(make_stack: MakeStack,
                                                   garbage: bytes) -> None:
    st = await make_stack()
    await st.sim.send_raw(garbage)
    await asyncio.sleep(0.3)
    assert st.gw.client is not None
    assert await st.gw.client.wait_bound(5)
    [to] = _numbers(1)
    data = await st.send(to=to, text="still alive")
    assert (await st.wait_terminal([data["id"]]))[data["id"]] == "delivered"


async def test_idempotency_key_reused_means_one_submit(make_stack: MakeStack) -> None:
    st = await make_stack()
    [to] = _numbers(1)
    first = await st.send(to=to, text="mot lan thoi", idempotency_key="bill-2026-11-A1")
    second = await st.send(to=to, text="mot lan thoi", idempotency_key="bill-2026-11-A1")
    assert first["id"] == second["id"] and second["created"] is False
    await st.wait_terminal([first["id"]])
    await asyncio.sleep(0.3)
    assert st.sim.messages("84" + to[1:]) == ["mot lan thoi"]


async def test_vietnamese_and_long_messages_arrive_intact(make_stack: MakeStack) -> None:
    st = await make_stack()
    a, b = _numbers(2)
    viet = "Kính gửi Quý khách Nguyễn Thị Ánh Tuyết: cước tháng 11/2026 là 1.250.000đ. 😀"
    long_text = ("Trân trọng cảm ơn Quý khách đã đồng hành cùng nhà mạng. " * 8)[:400]
    d1 = await st.send(to=a, text=viet)
    d2 = await st.send(to=b, text=long_text)
    assert d1["encoding"] == "ucs2" and d2["encoding"] == "ucs2"
    assert d2["segments"] == 6  # 400 UTF-16 units / 67 per part
    statuses = await st.wait_terminal([d1["id"], d2["id"]])
    assert set(statuses.values()) == {"delivered"}
    assert st.sim.messages("84" + a[1:]) == [normalise(viet)]
    assert st.sim.messages("84" + b[1:]) == [normalise(long_text).strip()]
    detail = await st.get(d2["id"])
    assert detail["segments"] == 6


async def test_receipt_states_are_recorded(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"receipt_mix": (("DELIVRD", 1), ("UNDELIV", 1), ("EXPIRED", 1)),
                               "seed": 7})
    numbers = _numbers(30)
    ids = [(await st.send(to=n, text=f"mix {i}"))["id"] for i, n in enumerate(numbers)]
    statuses = await st.wait_terminal(ids)
    assert set(statuses.values()) == {"delivered", "undelivered", "expired"}


async def test_message_stored_while_redis_enqueue_failed_is_swept(make_stack: MakeStack) -> None:
    st = await make_stack(sending={"stale_queued_s": 0.0})
    assert st.gw.intake is not None and st.gw.queue is not None
    # Intake with no queue = the enqueue after the INSERT never happened (crash / Redis down).
    from gateway.intake import Intake, SendRequest

    lost_enqueue = Intake(store=st.gw.store, queue=None,  # type: ignore[arg-type]
                          renderer=st.gw.intake._renderer, sending=st.gw.config.sending)
    [to] = _numbers(1)
    rec, _ = await lost_enqueue.submit(SendRequest(to=to, text="swept"), api_key_id=None)
    await asyncio.sleep(0.3)
    assert st.sim.messages("84" + to[1:]) == []
    assert await st.gw.sweep_once() == 1
    assert (await st.wait_terminal([str(rec.id)]))[str(rec.id)] == "delivered"
    assert st.sim.messages("84" + to[1:]) == ["swept"]


async def test_job_run_twice_submits_once(make_stack: MakeStack) -> None:
    st = await make_stack()
    [to] = _numbers(1)
    data = await st.send(to=to, text="at least once, sent once")
    await st.wait_terminal([data["id"]])
    from jobs.send import send_messages

    # arq may run a job again (worker killed after the work, before the ack): nothing is sent.
    assert await send_messages({"sender": st.gw.sender}, [data["id"]]) == 0
    await asyncio.sleep(0.2)
    assert st.sim.messages("84" + to[1:]) == ["at least once, sent once"]


async def test_smsc_unbinds_then_returns(make_stack: MakeStack) -> None:
    st = await make_stack()
    port = st.sim.port
    await st.sim.stop()  # the SMSC sends unbind; we answer unbind_resp and start reconnecting
    await asyncio.sleep(0.3)
    async with st.http.get(f"{st.base}/healthz") as resp:
        body = await resp.json()
        assert resp.status == 503
        assert body["smpp"]["bound"] is False and body["postgres"] is True
    [to] = _numbers(1)
    data = await st.send(to=to, text="queued while the SMSC was away")
    st.sim = SmscSimulator(SimulatorConfig(port=port, receipt_delay_s=0.05))
    await st.sim.start()
    try:
        assert (await st.wait_terminal([data["id"]]))[data["id"]] == "delivered"
        assert st.sim.messages("84" + to[1:]) == ["queued while the SMSC was away"]
    finally:
        await st.sim.stop()


async def test_transmitter_receiver_pair(make_stack: MakeStack) -> None:
    st = await make_stack(smpp={"bind_mode": "tx+rx"})
    assert st.gw.client is not None
    assert sorted(b.mode.value for b in st.gw.client.binds) == ["receiver", "transmitter"]
    [to] = _numbers(1)
    data = await st.send(to=to, text="tx and rx")
    assert (await st.wait_terminal([data["id"]]))[data["id"]] == "delivered"


async def test_response_timeout_is_ambiguous_and_recorded(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"resp_delay_s": 1.0},
                          smpp={"response_timeout_s": 0.3},
                          sending={"ambiguous_policy": "fail"})
    [to] = _numbers(1)
    data = await st.send(to=to, text="slow smsc")
    assert (await st.wait_terminal([data["id"]]))[data["id"]] == "failed"
    detail = await st.get(data["id"])
    assert "no submit_sm_resp within 0.3s" in detail["last_error"]
    assert detail["events"][-1]["status"] == "failed"


async def test_shutdown_drains_the_window_then_unbinds(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"resp_delay_s": 0.3})
    numbers = _numbers(5)
    ids = [(await st.send(to=n, text=f"drain {i}"))["id"] for i, n in enumerate(numbers)]
    deadline = time.monotonic() + 5
    while st.sim.parts_received < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert st.gw.client is not None and st.gw.client.in_flight > 0
    assert st.gw.store is not None
    store_pool = st.gw.pool
    assert store_pool is not None
    started = time.monotonic()
    await st.gw.stop(timeout=5)
    assert time.monotonic() - started < 5
    assert st.sim.bound_connections == 0  # we unbound
    # Every response that was in flight was waited for and recorded before the pool closed.
    import asyncpg

    conn = await asyncpg.connect(st.gw.config.database.dsn)
    try:
        rows = await conn.fetch("SELECT status FROM messages WHERE id = ANY($1::uuid[])",
                                [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()
    assert {r["status"] for r in rows} <= {"submitted", "delivered"}


@pytest.mark.parametrize(("resp_format", "receipt_format"), [("hex", "decimal"),
                                                             ("decimal", "hex")])
async def test_receipt_ids_in_the_other_base_still_match(make_stack: MakeStack, resp_format: str,
                                                        receipt_format: str) -> None:
    st = await make_stack(sim={"message_id_format": resp_format,
                               "receipt_id_format": receipt_format})
    numbers = _numbers(5)
    ids = [(await st.send(to=n, text=f"base {i}"))["id"] for i, n in enumerate(numbers)]
    statuses = await st.wait_terminal(ids)
    assert set(statuses.values()) == {"delivered"}


async def test_exact_id_matching_keeps_other_base_receipts_pending(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"message_id_format": "decimal", "receipt_id_format": "hex"},
                          smpp={"message_id_format": "exact"})
    [to] = _numbers(1)
    data = await st.send(to=to, text="exact ids")
    await asyncio.sleep(1.0)
    assert (await st.get(data["id"]))["status"] == "submitted"  # receipt kept, not matched


async def test_permanent_errors_reject_or_fail_with_a_reason(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"reject_prefixes": ("84999",)})
    assert st.gw.store is not None and st.gw.sender is not None
    from gateway.domain import Encoding, MessageClass
    from gateway.store.messages import NewMessage

    refused = await st.send(to="0999123456", text="the SMSC refuses this destination")
    # a numeric sender longer than SMPP's 20 octets cannot even be encoded
    bad, _ = await st.gw.store.create(NewMessage(
        msisdn="84901999888", sender="1" * 25, body="y", encoding=Encoding.GSM7, segments=1,
        message_class=MessageClass.CARE))
    assert await st.gw.sender.send_ids([bad.id]) == 1
    final = await st.wait_terminal([refused["id"], str(bad.id)])
    assert final == {refused["id"]: "rejected", str(bad.id): "failed"}
    assert "ESME_RINVDSTADR" in (await st.get(refused["id"]))["last_error"]
    rec = await st.gw.store.get(bad.id)
    assert rec is not None and rec.last_error and "cannot encode" in rec.last_error


def _redis_server(port: int) -> Any:
    import shutil
    import subprocess

    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import redis as sync_redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            sync_redis.Redis(port=port).ping()
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("throwaway redis-server did not start")


async def test_redis_restart_mid_run_loses_nothing(make_stack: MakeStack) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _redis_server(port)
    try:
        st = await make_stack(sending={"sweep_interval_s": 0.3, "stale_queued_s": 0.5},
                              redis=f"redis://127.0.0.1:{port}/0")
        first = [(await st.send(to=n, text=f"before {i}"))["id"]
                 for i, n in enumerate(_numbers(10))]
        assert set((await st.wait_terminal(first)).values()) == {"delivered"}
        server.kill()
        server.wait()
        during_numbers = _numbers(10, start=500)
        during = [(await st.send(to=n, text=f"during {i}"))["id"]
                  for i, n in enumerate(during_numbers)]  # stored in Postgres; enqueue fails
        async with st.http.get(f"{st.base}/healthz") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["redis"] is False
        await asyncio.sleep(1.0)
        server = _redis_server(port)  # an empty Redis: every queued job is gone
        statuses = await st.wait_terminal(during, timeout=30)
        assert set(statuses.values()) == {"delivered"}
        assert st.sim.duplicates() == {}
        for i, n in enumerate(during_numbers):
            assert st.sim.messages("84" + n[1:]) == [f"during {i}"]
    finally:
        server.kill()
        server.wait()
