"""SMPP codec: the hand-written fast path is byte-identical to smpplib, and decode round-trips."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from smpplib import consts, smpp

from gateway.smpp import codec
from gateway.smpp.codec import Pdu, PduError

N_CASES = 400

DIGITS = "0123456789"
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 -_."
LATIN1 = "".join(chr(c) for c in range(0x20, 0x100) if c != 0x7F)

STRING_FIELDS = ("service_type", "source_addr", "destination_addr", "schedule_delivery_time",
                 "validity_period")
INT_FIELDS = ("source_addr_ton", "source_addr_npi", "dest_addr_ton", "dest_addr_npi", "esm_class",
              "protocol_id", "priority_flag", "registered_delivery", "replace_if_present_flag",
              "data_coding", "sm_default_msg_id")


# --------------------------------------------------------------------------- generators

def _address(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # international MSISDN
        return "".join(rng.choice(DIGITS) for _ in range(rng.randint(8, 15)))
    if kind == 1:  # alphanumeric sender id
        return "".join(rng.choice(ALNUM) for _ in range(rng.randint(1, 11)))
    if kind == 2:  # anything from empty to the 20-octet maximum
        return "".join(rng.choice(DIGITS) for _ in range(rng.randint(0, 20)))
    return "".join(rng.choice(LATIN1) for _ in range(rng.randint(1, 20)))


def _smpp_time(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return ""
    if kind == 1:
        return "000001000000000R"
    if kind == 2:  # relative: YYMMDDhhmmss000R
        return (f"{rng.randrange(2):02d}{rng.randrange(12):02d}{rng.randrange(31):02d}"
                f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}000R")
    # absolute: YYMMDDhhmmsstnn+
    return (f"{rng.randrange(100):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
            f"{rng.randrange(10)}{rng.randrange(49):02d}{rng.choice('+-')}")


def _submit_params(rng: random.Random) -> dict[str, Any]:
    """A random mandatory-only submit_sm/deliver_sm parameter set (some fields left out)."""
    params: dict[str, Any] = {
        "service_type": rng.choice(["", "CMT", "WAP", "USSD", "VMN"]),
        "source_addr_ton": rng.choice([0, 1, 2, 5, 6]),
        "source_addr_npi": rng.choice([0, 1, 9, 18]),
        "source_addr": _address(rng),
        "dest_addr_ton": rng.choice([0, 1, 2, 5]),
        "dest_addr_npi": rng.choice([0, 1, 9]),
        "destination_addr": _address(rng),
        "esm_class": rng.choice([0, 0x40]),
        "protocol_id": rng.choice([0, 0, 0x7F]),
        "priority_flag": rng.choice([0, 1, 3]),
        "schedule_delivery_time": _smpp_time(rng),
        "validity_period": _smpp_time(rng),
        "registered_delivery": rng.choice([0, 1]),
        "replace_if_present_flag": rng.choice([0, 1]),
        "data_coding": rng.choice([0, 8]),
        "sm_default_msg_id": rng.choice([0, 0, 7]),
        "short_message": rng.randbytes(rng.randint(0, 254)),
    }
    # leave some fields out entirely: both paths must default them the same way
    for name in list(params):
        if rng.random() < 0.15:
            del params[name]
    return params


def _message_id(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"{rng.getrandbits(64):016x}"
    if kind == 1:
        return str(rng.randrange(10**12))
    return "".join(rng.choice(ALNUM) for _ in range(rng.randint(0, 64)))


def _status(rng: random.Random) -> int:
    return rng.choice([0, 0, 0, 0x01, 0x03, 0x08, 0x0A, 0x0B, 0x45, 0x58, 0x61, 0xFF])


def _sequence(rng: random.Random) -> int:
    return rng.choice([1, 2, 0x7FFFFFFF, rng.randint(1, 0x7FFFFFFF)])


@pytest.fixture
def fast_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make ``codec.encode`` fail loudly if it falls back to smpplib; return the real slow path.

    Without this, ``encode == encode_slow`` would also hold if the fast path were bypassed.
    """
    slow = codec.encode_slow

    def boom(command: str, **kwargs: Any) -> bytes:
        raise AssertionError(f"encode() fell back to smpplib for {command}")

    monkeypatch.setattr(codec, "encode_slow", boom)
    return slow


# --------------------------------------------------------------------------- fast == slow

