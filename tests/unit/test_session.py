"""Sans-IO SMPP session: an ESME session and an SMSC session joined in memory.

No event loop, no sockets: bytes returned by one side's ``send`` are fed to the other side's
``receive_data`` and the resulting events are inspected.
"""

from __future__ import annotations

import random
import struct

import pytest
from smpplib import consts

from gateway.smpp import codec
from gateway.smpp.session import (
    BadPdu,
    BindMode,
    Event,
    InvalidState,
    LocalProtocolError,
    Received,
    Reply,
    Request,
    Response,
    Role,
    Session,
    State,
    StrayResponse,
)

EVENT_TYPES = (Received, Response, InvalidState, BadPdu, StrayResponse)

SUBMIT_PARAMS = {
    "source_addr_ton": 5,
    "source_addr_npi": 0,
    "source_addr": "ACME",
    "dest_addr_ton": 1,
    "dest_addr_npi": 1,
    "destination_addr": "447700900123",
    "registered_delivery": 1,
    "short_message": b"hello",
}

DELIVER_PARAMS = {
    "source_addr_ton": 1,
    "source_addr_npi": 1,
    "source_addr": "447700900123",
    "dest_addr_ton": 5,
    "dest_addr_npi": 0,
    "destination_addr": "ACME",
    "short_message": b"STOP please",
}

BOUND_STATE = {BindMode.TRX: State.BOUND_TRX, BindMode.TX: State.BOUND_TX,
               BindMode.RX: State.BOUND_RX}


# --------------------------------------------------------------------------- helpers

def deliver(data: bytes, dst: Session, *, now: float = 0.0) -> list[Event]:
    """Move ``data`` into ``dst`` and drain every event it produces."""
    dst.receive_data(data, now=now)
    return list(dst.events())


