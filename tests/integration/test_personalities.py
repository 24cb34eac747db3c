"""The whole gateway against each simulator personality (issue 3 item 8): it survives and
nothing is lost.

Every test sends a handful of messages to fresh numbers and checks that each one reaches a
final status — delivered, or failed with a recorded reason where the personality makes
delivery impossible — that the simulator holds every delivered message, and that nothing was
doubled except where the ambiguous policy allows it (``resend``: only a message with an
"ambiguous" event may reach the handset twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from smpplib import consts

from gateway.smpp.session import Request, Response, Role, Session
from gateway.smpp.simulator import GARBAGE, PERSONALITIES
from tests.integration.conftest import MakeStack, Stack
from tests.integration.conftest import numbers as _numbers

# Short timeouts everywhere: a lost response is noticed in 0.3 s, a dead link in ~0.5 s.
FAST = {"response_timeout_s": 0.3, "enquire_link_s": 0.2}


def msisdn(national: str) -> str:
    return "84" + national[1:]


async def send_all(st: Stack, label: str, n: int = 10) -> tuple[list[str], list[str]]:
    """Send n messages "<label> <i>" to fresh numbers; returns (message ids, numbers)."""
    numbers = _numbers(n)
    ids = [(await st.send(to=to, text=f"{label} {i}"))["id"] for i, to in enumerate(numbers)]
    return ids, numbers


async def events_of(st: Stack, mid: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await st.get(mid))["events"]
    return events


async def assert_delivered_once(st: Stack, label: str, ids: list[str], numbers: list[str],
                                timeout: float = 20) -> None:
    """Every message delivered, exactly once at the SMSC, with exactly one delivered event."""
    statuses = await st.wait_terminal(ids, timeout=timeout)
    assert statuses == dict.fromkeys(ids, "delivered"), statuses
    assert st.sim.duplicates() == {}
    for i, to in enumerate(numbers):
        assert st.sim.messages(msisdn(to)) == [f"{label} {i}"]
    for mid in ids:
        delivered = [e for e in await events_of(st, mid) if e["status"] == "delivered"]
        assert len(delivered) == 1, (mid, delivered)


async def ambiguous_ids(st: Stack, ids: list[str]) -> set[str]:
    """Messages with an event that mentions a lost response."""
    found = set()
    for mid in ids:
        if any("ambiguous" in (e["detail"] or "") for e in await events_of(st, mid)):
            found.add(mid)
    return found


def doubled_numbers(st: Stack, numbers: list[str]) -> set[str]:
    return {to for to in numbers if len(st.sim.messages(msisdn(to))) > 1}


# --------------------------------------------------------------------------- 1. happy

async def test_happy(make_stack: MakeStack) -> None:
    st = await make_stack()
    ids, numbers = await send_all(st, "happy")
    await assert_delivered_once(st, "happy", ids, numbers)
    assert st.sim.binds == 1


# --------------------------------------------------------------------------- 2. black hole

async def test_black_hole_with_policy_fail_records_every_failure(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"black_hole": True}, smpp=FAST,
                          sending={"ambiguous_policy": "fail"})
    ids, _ = await send_all(st, "void")
    statuses = await st.wait_terminal(ids, timeout=15)
    assert statuses == dict.fromkeys(ids, "failed"), statuses
    for mid in ids:
        error = (await st.get(mid))["last_error"]
        assert "ambiguous" in error, error
        assert "no submit_sm_resp" in error or "lost" in error, error
    assert st.sim.parts_received == 0  # the black hole kept nothing


async def test_black_hole_with_policy_resend_gives_up(make_stack: MakeStack) -> None:
    # resend keeps trying within the submit budget (stale_submitting_s / 2), the sweeper
    # re-enqueues, and after max_attempts the message is failed with the reason.
    st = await make_stack(sim={"black_hole": True}, smpp=FAST,
                          sending={"ambiguous_policy": "resend", "max_attempts": 2,
                                   "stale_submitting_s": 1.0, "stale_queued_s": 0.2,
                                   "sweep_interval_s": 0.3})
    ids, _ = await send_all(st, "void", n=5)
    statuses = await st.wait_terminal(ids, timeout=20)
    assert statuses == dict.fromkeys(ids, "failed"), statuses
    for mid in ids:
        error = (await st.get(mid))["last_error"]
        assert "ambiguous" in error, error
    assert st.sim.parts_received == 0
    assert st.sim.binds >= 2  # unanswered enquire_links made it reconnect


# --------------------------------------------------------------------------- 3. no submit_sm_resp

async def test_no_submit_response_with_policy_fail(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"no_submit_response": True}, smpp=FAST,
                          sending={"ambiguous_policy": "fail"})
    ids, numbers = await send_all(st, "mute")
    statuses = await st.wait_terminal(ids, timeout=15)
    assert statuses == dict.fromkeys(ids, "failed"), statuses
    for mid in ids:
        error = (await st.get(mid))["last_error"]
        assert "ambiguous" in error and "no submit_sm_resp within 0.3s" in error, error
    # at most once: the SMSC did take each one, and none twice
    assert st.sim.duplicates() == {}
    for i, to in enumerate(numbers):
        assert st.sim.messages(msisdn(to)) == [f"mute {i}"]
    assert st.sim.binds == 1  # enquire_links were answered: the link stayed up


async def test_no_submit_response_first_five_with_policy_resend(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"no_submit_response": True, "no_submit_response_count": 5},
                          smpp=FAST, sending={"ambiguous_policy": "resend"})
    ids, numbers = await send_all(st, "mute")
    statuses = await st.wait_terminal(ids, timeout=15)
    assert statuses == dict.fromkeys(ids, "delivered"), statuses
    ambiguous = await ambiguous_ids(st, ids)
    assert 1 <= len(ambiguous) <= 5
    doubled = doubled_numbers(st, numbers)
    by_number = dict(zip(numbers, ids, strict=True))
    assert {by_number[to] for to in doubled} <= ambiguous  # only ambiguous ones are doubled
    for i, to in enumerate(numbers):
        got = st.sim.messages(msisdn(to))
        assert got and set(got) == {f"mute {i}"}
    for mid in ids:
        delivered = [e for e in await events_of(st, mid) if e["status"] == "delivered"]
        assert len(delivered) == 1


# --------------------------------------------------------------------------- 4. generic_nack

async def test_generic_nack_on_the_first_submits_is_retried(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"nack_submits": 5})
    ids, numbers = await send_all(st, "nack")
    await assert_delivered_once(st, "nack", ids, numbers)
    assert st.sim.stats()["nacked"] == 5


# --------------------------------------------------------------------------- 5. error status

async def test_submit_error_on_the_first_submits_is_retried(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"submit_error_status": consts.SMPP_ESME_RSUBMITFAIL,
                               "submit_error_count": 5})
    ids, numbers = await send_all(st, "subfail")
    await assert_delivered_once(st, "subfail", ids, numbers)
    assert st.sim.stats()["errored"] == 5


async def test_submit_error_forever_fails_with_the_reason(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"submit_error_status": consts.SMPP_ESME_RSUBMITFAIL},
                          sending={"max_attempts": 2, "stale_queued_s": 0.2,
                                   "sweep_interval_s": 0.3})
    ids, _ = await send_all(st, "subfail", n=5)
    statuses = await st.wait_terminal(ids, timeout=20)
    assert statuses == dict.fromkeys(ids, "failed"), statuses
    for mid in ids:
        error = (await st.get(mid))["last_error"]
        assert "ESME_RSUBMITFAIL" in error and "gave up" in error, error
    assert st.sim.parts_received == 0


# --------------------------------------------------------------------------- 6. unbind on submit

async def test_unbind_on_submit_reconnects_and_delivers(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"unbind_on_submit": 5})
    ids, numbers = await send_all(st, "unbind", n=15)
    await assert_delivered_once(st, "unbind", ids, numbers)
    assert st.sim.binds >= 2


# --------------------------------------------------------------------------- 7. bind refused

async def test_refused_binds_are_retried_with_backoff(make_stack: MakeStack) -> None:
    started = time.monotonic()
    st = await make_stack(sim={"refuse_binds": 3},
                          smpp={"reconnect_min_s": 0.05, "reconnect_max_s": 0.4})
    # three refusals, then a bind, with a growing pause between tries (0.05, 0.1, 0.2 s
    # before jitter)
    assert time.monotonic() - started >= 0.1
    assert st.gw.client is not None and st.gw.client.binds[0].reconnects == 3
    assert st.sim.stats()["binds_refused"] == 3 and st.sim.binds == 1
    ids, numbers = await send_all(st, "refused")
    await assert_delivered_once(st, "refused", ids, numbers)


# --------------------------------------------------------------------------- 8. throttling

async def test_throttling(make_stack: MakeStack) -> None:
    # 5/s with a 5-token bucket: 25 messages cannot all pass in the first second
    st = await make_stack(sim={"tps_limit": 5}, smpp={"throttle_pause_s": 0.2})
    ids, numbers = await send_all(st, "tps", n=25)
    await assert_delivered_once(st, "tps", ids, numbers, timeout=30)
    assert st.sim.submits_throttled > 0


# --------------------------------------------------------------------------- 9. drop after N PDUs

async def test_drop_after_pdus_of_any_kind(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"drop_after_pdus": 6}, smpp={"window": 10})
    ids, numbers = await send_all(st, "pdus", n=20)
    await assert_delivered_once(st, "pdus", ids, numbers)
    assert st.sim.binds >= 4


# --------------------------------------------------------------------------- 10. garbage

async def test_garbage_after_bind_reconnects_and_delivers(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"garbage_after_bind": GARBAGE, "garbage_count": 2})
    ids, numbers = await send_all(st, "garbage")
    await assert_delivered_once(st, "garbage", ids, numbers)
    assert st.sim.stats()["garbage_sent"] == 2
    assert st.sim.binds >= 3  # two connections killed by the garbage, then a clean one


async def test_harmless_garbage_after_every_bind_keeps_the_link(make_stack: MakeStack) -> None:
    unknown_and_stray = GARBAGE[:32]  # an unknown command_id and an unasked generic_nack
    st = await make_stack(sim={"garbage_after_bind": unknown_and_stray})
    ids, numbers = await send_all(st, "garbage")
    await assert_delivered_once(st, "garbage", ids, numbers)
    assert st.sim.binds == 1


# --------------------------------------------------------------------------- 11. slow, shuffled

async def test_slow_jittered_shuffled_responses(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"resp_delay_s": 0.05, "resp_jitter_s": 0.2,
                               "shuffle_responses": True, "seed": 11},
                          smpp={"window": 10})
    ids, numbers = await send_all(st, "shuffle", n=20)
    await assert_delivered_once(st, "shuffle", ids, numbers)
    smsc_ids = []
    for mid, to in zip(ids, numbers, strict=True):
        smsc_id = (await st.get(mid))["smsc_message_id"]
        # the id recorded is the one the SMSC gave to this very message
        assert smsc_id and st.sim.message_ids(msisdn(to)) == [smsc_id]
        smsc_ids.append(smsc_id)
    assert len(set(smsc_ids)) == len(ids)


# --------------------------------------------------------------------------- 12. early receipts

async def test_receipt_before_submit_sm_resp(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"receipt_before_resp": True})
    ids, numbers = await send_all(st, "early")
    await assert_delivered_once(st, "early", ids, numbers)
    assert st.sim.receipts_sent == len(ids)


async def test_receipt_before_submit_sm_resp_on_tx_rx(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"receipt_before_resp": True}, smpp={"bind_mode": "tx+rx"})
    ids, numbers = await send_all(st, "early")
    await assert_delivered_once(st, "early", ids, numbers)


# --------------------------------------------------------------------------- 13. multipart MO

async def test_multipart_mo_out_of_order(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"shuffle_mo_parts": True, "seed": 2})
    [handset] = _numbers(1)
    text = " ".join(["Toi muon doi goi cuoc sang goi tiet kiem hang thang, xin cam on."] * 6)
    parts = await st.sim.inject_mo(source=msisdn(handset), destination="8088", text=text)
    assert parts >= 3
    deadline = time.monotonic() + 10
    while st.sim.mo_acked < parts and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert st.sim.mo_acked == parts  # every part acknowledged, none refused
    assert st.gw.pool is not None  # and the gateway put the parts back in order
    rows = await st.gw.pool.fetch(
        "SELECT text, complete, parts_received FROM inbound_messages"
        " WHERE source = $1 AND destination = '8088'", msisdn(handset))
    assert [(r["text"], r["complete"], r["parts_received"]) for r in rows] == [
        (text, True, parts)], rows
    ids, numbers = await send_all(st, "after mo", n=5)  # and the link still works
    await assert_delivered_once(st, "after mo", ids, numbers)


# --------------------------------------------------------------------------- 14. dup receipts

async def test_duplicate_receipts_give_one_delivered_event(make_stack: MakeStack) -> None:
    st = await make_stack(sim={"duplicate_receipts": True})
    ids, numbers = await send_all(st, "dup")
    await assert_delivered_once(st, "dup", ids, numbers)
    deadline = time.monotonic() + 5
    while st.sim.receipts_acked < 2 * len(ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert st.sim.receipts_sent == st.sim.receipts_acked == 2 * len(ids)
    await asyncio.sleep(0.2)  # a late second copy must not add an event either
    for mid in ids:
        delivered = [e for e in await events_of(st, mid) if e["status"] == "delivered"]
        assert len(delivered) == 1


# --------------------------------------------------------------------------- the command line

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_cli_help_lists_every_personality_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "smsc-sim", "--help"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    for flag in ("--personality", "--black-hole", "--no-submit-response", "--nack-submits",
                 "--submit-error", "--unbind-on-submit", "--refuse-binds", "--drop-after-pdus",
                 "--garbage", "--shuffle-responses", "--resp-delay", "--resp-jitter",
                 "--receipt-before-resp", "--duplicate-receipts", "--shuffle-mo-parts",
                 "--tps"):
        assert flag in out, flag
    squeezed = "".join(out.split())  # argparse may wrap a name at one of its hyphens
    for name in PERSONALITIES:
        assert name in squeezed, name


def test_cli_rejects_a_bad_submit_error() -> None:
    run = subprocess.run([sys.executable, "-m", "gateway", "smsc-sim", "--submit-error",
                          "ESME_RNOPE", "--port", str(_free_port())],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "ESME_RNOPE" in run.stderr


@contextlib.contextmanager
def _simulator_process(*args: str) -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "smsc-sim", "--port", str(port),
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + 15
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _request(session: Session, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter, command: str, **params: Any) -> Response:
    writer.write(session.send(Request(command=command, params=params)))
    await writer.drain()
    while True:
        for event in session.events():
            if isinstance(event, Response):
                return event
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "the simulator closed the connection"
        session.receive_data(data)


async def test_cli_personality_flags_take_effect() -> None:
    with _simulator_process("--personality", "nack-submits", "--refuse-binds", "1",
                            "--personality", "duplicate-receipts") as port:
        reader, writer = await _connect(port)
        try:
            session = Session(Role.ESME)
            creds = {"system_id": "smsgw", "password": "secret"}
            refused = await _request(session, reader, writer, "bind_transceiver", **creds)
            assert refused.status == consts.SMPP_ESME_RBINDFAIL
            assert (await _request(session, reader, writer, "bind_transceiver", **creds)).ok
            nack = await _request(session, reader, writer, "submit_sm", source_addr="8088",
                                  destination_addr="84901234567", short_message=b"hi")
            assert nack.pdu.command == "generic_nack"
            assert nack.status == consts.SMPP_ESME_RSYSERR
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