@pytest.mark.parametrize("command", ["submit_sm", "deliver_sm"])
def test_submit_fast_path_byte_identical(command: str, fast_only: Any) -> None:
    rng = random.Random(f"submit-{command}")
    for i in range(N_CASES):
        params = _submit_params(rng)
        seq = _sequence(rng)
        fast = codec.encode(command, sequence=seq, **params)
        slow = fast_only(command, sequence=seq, **params)
        assert fast == slow, f"case {i}: {params!r}\nfast={fast.hex()}\nslow={slow.hex()}"
        (length,) = struct.unpack_from(">L", fast)
        assert length == len(fast)


@pytest.mark.parametrize("command", ["submit_sm", "deliver_sm"])
def test_submit_boundary_lengths_byte_identical(command: str, fast_only: Any) -> None:
    longest = {
        "service_type": "A" * 5,
        "source_addr": "1" * 20,
        "destination_addr": "2" * 20,
        "schedule_delivery_time": "000001000000000R",
        "validity_period": "991231235959948+",
        "short_message": bytes(range(254)),
    }
    for params in ({}, longest, {"short_message": b""}, {"short_message": b"\x00"},
                   {"source_addr": "", "destination_addr": ""},
                   {f: 0xFF for f in INT_FIELDS}):
        fast = codec.encode(command, sequence=5, **params)
        assert fast == fast_only(command, sequence=5, **params), params


@pytest.mark.parametrize("command", ["submit_sm_resp", "deliver_sm_resp", "data_sm_resp"])
def test_id_resp_fast_path_byte_identical(command: str, fast_only: Any) -> None:
    rng = random.Random(f"resp-{command}")
    for _ in range(N_CASES):
        seq, status = _sequence(rng), _status(rng)
        params: dict[str, Any] = {}
        if rng.random() < 0.8:
            params["message_id"] = _message_id(rng)
        fast = codec.encode(command, sequence=seq, status=status, **params)
        slow = fast_only(command, sequence=seq, status=status, **params)
        assert fast == slow, (params, seq, status)


@pytest.mark.parametrize("command", ["enquire_link", "enquire_link_resp", "unbind",
                                     "unbind_resp", "generic_nack"])
def test_empty_pdus_byte_identical(command: str, fast_only: Any) -> None:
    rng = random.Random(f"empty-{command}")
    for _ in range(200):
        seq, status = _sequence(rng), _status(rng)
        fast = codec.encode(command, sequence=seq, status=status)
        assert fast == fast_only(command, sequence=seq, status=status)
        assert len(fast) == 16
        assert struct.unpack(">LLLL", fast) == (16, codec.COMMAND_IDS[command], status, seq)


def test_generic_nack_carries_status() -> None:
    raw = codec.encode("generic_nack", sequence=77, status=consts.SMPP_ESME_RINVCMDID)
    assert raw == struct.pack(">LLLL", 16, 0x80000000, 0x03, 77)
    pdu = codec.decode(raw)
    assert pdu.command == "generic_nack" and pdu.status == 3 and pdu.sequence == 77
    assert pdu.is_response


def test_submit_sm_resp_known_bytes() -> None:
    raw = codec.encode("submit_sm_resp", sequence=2, message_id="abc")
    assert raw == bytes.fromhex("00000014" "80000004" "00000000" "00000002") + b"abc\x00"


def test_submit_sm_known_bytes() -> None:
    raw = codec.encode("submit_sm", sequence=1, source_addr_ton=5, source_addr="ACME",
                       dest_addr_ton=1, dest_addr_npi=1, destination_addr="4477",
                       registered_delivery=1, short_message=b"hi")
    body = (b"\x00" + b"\x05\x00" + b"ACME\x00" + b"\x01\x01" + b"4477\x00"
            + b"\x00\x00\x00" + b"\x00" + b"\x00" + b"\x01\x00\x00\x00" + b"\x02hi")
    assert raw == struct.pack(">LLLL", 16 + len(body), 4, 0, 1) + body


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("command", ["submit_sm", "deliver_sm"])
def test_submit_round_trip(command: str) -> None:
    rng = random.Random(f"rt-{command}")
    for _ in range(N_CASES):
        params = _submit_params(rng)
        seq, status = _sequence(rng), rng.choice([0, 0, 0x45])
        pdu = codec.decode(codec.encode(command, sequence=seq, status=status, **params))
        assert pdu.command == command
        assert pdu.command_id == codec.COMMAND_IDS[command]
        assert pdu.sequence == seq and pdu.status == status
        assert not pdu.is_response
        for name in STRING_FIELDS:
            assert isinstance(pdu.params[name], str)
            assert pdu.params[name] == params.get(name, "")
            assert pdu.text(name) == params.get(name, "")
        for name in INT_FIELDS:
            assert pdu.params[name] == params.get(name, 0)
        sm = params.get("short_message", b"")
        assert isinstance(pdu.params["short_message"], bytes)
        assert pdu.params["short_message"] == sm
        assert pdu.params["sm_length"] == len(sm)
        assert pdu.get("message_payload") is None