def one(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def request(src: Session, dst: Session, command: str, *, ref: object = None,
            now: float = 0.0, **params: object) -> Event:
    """``src`` sends a request; returns the single event ``dst`` sees."""
    data = src.send(Request(command=command, params=params, ref=ref), now=now)
    return one(deliver(data, dst, now=now))


def reply(src: Session, dst: Session, to: Received, *, status: int = 0, now: float = 0.0,
          **params: object) -> Event:
    """``src`` answers the request event ``to``; returns the single event ``dst`` sees."""
    data = src.send(Reply(command=to.reply_command, sequence=to.sequence, status=status,
                          params=params), now=now)
    return one(deliver(data, dst, now=now))


def bound_pair(mode: BindMode = BindMode.TRX, *, now: float = 0.0,
               first_sequence: int = 1) -> tuple[Session, Session]:
    esme = Session(Role.ESME, first_sequence=first_sequence)
    smsc = Session(Role.SMSC)
    got = request(esme, smsc, f"bind_{mode.value}", now=now, system_id="gw", password="pw")
    assert isinstance(got, Received)
    resp = reply(smsc, esme, got, now=now, system_id="SMSC")
    assert isinstance(resp, Response) and resp.ok
    assert esme.state is BOUND_STATE[mode]
    assert smsc.state is BOUND_STATE[mode]
    return esme, smsc


# --------------------------------------------------------------------------- binding

@pytest.mark.parametrize("mode", list(BindMode))
def test_bind_round_trip(mode: BindMode) -> None:
    esme, smsc = Session(Role.ESME), Session(Role.SMSC)
    assert esme.state is State.OPEN and smsc.state is State.OPEN

    got = request(esme, smsc, f"bind_{mode.value}", ref="bind", system_id="gw",
                  password="secret", system_type="cc")
    assert esme.state is State.BINDING
    assert smsc.state is State.BINDING
    assert isinstance(got, Received)
    assert got.command == f"bind_{mode.value}"
    assert got.reply_command == f"bind_{mode.value}_resp"
    assert got.pdu.params["system_id"] == "gw"
    assert got.pdu.params["password"] == "secret"
    assert got.pdu.params["system_type"] == "cc"

    resp = reply(smsc, esme, got, system_id="SMSC")
    assert isinstance(resp, Response)
    assert resp.ok
    assert resp.request == f"bind_{mode.value}"
    assert resp.ref == "bind"
    assert resp.pdu.params["system_id"] == "SMSC"
    assert esme.state is BOUND_STATE[mode]
    assert smsc.state is BOUND_STATE[mode]
    assert esme.bound and smsc.bound
    assert esme.can_submit is (mode is not BindMode.RX)
    assert not esme.outstanding


def test_failed_bind_returns_to_open() -> None:
    esme, smsc = Session(Role.ESME), Session(Role.SMSC)
    got = request(esme, smsc, "bind_transceiver", ref="b1", system_id="gw", password="bad")
    assert isinstance(got, Received)
    resp = reply(smsc, esme, got, status=consts.SMPP_ESME_RINVPASWD)
    assert isinstance(resp, Response)
    assert resp.ok is False
    assert resp.status == consts.SMPP_ESME_RINVPASWD == 0x0E
    assert resp.ref == "b1"
    assert esme.state is State.OPEN
    assert smsc.state is State.OPEN
    assert not esme.bound
    assert not esme.outstanding

    # a second attempt with the right password succeeds
    got = request(esme, smsc, "bind_transceiver", system_id="gw", password="good")
    assert isinstance(got, Received)
    resp = reply(smsc, esme, got)
    assert isinstance(resp, Response) and resp.ok
    assert esme.state is State.BOUND_TRX and smsc.state is State.BOUND_TRX


def test_submit_before_bind_is_local_protocol_error() -> None:
    esme = Session(Role.ESME)
    with pytest.raises(LocalProtocolError) as info:
        esme.send(Request(command="submit_sm", params=SUBMIT_PARAMS))
    assert "submit_sm" in str(info.value)
    assert "open" in str(info.value)
    assert esme.submits_outstanding == 0
    assert not esme.outstanding
    assert esme.state is State.OPEN


def test_submit_on_receiver_bind_is_local_protocol_error() -> None:
    esme, _ = bound_pair(BindMode.RX)
    with pytest.raises(LocalProtocolError, match="bound_rx"):
        esme.send(Request(command="submit_sm", params=SUBMIT_PARAMS))


def test_second_bind_is_local_protocol_error() -> None:
    esme, _ = bound_pair()
    with pytest.raises(LocalProtocolError):
        esme.send(Request(command="bind_transceiver", params={"system_id": "gw"}))


def test_request_and_reply_validate_their_command() -> None:
    with pytest.raises(LocalProtocolError):
        Request(command="submit_sm_resp")
    with pytest.raises(LocalProtocolError):
        Reply(command="submit_sm", sequence=1)


# --------------------------------------------------------------------------- submit window

def test_window_of_ten_answered_out_of_order() -> None:
    esme, smsc = bound_pair()
    received: list[Received] = []
    for i in range(10):
        got = request(esme, smsc, "submit_sm", ref=f"msg-{i}",
                      **{**SUBMIT_PARAMS, "short_message": f"text {i}".encode()})
        assert isinstance(got, Received)
        received.append(got)
    assert esme.submits_outstanding == 10
    assert len(esme.outstanding) == 10
    assert len({r.sequence for r in received}) == 10

    order = list(range(10))
    random.Random(1234).shuffle(order)
    assert order != sorted(order)
    for n, i in enumerate(order):
        got = received[i]
        assert got.pdu.params["short_message"] == f"text {i}".encode()
        resp = reply(smsc, esme, got, message_id=f"smsc-{got.sequence}")
        assert isinstance(resp, Response)
        assert resp.ok
        assert resp.request == "submit_sm"
        assert resp.ref == f"msg-{i}"
        assert resp.pdu.params["message_id"] == f"smsc-{got.sequence}"
        assert esme.submits_outstanding == 10 - n - 1
    assert esme.submits_outstanding == 0
    assert not esme.outstanding


def test_sequence_numbers_unique_and_wrap() -> None:
    esme, smsc = bound_pair(first_sequence=0x7FFFFFFE)
    seen: list[int] = []
    # the bind used 0x7FFFFFFE; the next requests go 0x7FFFFFFF, 1, 2, 3
    for _ in range(4):
        got = request(esme, smsc, "submit_sm", **SUBMIT_PARAMS)
        assert isinstance(got, Received)
        seen.append(got.sequence)
    assert seen == [0x7FFFFFFF, 1, 2, 3]
    assert len(set(seen)) == len(seen)
    assert set(esme.outstanding) == set(seen)


def test_next_sequence_wraps_to_one_never_zero() -> None:
    session = Session(Role.ESME, first_sequence=0x7FFFFFFE)
    assert [session.next_sequence() for _ in range(4)] == [0x7FFFFFFE, 0x7FFFFFFF, 1, 2]


# --------------------------------------------------------------------------- enquire_link

def test_enquire_link_from_esme() -> None:
    esme, smsc = bound_pair()
    got = request(esme, smsc, "enquire_link", ref="probe")
    assert isinstance(got, Received)
    assert got.command == "enquire_link"
    assert got.reply_command == "enquire_link_resp"
    resp = reply(smsc, esme, got)
    assert isinstance(resp, Response)
    assert resp.ok and resp.request == "enquire_link" and resp.ref == "probe"
    assert esme.state is State.BOUND_TRX and smsc.state is State.BOUND_TRX
    assert not esme.outstanding


def test_enquire_link_from_smsc() -> None:
    esme, smsc = bound_pair()
    got = request(smsc, esme, "enquire_link")
    assert isinstance(got, Received)
    assert got.reply_command == "enquire_link_resp"
    resp = reply(esme, smsc, got)
    assert isinstance(resp, Response) and resp.ok
    assert resp.pdu.command == "enquire_link_resp"
    assert not smsc.outstanding


def test_enquire_link_allowed_before_bind() -> None:
    esme, smsc = Session(Role.ESME), Session(Role.SMSC)
    got = request(esme, smsc, "enquire_link")
    assert isinstance(got, Received)
    resp = reply(smsc, esme, got)
    assert isinstance(resp, Response) and resp.ok
    assert esme.state is State.OPEN and smsc.state is State.OPEN


def test_enquire_link_due() -> None:
    esme, smsc = bound_pair(now=100.0)
    assert not esme.enquire_link_due(100.0, 30.0)
    assert not esme.enquire_link_due(129.9, 30.0)
    assert esme.enquire_link_due(130.0, 30.0)
    assert esme.enquire_link_due(500.0, 30.0)

    # probe is out: never due again until it is answered
    got = request(esme, smsc, "enquire_link", now=130.0)
    assert isinstance(got, Received)
    assert not esme.enquire_link_due(130.0, 30.0)
    assert not esme.enquire_link_due(1000.0, 30.0)

    resp = reply(smsc, esme, got, now=131.0)
    assert isinstance(resp, Response) and resp.ok
    assert not esme.enquire_link_due(160.0, 30.0)
    assert esme.enquire_link_due(161.0, 30.0)

    # traffic from the peer resets the clock
    got = request(smsc, esme, "enquire_link", now=150.0)
    assert isinstance(got, Received)
    assert not esme.enquire_link_due(161.0, 30.0)
    assert esme.enquire_link_due(180.0, 30.0)


def test_enquire_link_due_counts_our_own_sends() -> None:
    esme, smsc = bound_pair(now=0.0)
    got = request(esme, smsc, "submit_sm", now=20.0, **SUBMIT_PARAMS)
    assert isinstance(got, Received)
    assert not esme.enquire_link_due(40.0, 30.0)
    assert esme.enquire_link_due(50.0, 30.0)


def test_enquire_link_never_due_when_unbinding_or_closed() -> None:
    esme, smsc = bound_pair()
    request(esme, smsc, "unbind")
    assert esme.state is State.UNBINDING
    assert not esme.enquire_link_due(1e6, 30.0)
    esme.abandon()
    assert not esme.enquire_link_due(1e6, 30.0)


# --------------------------------------------------------------------------- timeouts

def test_timed_out_returns_late_requests() -> None:
    esme, smsc = bound_pair()
    received = []
    for i, t in enumerate((0.0, 5.0, 10.0)):
        got = request(esme, smsc, "submit_sm", ref=f"m{i}", now=t, **SUBMIT_PARAMS)
        assert isinstance(got, Received)
        received.append(got)
    probe = request(esme, smsc, "enquire_link", ref="probe", now=6.0)
    assert isinstance(probe, Received)
    assert esme.submits_outstanding == 3

    assert esme.timed_out(now=4.0, timeout=5.0) == []
    late = esme.timed_out(now=12.0, timeout=5.0)
    assert sorted(o.ref for _, o in late) == ["m0", "m1", "probe"]
    assert {s for s, _ in late} == {received[0].sequence, received[1].sequence,
                                    probe.sequence}
    assert all(o.sent_at in (0.0, 5.0, 6.0) for _, o in late)
    assert esme.submits_outstanding == 1
    assert set(esme.outstanding) == {received[2].sequence}

    # the late answer no longer matches anything
    stray = reply(smsc, esme, received[0], message_id="late")
    assert isinstance(stray, StrayResponse)
    assert esme.submits_outstanding == 1
    resp = reply(smsc, esme, received[2], message_id="ok")
    assert isinstance(resp, Response) and resp.ref == "m2"
    assert esme.submits_outstanding == 0


# --------------------------------------------------------------------------- unbind

def test_smsc_initiated_unbind() -> None:
    esme, smsc = bound_pair()
    got = request(smsc, esme, "unbind", ref="bye")
    assert smsc.state is State.UNBINDING
    assert isinstance(got, Received)
    assert got.command == "unbind"
    assert got.reply_command == "unbind_resp"
    assert esme.state is State.UNBINDING
    resp = reply(esme, smsc, got)
    assert esme.state is State.CLOSED
    assert isinstance(resp, Response) and resp.ok and resp.ref == "bye"
    assert smsc.state is State.CLOSED


def test_esme_initiated_unbind() -> None:
    esme, smsc = bound_pair(BindMode.TX)
    got = request(esme, smsc, "unbind")
    assert esme.state is State.UNBINDING
    assert smsc.state is State.UNBINDING
    assert isinstance(got, Received)
    resp = reply(smsc, esme, got)
    assert smsc.state is State.CLOSED
    assert isinstance(resp, Response) and resp.ok and resp.request == "unbind"
    assert esme.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        esme.send(Request(command="submit_sm", params=SUBMIT_PARAMS))


def test_outstanding_submit_answered_while_unbinding() -> None:
    esme, smsc = bound_pair()
    sub = request(esme, smsc, "submit_sm", ref="m", **SUBMIT_PARAMS)
    unb = request(esme, smsc, "unbind")
    assert isinstance(sub, Received) and isinstance(unb, Received)
    resp = reply(smsc, esme, sub, message_id="x")
    assert isinstance(resp, Response) and resp.ok and resp.ref == "m"
    assert esme.state is State.UNBINDING
    resp = reply(smsc, esme, unb)
    assert isinstance(resp, Response) and resp.ok
    assert esme.state is State.CLOSED


# --------------------------------------------------------------------------- deliver_sm

@pytest.mark.parametrize("mode", [BindMode.TRX, BindMode.RX])
def test_deliver_sm_from_smsc(mode: BindMode) -> None:
    esme, smsc = bound_pair(mode)
    got = request(smsc, esme, "deliver_sm", ref="mo-1", **DELIVER_PARAMS)
    assert isinstance(got, Received)
    assert got.command == "deliver_sm"
    assert got.reply_command == "deliver_sm_resp"
    params = got.pdu.params
    assert params["short_message"] == b"STOP please"
    assert isinstance(params["short_message"], bytes)
    assert params["source_addr"] == "447700900123"
    assert isinstance(params["source_addr"], str)
    assert params["destination_addr"] == "ACME"
    assert params["source_addr_ton"] == 1
    assert params["dest_addr_ton"] == 5
    resp = reply(esme, smsc, got)
    assert isinstance(resp, Response)
    assert resp.ok and resp.request == "deliver_sm" and resp.ref == "mo-1"
    assert resp.pdu.command == "deliver_sm_resp"
    assert esme.state is BOUND_STATE[mode]


def test_delivery_receipt_tlvs_reach_the_esme() -> None:
    esme, smsc = bound_pair()
    got = request(smsc, esme, "deliver_sm", esm_class=0x04,
                  short_message=b"id:abc123 stat:DELIVRD", source_addr="447700900123",
                  destination_addr="ACME", receipted_message_id="abc123", message_state=2)
    assert isinstance(got, Received)
    assert got.pdu.params["esm_class"] == 0x04
    assert got.pdu.params["receipted_message_id"] == "abc123"
    assert got.pdu.params["message_state"] == 2


def test_smsc_cannot_deliver_on_transmitter_bind() -> None:
    _, smsc = bound_pair(BindMode.TX)
    with pytest.raises(LocalProtocolError):
        smsc.send(Request(command="deliver_sm", params=DELIVER_PARAMS))


def _deliver_on_tx_bind() -> tuple[Session, Session, InvalidState]:
    esme, smsc = bound_pair(BindMode.TX)
    # the SMSC session would refuse to send it, so a misbehaving SMSC is simulated with raw bytes
    raw = codec.encode("deliver_sm", sequence=77, **DELIVER_PARAMS)
    ev = one(deliver(raw, esme))
    assert isinstance(ev, InvalidState)
    return esme, smsc, ev


def test_deliver_sm_on_transmitter_bind_is_invalid_state() -> None:
    esme, _, ev = _deliver_on_tx_bind()
    assert ev.pdu.command == "deliver_sm"
    assert ev.state is State.BOUND_TX
    assert ev.reply.command == "deliver_sm_resp"
    assert ev.reply.sequence == 77
    assert ev.reply.status == consts.SMPP_ESME_RINVBNDSTS == 0x04
    assert esme.state is State.BOUND_TX


def test_submit_sm_before_bind_is_invalid_state_at_smsc() -> None:
    smsc = Session(Role.SMSC)
    ev = one(deliver(codec.encode("submit_sm", sequence=5, **SUBMIT_PARAMS), smsc))
    assert isinstance(ev, InvalidState)
    assert ev.state is State.OPEN
    assert ev.reply.command == "submit_sm_resp"
    assert ev.reply.sequence == 5
    assert ev.reply.status == 0x04
    assert smsc.state is State.OPEN


def _invalid_state_cases() -> list[tuple[Session, InvalidState]]:
    esme, _, ev_esme = _deliver_on_tx_bind()
    smsc = Session(Role.SMSC)
    ev_smsc = one(deliver(codec.encode("submit_sm", sequence=5, **SUBMIT_PARAMS), smsc))
    assert isinstance(ev_smsc, InvalidState)
    return [(esme, ev_esme), (smsc, ev_smsc)]


@pytest.mark.parametrize("case", [0, 1], ids=["esme-deliver_sm-on-tx", "smsc-submit_sm-in-open"])
def test_invalid_state_reply_can_be_sent(case: int) -> None:
    """BUG (session.py): InvalidState.reply is documented as "answer ``reply``", but
    Session.send() runs it through TRANSITIONS, where e.g. (ESME, BOUND_TX, send,
    deliver_sm_resp) or (SMSC, OPEN, send, submit_sm_resp) is missing, so it raises
    LocalProtocolError and the peer never gets its ESME_RINVBNDSTS answer."""
    session, ev = _invalid_state_cases()[case]
    state = session.state
    try:
        data = session.send(ev.reply)
    except LocalProtocolError as exc:
        pytest.fail(f"session.send(InvalidState.reply) raised LocalProtocolError: {exc}")
    pdu = codec.decode(data)
    assert pdu.command == ev.reply.command
    assert pdu.sequence == ev.reply.sequence
    assert pdu.status == consts.SMPP_ESME_RINVBNDSTS
    assert session.state is state


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("command_id", [0x00000007, 0x00000008, 0x00000021, 0x12345678])
def test_unknown_command_is_non_fatal_bad_pdu(command_id: int) -> None:
    esme, smsc = bound_pair()
    raw = struct.pack(">LLLL", 20, command_id, 0, 4242) + b"abcd"
    ev = one(deliver(raw, smsc))
    assert isinstance(ev, BadPdu)
    assert ev.fatal is False
    assert ev.reply is not None
    assert ev.reply.command == "generic_nack"
    assert ev.reply.sequence == 4242
    assert ev.reply.status == consts.SMPP_ESME_RINVCMDID == 0x03
    assert smsc.state is State.BOUND_TRX
    # the nack is sendable and the ESME sees it as stray (4242 is not one of its requests)
    stray = one(deliver(smsc.send(ev.reply), esme))
    assert isinstance(stray, StrayResponse)
    assert stray.pdu.command == "generic_nack"
    assert stray.pdu.status == 0x03
    # the stream is still framed: the next PDU decodes
    got = request(esme, smsc, "enquire_link")
    assert isinstance(got, Received)


@pytest.mark.parametrize("length", [0, 15, 64 * 1024 + 1, 0xFFFFFFFF])
def test_absurd_command_length_is_fatal(length: int) -> None:
    _, smsc = bound_pair()
    raw = struct.pack(">LLLL", length, 0x15, 0, 9)
    ev = one(deliver(raw, smsc))
    assert isinstance(ev, BadPdu)
    assert ev.fatal is True
    assert smsc.state is State.CLOSED
    # nothing more comes out of a closed session
    assert deliver(codec.encode("enquire_link", sequence=10), smsc) == []


def test_command_length_limits_are_inclusive() -> None:
    smsc = Session(Role.SMSC)
    smsc.receive_data(struct.pack(">L", 64 * 1024))
    assert list(smsc.events()) == []
    assert smsc.state is State.OPEN
    smsc = Session(Role.SMSC)
    ev = one(deliver(codec.encode("enquire_link", sequence=3), smsc))
    assert isinstance(ev, Received)


def test_fatal_bad_pdu_reply_is_none_or_sendable() -> None:
    """BUG (session.py): next_event() moves to CLOSED *and* returns a fatal BadPdu whose
    ``reply`` is a generic_nack "to send"; but generic_nack is not allowed from CLOSED in
    TRANSITIONS, so Session.send(ev.reply) raises LocalProtocolError."""
    _, smsc = bound_pair()
    ev = one(deliver(struct.pack(">LLLL", 8, 0x15, 0, 9), smsc))
    assert isinstance(ev, BadPdu) and ev.fatal
    if ev.reply is None:
        return
    try:
        data = smsc.send(ev.reply)
    except LocalProtocolError as exc:
        pytest.fail(f"fatal BadPdu.reply cannot be sent: {exc}")
    assert codec.decode(data).command == "generic_nack"


def test_pdu_fed_one_byte_at_a_time() -> None:
    esme, smsc = bound_pair()
    data = esme.send(Request(command="submit_sm", params=SUBMIT_PARAMS, ref="r"))
    events: list[Event] = []
    for i in range(len(data)):
        smsc.receive_data(data[i:i + 1], now=float(i))
        events.extend(smsc.events())
        if i < len(data) - 1:
            assert events == []
    got = one(events)
    assert isinstance(got, Received)
    assert got.pdu.params["short_message"] == b"hello"
    assert got.pdu.params["destination_addr"] == "447700900123"
    assert smsc.last_received_at == float(len(data) - 1)


def test_two_pdus_in_one_chunk() -> None:
    esme, smsc = bound_pair()
    a = esme.send(Request(command="submit_sm", params=SUBMIT_PARAMS, ref="a"))
    b = esme.send(Request(command="enquire_link", ref="b"))
    events = deliver(a + b, smsc)
    assert [type(e) for e in events] == [Received, Received]
    assert [e.command for e in events if isinstance(e, Received)] == ["submit_sm",
                                                                       "enquire_link"]

    # one and a half PDUs, then the rest
    c = esme.send(Request(command="submit_sm", params=SUBMIT_PARAMS))
    d = esme.send(Request(command="submit_sm", params=SUBMIT_PARAMS))
    first = deliver(c + d[:7], smsc)
    assert len(first) == 1
    second = deliver(d[7:], smsc)
    assert len(second) == 1


def test_next_event_returns_need_data() -> None:
    from gateway.smpp.session import NEED_DATA

    smsc = Session(Role.SMSC)
    assert smsc.next_event() is NEED_DATA
    smsc.receive_data(b"\x00\x00")
    assert smsc.next_event() is NEED_DATA


def test_response_with_unknown_sequence_is_stray() -> None:
    esme, _ = bound_pair()
    ev = one(deliver(codec.encode("submit_sm_resp", sequence=999, message_id="x"), esme))
    assert isinstance(ev, StrayResponse)
    assert ev.pdu.sequence == 999
    assert esme.state is State.BOUND_TRX


def test_response_of_wrong_kind_is_stray() -> None:
    esme, smsc = bound_pair()
    got = request(esme, smsc, "submit_sm", **SUBMIT_PARAMS)
    assert isinstance(got, Received)
    ev = one(deliver(codec.encode("enquire_link_resp", sequence=got.sequence), esme))
    assert isinstance(ev, StrayResponse)
    assert esme.submits_outstanding == 1


def test_generic_nack_answers_outstanding_submit() -> None:
    esme, smsc = bound_pair()
    got = request(esme, smsc, "submit_sm", ref="m1", **SUBMIT_PARAMS)
    assert isinstance(got, Received)
    assert esme.submits_outstanding == 1
    data = smsc.send(Reply(command="generic_nack", sequence=got.sequence,
                           status=consts.SMPP_ESME_RSYSERR))
    resp = one(deliver(data, esme))
    assert isinstance(resp, Response)
    assert resp.ok is False
    assert resp.request == "submit_sm"
    assert resp.ref == "m1"
    assert resp.pdu.command == "generic_nack"
    assert esme.submits_outstanding == 0
    assert esme.state is State.BOUND_TRX


def test_generic_nack_with_status_zero_is_still_not_ok() -> None:
    esme, smsc = bound_pair()
    got = request(esme, smsc, "submit_sm", **SUBMIT_PARAMS)
    assert isinstance(got, Received)
    data = smsc.send(Reply(command="generic_nack", sequence=got.sequence))
    resp = one(deliver(data, esme))
    assert isinstance(resp, Response) and resp.ok is False


def test_throttled_submit_response() -> None:
    esme, smsc = bound_pair()
    got = request(esme, smsc, "submit_sm", ref="t", **SUBMIT_PARAMS)
    assert isinstance(got, Received)
    resp = reply(smsc, esme, got, status=consts.SMPP_ESME_RTHROTTLED)
    assert isinstance(resp, Response)
    assert resp.ok is False and resp.status == 0x58 and resp.ref == "t"
    assert codec.status_name(resp.status) == "ESME_RTHROTTLED"
    assert esme.state is State.BOUND_TRX
    assert esme.submits_outstanding == 0


def test_abandon_returns_outstanding() -> None:
    esme, smsc = bound_pair()
    for i in range(3):
        request(esme, smsc, "submit_sm", ref=f"m{i}", now=float(i), **SUBMIT_PARAMS)
    request(esme, smsc, "enquire_link", ref="probe")
    lost = esme.abandon()
    assert sorted(str(o.ref) for o in lost) == ["m0", "m1", "m2", "probe"]
    assert {o.command for o in lost} == {"submit_sm", "enquire_link"}
    assert esme.submits_outstanding == 0
    assert not esme.outstanding
    assert esme.state is State.CLOSED
    assert esme.abandon() == []
    with pytest.raises(LocalProtocolError):
        esme.send(Request(command="enquire_link"))


def _submit_body(**overrides: bytes) -> bytes:
    """A hand-built submit_sm mandatory body, field by field."""
    fields = {
        "service_type": b"\x00", "src_ton_npi": b"\x01\x01", "source_addr": b"123\x00",
        "dst_ton_npi": b"\x01\x01", "destination_addr": b"456\x00",
        "esm_prio": b"\x00\x00\x00", "sched": b"\x00", "validity": b"\x00",
        "flags": b"\x00\x00\x00\x00", "sm": b"\x02hi",
    }
    fields.update(overrides)
    return b"".join(fields.values())


def _frame(command_id: int, body: bytes, sequence: int = 31) -> bytes:
    return struct.pack(">LLLL", 16 + len(body), command_id, 0, sequence) + body


MALFORMED_SUBMITS = {
    "empty-body": b"",
    "no-nul-at-all": b"ABCDEFGHIJKLMNOP",
    "nul-missing-in-destination": b"\x00\x01\x01123\x00\x01\x01456",
    "truncated-after-addresses": _submit_body()[:14],
    "truncated-before-sm-length": _submit_body(sm=b""),
    "sm-length-past-end": _submit_body(sm=b"\xfehi"),
    "sm-length-one-past-end": _submit_body(sm=b"\x03hi"),
    "garbage-tlv": _submit_body() + b"\x04",
    "int-tlv-too-short": _submit_body() + b"\x02\x0c\x00\x02\x01",
}


@pytest.mark.parametrize("body", list(MALFORMED_SUBMITS.values()), ids=list(MALFORMED_SUBMITS))
@pytest.mark.parametrize("command_id", [0x04, 0x05], ids=["submit_sm", "deliver_sm"])
def test_malformed_submit_body_is_non_fatal_bad_pdu(body: bytes, command_id: int) -> None:
    esme, smsc = bound_pair()
    target = smsc if command_id == 0x04 else esme
    ev = one(deliver(_frame(command_id, body, sequence=31), target))
    assert isinstance(ev, BadPdu), ev
    assert ev.fatal is False
    assert ev.reply is not None
    assert ev.reply.command == "generic_nack"
    assert ev.reply.sequence == 31
    assert ev.reply.status != 0
    assert target.state is State.BOUND_TRX
    # the nack is sendable and the stream stays usable
    target.send(ev.reply)
    peer = esme if target is smsc else smsc
    assert isinstance(request(peer, target, "enquire_link"), Received)


def test_malformed_bind_body_never_raises() -> None:
    smsc = Session(Role.SMSC)
    for body in (b"", b"abc", b"\x00", b"sys\x00pw", b"\xff" * 40):
        for ev in deliver(_frame(0x09, body), smsc):
            assert isinstance(ev, EVENT_TYPES)
        smsc = Session(Role.SMSC)


# --------------------------------------------------------------------------- fuzz

def _valid_pdus() -> list[bytes]:
    out = [
        codec.encode("submit_sm", sequence=11, **SUBMIT_PARAMS),
        codec.encode("deliver_sm", sequence=12, **DELIVER_PARAMS),
        codec.encode("deliver_sm", sequence=13, source_addr="1", destination_addr="2",
                     esm_class=4, receipted_message_id="abc", message_state=2,
                     short_message=b"id:abc"),
        codec.encode("submit_sm", sequence=14, destination_addr="3",
                     message_payload=b"x" * 300, sar_msg_ref_num=7),
        codec.encode("submit_sm_resp", sequence=1, message_id="m-1"),
        codec.encode("deliver_sm_resp", sequence=2),
        codec.encode("enquire_link", sequence=15),
        codec.encode("enquire_link_resp", sequence=1),
        codec.encode("unbind", sequence=16),
        codec.encode("unbind_resp", sequence=1),
        codec.encode("generic_nack", sequence=1, status=3),
        codec.encode("bind_transceiver", sequence=17, system_id="gw", password="pw"),
        codec.encode("bind_transceiver_resp", sequence=1, system_id="SMSC"),
        codec.encode("data_sm", sequence=18, source_addr="1", destination_addr="2",
                     message_payload=b"payload"),
        codec.encode("query_sm", sequence=19, message_id="abc", source_addr="1"),
        codec.encode("alert_notification", sequence=20, source_addr="1", esme_addr="2"),
    ]
    return out


def _mutate(rng: random.Random, pdu: bytes) -> bytes:
    data = bytearray(pdu)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and data:  # flip a byte in the body (keeps framing)
            i = rng.randrange(16, len(data)) if len(data) > 16 else rng.randrange(len(data))
            data[i] = rng.randrange(256)
        elif op == 1 and len(data) > 16:  # truncate the body, fix the length
            data = data[:rng.randrange(16, len(data))]
            data[0:4] = struct.pack(">L", len(data))
        elif op == 2:  # append junk, fix the length
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
            data[0:4] = struct.pack(">L", len(data))
        elif op == 3:  # any byte anywhere, header included
            data[rng.randrange(len(data))] = rng.randrange(256)
        else:  # swap in another command id
            data[4:8] = struct.pack(">L", rng.choice(sorted(codec.COMMAND_IDS.values())))
    return bytes(data)


def _feed_and_check(session: Session, data: bytes, rng: random.Random) -> None:
    """Feed ``data`` in random chunks; only events may come out, never exceptions."""
    pos = 0
    while pos < len(data):
        step = rng.randint(1, max(1, len(data) - pos))
        session.receive_data(data[pos:pos + step], now=1.0)
        pos += step
        for ev in session.events():
            assert isinstance(ev, EVENT_TYPES)
            if isinstance(ev, BadPdu):
                if ev.fatal:
                    assert session.state is State.CLOSED
                else:
                    assert ev.reply is not None and ev.reply.command == "generic_nack"
                    assert session.state is not State.CLOSED
                    session.send(ev.reply)
            elif isinstance(ev, Received):
                assert isinstance(ev.reply_command, str)
            elif isinstance(ev, InvalidState):
                assert ev.reply.status == consts.SMPP_ESME_RINVBNDSTS


def _fuzz_targets() -> list[Session]:
    esme, smsc = bound_pair()
    # give both sides something outstanding so random responses can match
    request(esme, smsc, "submit_sm", **SUBMIT_PARAMS)
    request(smsc, esme, "deliver_sm", **DELIVER_PARAMS)
    return [esme, smsc, Session(Role.SMSC), Session(Role.ESME)]


def test_fuzz_random_bytes_never_raise() -> None:
    rng = random.Random(20240601)
    ids = [*sorted(codec.COMMAND_IDS.values()), 0x12345678, 0x80000007]
    for n in range(2000):
        if n % 2:
            # raw noise: framing usually fails fatally
            blob = rng.randbytes(rng.randrange(0, 80))
        else:
            # a plausible header around a random body, so the decoders get exercised
            body = rng.randbytes(rng.randrange(0, 80))
            blob = struct.pack(">LLLL", 16 + len(body), rng.choice(ids),
                               rng.choice((0, 0, 1, 0x58)), rng.randrange(1, 4)) + body
            blob += rng.randbytes(rng.randrange(0, 3))
        for session in _fuzz_targets():
            _feed_and_check(session, blob, rng)


def test_fuzz_mutated_valid_pdus_never_raise() -> None:
    rng = random.Random(8675309)
    valid = _valid_pdus()
    for pdu in valid:  # the originals themselves are fine
        assert codec.decode(pdu).sequence > 0
    for _ in range(2000):
        blob = b"".join(_mutate(rng, rng.choice(valid)) for _ in range(rng.randint(1, 3)))
        for session in _fuzz_targets():
            _feed_and_check(session, blob, rng)


def test_bad_pdu_kinds_tell_the_transport_what_to_do() -> None:
    esme, _ = bound_pair()
    unknown = struct.pack(">LLLL", 16, 0x00000099, 0, 5)
    [ev] = deliver(unknown, esme)
    assert isinstance(ev, BadPdu) and ev.kind == "unknown_command" and not ev.fatal
    truncated = struct.pack(">LLLL", 20, 0x00000005, 0, 6) + b"\x01\x02\x03\x04"
    [ev] = deliver(truncated, esme)
    assert isinstance(ev, BadPdu) and ev.kind == "malformed" and ev.reply is not None
    assert ev.reply.sequence == 6
    [ev] = deliver(struct.pack(">L", 8) + b"\x00" * 12, esme)
    assert isinstance(ev, BadPdu) and ev.kind == "framing" and ev.fatal and ev.reply is None