@pytest.mark.parametrize("command", ["submit_sm_resp", "deliver_sm_resp", "data_sm_resp"])
def test_id_resp_round_trip(command: str) -> None:
    rng = random.Random(f"rt-{command}")
    for _ in range(200):
        mid, seq, status = _message_id(rng), _sequence(rng), _status(rng)
        pdu = codec.decode(codec.encode(command, sequence=seq, status=status, message_id=mid))
        assert pdu == Pdu(command=command, sequence=seq, status=status,
                          params={"message_id": mid}, command_id=codec.COMMAND_IDS[command])
        assert pdu.is_response


def test_resp_without_body_decodes() -> None:
    # an error submit_sm_resp may omit the body entirely (command_length 16)
    raw = struct.pack(">LLLL", 16, 0x80000004, 0x58, 9)
    pdu = codec.decode(raw)
    assert pdu.command == "submit_sm_resp" and pdu.status == 0x58
    assert pdu.get("message_id") is None
    assert pdu.text("message_id", "none") == "none"


@pytest.mark.parametrize("command", ["enquire_link", "enquire_link_resp", "unbind",
                                     "unbind_resp"])
def test_empty_round_trip(command: str) -> None:
    pdu = codec.decode(codec.encode(command, sequence=123))
    assert pdu.command == command and pdu.sequence == 123 and pdu.params == {}
    assert pdu.is_response is command.endswith("_resp")


@pytest.mark.parametrize("command", ["bind_transmitter", "bind_receiver", "bind_transceiver"])
def test_bind_round_trip(command: str) -> None:
    raw = codec.encode(command, sequence=1, system_id="gateway", password="secret",
                       system_type="SMS", addr_ton=1, addr_npi=1, address_range="44")
    pdu = codec.decode(raw)
    assert pdu.command == command
    assert pdu.params["system_id"] == "gateway"
    assert pdu.params["password"] == "secret"
    assert pdu.params["system_type"] == "SMS"
    assert pdu.params["interface_version"] == 0x34
    assert pdu.params["address_range"] == "44"
    resp = codec.decode(codec.encode(f"{command}_resp", sequence=1, system_id="SMSC"))
    assert resp.command == f"{command}_resp" and resp.params["system_id"] == "SMSC"


def test_fast_decode_agrees_with_smpplib() -> None:
    """The hand-written submit/deliver decoder reads the same fields as smpplib's parser."""
    rng = random.Random("fast-decode")
    for _ in range(200):
        command = rng.choice(["submit_sm", "deliver_sm"])
        raw = codec.encode(command, sequence=_sequence(rng), **_submit_params(rng))
        ours = codec.decode(raw)
        ref = smpp.parse_pdu(raw, client=codec._SINK, allow_unknown_opt_params=True)
        for name in STRING_FIELDS:
            assert ours.params[name] == getattr(ref, name).decode("latin-1")
        for name in INT_FIELDS:
            assert ours.params[name] == getattr(ref, name)
        assert ours.params["short_message"] == (ref.short_message or b"")


# --------------------------------------------------------------------------- TLVs

def test_delivery_receipt_tlvs_decode() -> None:
    raw = codec.encode("deliver_sm", sequence=4, source_addr="447700900123",
                       destination_addr="ACME", esm_class=0x04,
                       short_message=b"id:0a1b2c stat:DELIVRD err:000",
                       receipted_message_id="0a1b2c", message_state=2)
    pdu = codec.decode(raw)
    assert pdu.params["esm_class"] == 0x04
    assert pdu.params["receipted_message_id"] == "0a1b2c"
    assert isinstance(pdu.params["receipted_message_id"], str)
    assert pdu.params["message_state"] == 2
    assert pdu.params["short_message"] == b"id:0a1b2c stat:DELIVRD err:000"
    assert pdu.params["source_addr"] == "447700900123"


def test_concatenation_and_payload_tlvs_decode() -> None:
    payload = bytes(range(256)) + b"tail"
    raw = codec.encode("submit_sm", sequence=4, destination_addr="447700900123",
                       data_coding=8, message_payload=payload, sar_msg_ref_num=0xBEEF,
                       sar_total_segments=3, sar_segment_seqnum=2)
    pdu = codec.decode(raw)
    assert pdu.params["message_payload"] == payload
    assert isinstance(pdu.params["message_payload"], bytes)
    assert pdu.params["sar_msg_ref_num"] == 0xBEEF
    assert pdu.params["sar_total_segments"] == 3
    assert pdu.params["sar_segment_seqnum"] == 2
    assert pdu.params["short_message"] == b""
    assert pdu.params["sm_length"] == 0
    assert pdu.params["data_coding"] == 8


def test_hand_built_tlvs_decode() -> None:
    body = (b"\x00" + b"\x01\x01" + b"4477\x00" + b"\x05\x00" + b"ACME\x00" + b"\x04\x00\x00"
            + b"\x00" + b"\x00" + b"\x00\x00\x00\x00" + b"\x00")
    tlvs = (struct.pack(">HH", 0x001E, 4) + b"m42\x00"
            + struct.pack(">HHB", 0x0427, 1, 5)
            + struct.pack(">HHH", 0x020C, 2, 0x1234)
            + struct.pack(">HH", 0x1403, 3) + b"???"  # vendor TLV: skipped
            + struct.pack(">HH", 0x0424, 5) + b"hello")
    raw = struct.pack(">LLLL", 16 + len(body) + len(tlvs), 5, 0, 8) + body + tlvs
    pdu = codec.decode(raw)
    assert pdu.params["receipted_message_id"] == "m42"
    assert pdu.params["message_state"] == 5
    assert pdu.params["sar_msg_ref_num"] == 0x1234
    assert pdu.params["message_payload"] == b"hello"
    assert pdu.params["source_addr"] == "4477"
    assert pdu.params["destination_addr"] == "ACME"


def test_tlvs_take_the_slow_path_and_match_smpplib() -> None:
    params = {"source_addr": "1", "destination_addr": "2", "receipted_message_id": "x",
              "message_state": 2, "short_message": b"id:x"}
    assert codec.encode("deliver_sm", sequence=3, **params) == codec.encode_slow(
        "deliver_sm", sequence=3, **params)


def test_malformed_tlv_is_non_fatal_pdu_error() -> None:
    good = codec.encode("deliver_sm", sequence=9, source_addr="1", destination_addr="2")
    raw = good + b"\x04\x27\x00"  # 3 bytes: not even a TLV header
    raw = struct.pack(">L", len(raw)) + raw[4:]
    with pytest.raises(PduError) as info:
        codec.decode(raw)
    assert info.value.fatal is False
    assert info.value.sequence == 9
    assert info.value.status == consts.SMPP_ESME_RINVOPTPARSTREAM


def test_tlv_length_running_past_the_pdu_is_rejected() -> None:
    """BUG (codec.py): a TLV whose length field runs past the end of the PDU is accepted.

    smpplib's parse_optional_params slices ``data[pos:pos + length]`` without checking, so a
    deliver_sm whose message_payload says 10 octets but carries 6 decodes "successfully" with a
    truncated payload (and the session answers ESME_ROK). The mandatory part is checked
    (sm_length past the end → PduError); the TLV part should be too.
    """
    good = codec.encode("deliver_sm", sequence=9, source_addr="1", destination_addr="2",
                        message_payload=b"0123456789")
    assert codec.decode(good).params["message_payload"] == b"0123456789"
    cut = good[:-4]
    cut = struct.pack(">L", len(cut)) + cut[4:]
    try:
        pdu = codec.decode(cut)
    except PduError as exc:
        assert exc.fatal is False
        assert exc.sequence == 9
        return
    pytest.fail(f"truncated TLV accepted: message_payload={pdu.params.get('message_payload')!r}"
                " (TLV length 10, 6 octets present)")


# --------------------------------------------------------------------------- encode limits

@pytest.mark.parametrize("command", ["submit_sm", "deliver_sm"])
def test_too_long_destination_raises(command: str) -> None:
    codec.encode(command, sequence=1, destination_addr="1" * 20)  # the maximum is fine
    with pytest.raises(ValueError, match="destination_addr"):
        codec.encode(command, sequence=1, destination_addr="1" * 21)
    with pytest.raises(ValueError):
        codec.encode(command, sequence=1, destination_addr="447700900123" * 5)


@pytest.mark.parametrize(("field", "limit"), [("source_addr", 20), ("service_type", 5),
                                              ("validity_period", 16),
                                              ("schedule_delivery_time", 16)])
def test_too_long_strings_raise(field: str, limit: int) -> None:
    codec.encode("submit_sm", sequence=1, **{field: "0" * limit})
    with pytest.raises(ValueError, match=field):
        codec.encode("submit_sm", sequence=1, **{field: "0" * (limit + 1)})


@pytest.mark.parametrize("command", ["submit_sm", "deliver_sm"])
def test_short_message_over_254_raises(command: str) -> None:
    raw = codec.encode(command, sequence=1, short_message=b"x" * 254)
    assert codec.decode(raw).params["sm_length"] == 254
    with pytest.raises(ValueError, match="254"):
        codec.encode(command, sequence=1, short_message=b"x" * 255)
    with pytest.raises(ValueError):
        codec.encode(command, sequence=1, short_message=b"x" * 1000)


def test_too_long_message_id_raises() -> None:
    codec.encode("submit_sm_resp", sequence=1, message_id="a" * 64)
    with pytest.raises(ValueError, match="message_id"):
        codec.encode("submit_sm_resp", sequence=1, message_id="a" * 65)


# --------------------------------------------------------------------------- framing, errors

def test_frame_length() -> None:
    assert codec.frame_length(b"") is None
    assert codec.frame_length(b"\x00\x00\x00") is None
    assert codec.frame_length(struct.pack(">L", 16)) == 16
    assert codec.frame_length(bytearray(struct.pack(">L", 17)) + b"xx") == 17
    assert codec.frame_length(memoryview(struct.pack(">L", 65536))) == 65536
    for bad in (0, 15, 65537, 0xFFFFFFFF):
        with pytest.raises(PduError) as info:
            codec.frame_length(struct.pack(">L", bad))
        assert info.value.fatal is True
        assert info.value.status == consts.SMPP_ESME_RINVCMDLEN


def test_decode_rejects_bad_frames() -> None:
    with pytest.raises(PduError):
        codec.decode(b"\x00\x00\x00\x10\x00\x00")
    with pytest.raises(PduError):
        codec.decode(struct.pack(">LLLL", 20, 0x15, 0, 1))  # says 20, is 16


def test_decode_unknown_commands() -> None:
    for cid in (0x00000007, 0x00000008, 0x0000000B, 0x00000021, 0x12345678):
        pdu = codec.decode(struct.pack(">LLLL", 16, cid, 0, 99))
        assert pdu.command == "unknown"
        assert pdu.command_id == cid
        assert pdu.sequence == 99


def test_decode_truncated_submit_is_non_fatal() -> None:
    raw = codec.encode("submit_sm", sequence=12, source_addr="12345", destination_addr="678",
                       short_message=b"hello")
    for cut in range(17, len(raw)):
        frame = struct.pack(">L", cut) + raw[4:cut]
        with pytest.raises(PduError) as info:
            codec.decode(frame)
        assert info.value.fatal is False, cut
        assert info.value.sequence == 12
        assert info.value.status != 0


def test_decode_random_bodies_raise_only_pdu_error() -> None:
    rng = random.Random("decode-fuzz")
    ids = [*codec.COMMAND_IDS.values(), 0x7FFFFFFF]
    for _ in range(3000):
        body = rng.randbytes(rng.randrange(0, 60))
        raw = struct.pack(">LLLL", 16 + len(body), rng.choice(ids), 0, 5) + body
        try:
            pdu = codec.decode(raw)
        except PduError as exc:
            assert exc.fatal is False
            assert exc.sequence == 5
        else:
            assert isinstance(pdu, Pdu) and pdu.sequence == 5


def test_status_name() -> None:
    assert codec.status_name(0x58) == "ESME_RTHROTTLED"
    assert codec.status_name(0) == "ESME_ROK"
    assert codec.status_name(0x0E) == "ESME_RINVPASWD"
    assert codec.status_name(0x04) == "ESME_RINVBNDSTS"
    assert codec.status_name(0x12345) == "0x00012345"
