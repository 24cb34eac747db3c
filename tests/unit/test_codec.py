"""SMPP codec: the hand-written fast path is byte-identical to smpplib, and decode round-trips."""

from __future__ import annotations

import random
import struct
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


# --------------------------------------------------------------------------- TLV fast decoder

CMD_TLVS = ("submit_sm", "deliver_sm")
#: Tags smpplib does not know: it skips them, we hand the whole block to smpplib.
UNKNOWN_TAGS = (0x0000, 0x1400, 0x1403, 0x14FF, 0x2150, 0xFFFF)
#: Tags smpplib knows but cannot take in this command (KeyError) or parses oddly (flag type).
FOREIGN_TAGS = {
    "submit_sm": (0x001E, 0x0423, 0x0427, 0x0420, 0x130C),  # receipt TLVs, dpf_result, flag
    "deliver_sm": (0x0005, 0x000D, 0x0501, 0x0420, 0x130C),  # subunits, ussd_service_op, ...
}
#: What receipts and concatenation use: drawn more often than the rest of the table.
COMMON_TAGS = (0x001E, 0x0427, 0x0423, 0x0204, 0x020C, 0x020E, 0x020F, 0x020A, 0x020B, 0x0424)


def _tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def _with_tlvs(command: str, tlvs: bytes, *, sequence: int = 7, **params: Any) -> bytes:
    """A submit_sm/deliver_sm frame with raw TLV bytes appended (command_length fixed up)."""
    raw = codec.encode(command, sequence=sequence, **params) + tlvs
    return struct.pack(">L", len(raw)) + raw[4:]


def _outcome(raw: bytes) -> Any:
    """decode() result in a comparable form: typed, ordered params, or the PduError's fields."""
    try:
        pdu = codec.decode(raw)
    except PduError as exc:
        return ("PduError", exc.status, exc.reason, exc.sequence, exc.fatal)
    return pdu, [(k, type(v), v) for k, v in pdu.params.items()]


def _reference_outcome(raw: bytes) -> Any:
    """decode() with TLVs through smpplib, as before the fast TLV decoder."""
    with mock.patch.object(codec, "_decode_tlvs", codec._decode_tlvs_slow):
        return _outcome(raw)


def _fast_outcome(raw: bytes) -> tuple[Any, int]:
    """decode() as shipped, and how many times it fell back to smpplib for the TLVs."""
    with mock.patch.object(codec, "_decode_tlvs_slow", wraps=codec._decode_tlvs_slow) as spy:
        return _outcome(raw), spy.call_count


@st.composite
def _tlv_entry(draw: st.DrawFn, command: str) -> tuple[bytes, bool]:
    """One TLV and whether the fast decoder can take it without smpplib."""
    table, _ = codec._TLV_TABLES[command]
    roll = draw(st.integers(0, 24))  # rare branches off the ends: hypothesis favours those
    if roll == 7:
        return _tlv(draw(st.sampled_from(UNKNOWN_TAGS)), draw(st.binary(max_size=8))), False
    if roll == 17:
        foreign = draw(st.sampled_from(FOREIGN_TAGS[command]))
        return _tlv(foreign, draw(st.binary(max_size=4))), False
    pool = [t for t in COMMON_TAGS if t in table] if roll % 2 else sorted(table)
    tag = draw(st.sampled_from(pool))
    _, kind = table[tag]
    if kind > 0:  # int of `kind` octets
        if draw(st.integers(0, 11)) == 5:  # wrong length: smpplib reads `kind` octets anyway
            size = draw(st.integers(0, 5).filter(lambda n: n != kind))
            return _tlv(tag, draw(st.binary(min_size=size, max_size=size))), False
        return _tlv(tag, draw(st.integers(0, 256**kind - 1)).to_bytes(kind, "big")), True
    if kind == codec._TLV_CSTRING:
        text = draw(st.binary(max_size=70).map(lambda b: b.replace(b"\x00", b"")))
        shape = draw(st.integers(0, 9))
        value = {0: b"", 1: text, 2: text + b"\x00" + text + b"\x00"}.get(shape, text + b"\x00")
        return _tlv(tag, value), True
    return _tlv(tag, draw(st.binary(max_size=300))), True


@st.composite
def _tlv_frame(draw: st.DrawFn, command: str) -> tuple[bytes, bool]:
    """A submit_sm/deliver_sm with random TLVs (repeats allowed), rarely a broken tail."""
    entries = draw(st.lists(_tlv_entry(command), max_size=8))
    tail = b""
    broken = draw(st.integers(0, 29))
    if broken == 11:  # stray octets: not even a TLV header
        tail = draw(st.binary(min_size=1, max_size=3))
    elif broken == 19:  # a TLV whose length runs past the PDU end
        tail = struct.pack(">HH", draw(st.sampled_from(COMMON_TAGS)), 9) + draw(
            st.binary(max_size=8))
    raw = _with_tlvs(command, b"".join(e for e, _ in entries) + tail,
                     sequence=draw(st.integers(1, 0x7FFFFFFF)),
                     source_addr=draw(st.sampled_from(["447700900123", "ACME", ""])),
                     destination_addr="4477", esm_class=draw(st.sampled_from([0, 0x04])),
                     short_message=draw(st.binary(max_size=40)))
    return raw, all(plain for _, plain in entries) and not tail


@pytest.mark.parametrize("command", CMD_TLVS)
@settings(max_examples=400, deadline=None, database=None)
@given(data=st.data())
def test_tlv_fast_decode_equals_smpplib(command: str, data: st.DataObject) -> None:
    """Random TLV streams: the fast decoder gives exactly smpplib's params (or its PduError)."""
    raw, plain = data.draw(_tlv_frame(command))
    fast, fallbacks = _fast_outcome(raw)
    assert fast == _reference_outcome(raw)
    if plain:  # only table tags with sane lengths: smpplib must not have been needed
        assert fallbacks == 0


def test_fast_tlv_table_covers_receipt_and_concatenation_tags() -> None:
    table, _ = codec._TLV_TABLES["deliver_sm"]
    cstr, octets = codec._TLV_CSTRING, codec._TLV_OCTETS
    assert table[0x001E] == ("receipted_message_id", cstr)
    assert table[0x0427] == ("message_state", 1)
    assert table[0x0423] == ("network_error_code", octets)  # 3 octets, smpplib: ostr
    assert table[0x0424] == ("message_payload", octets)
    for command in CMD_TLVS:
        table, _ = codec._TLV_TABLES[command]
        assert table[0x0204] == ("user_message_reference", 2)
        assert table[0x020A] == ("source_port", 2)
        assert table[0x020B] == ("destination_port", 2)
        assert table[0x020C] == ("sar_msg_ref_num", 2)
        assert table[0x020E] == ("sar_total_segments", 1)
        assert table[0x020F] == ("sar_segment_seqnum", 1)
        assert table[0x0424] == ("message_payload", octets)
        assert not set(table) & set(UNKNOWN_TAGS)
        assert not set(table) & set(FOREIGN_TAGS[command])
    assert not set(UNKNOWN_TAGS) & set(consts.OPTIONAL_PARAMS.values())


def test_receipt_deliver_sm_tlvs_fast_path() -> None:
    """A Jasmin-style delivery receipt: receipted_message_id, message_state, network_error_code."""
    mid = "1f4e9a7c-3b2d-4c8e-9f10-2a6b7c8d9e0f"
    sm = (f"id:{mid} sub:001 dlvrd:001 submit date:2405131200 done date:2405131201 "
          "stat:DELIVRD err:000 text:Hello").encode()
    tlvs = (_tlv(0x001E, mid.encode() + b"\x00") + _tlv(0x0427, b"\x02")
            + _tlv(0x0423, b"\x03\x00\x00"))
    raw = _with_tlvs("deliver_sm", tlvs, sequence=77, source_addr="84901234567",
                     source_addr_ton=1, source_addr_npi=1, destination_addr="ACME",
                     esm_class=0x04, short_message=sm)
    (pdu, items), fallbacks = _fast_outcome(raw)
    assert fallbacks == 0
    assert (pdu, items) == _reference_outcome(raw)
    assert items[-3:] == [("network_error_code", bytes, b"\x03\x00\x00"),
                          ("message_state", int, 2), ("receipted_message_id", str, mid)]
    assert pdu.params["short_message"] == sm and pdu.params["esm_class"] == 0x04
    assert pdu.sequence == 77 and pdu.command == "deliver_sm"


def test_repeated_tlv_last_one_wins_in_smpplib_order() -> None:
    tlvs = (_tlv(0x001E, b"first\x00") + _tlv(0x0427, b"\x01") + _tlv(0x001E, b"second\x00")
            + _tlv(0x0427, b"\x05") + _tlv(0x0204, b"\x12\x34"))
    raw = _with_tlvs("deliver_sm", tlvs)
    (pdu, items), fallbacks = _fast_outcome(raw)
    assert fallbacks == 0
    assert (pdu, items) == _reference_outcome(raw)
    assert [k for k, _, _ in items[-3:]] == [
        "user_message_reference", "message_state", "receipted_message_id"]
    assert pdu.params["receipted_message_id"] == "second"
    assert pdu.params["message_state"] == 5


@pytest.mark.parametrize(("value", "expected"), [
    (b"m42\x00", "m42"),
    (b"m42", "m4"),  # no NUL: smpplib drops the last octet regardless
    (b"", ""),  # zero length
    (b"a\x00b\x00", "a\x00b"),  # embedded NUL kept
    (b"\xe9t\xe9\x00", "\xe9t\xe9"),  # latin-1, never raises
])
def test_receipted_message_id_odd_strings_match_smpplib(value: bytes, expected: str) -> None:
    raw = _with_tlvs("deliver_sm", _tlv(0x001E, value) + _tlv(0x0424, b""))
    (pdu, items), fallbacks = _fast_outcome(raw)
    assert fallbacks == 0
    assert (pdu, items) == _reference_outcome(raw)
    assert pdu.params["receipted_message_id"] == expected
    assert pdu.params["message_payload"] == b""


def test_unknown_tag_sends_the_whole_block_to_smpplib() -> None:
    tlvs = _tlv(0x0427, b"\x02") + _tlv(0x1403, b"???") + _tlv(0x001E, b"m42\x00")
    raw = _with_tlvs("deliver_sm", tlvs)
    (pdu, items), fallbacks = _fast_outcome(raw)
    assert fallbacks == 1
    assert (pdu, items) == _reference_outcome(raw)
    assert pdu.params["message_state"] == 2 and pdu.params["receipted_message_id"] == "m42"


INVOPT, INVPARLEN = consts.SMPP_ESME_RINVOPTPARSTREAM, consts.SMPP_ESME_RINVPARLEN


@pytest.mark.parametrize(("command", "tlvs", "status"), [
    ("deliver_sm", _tlv(0x0427, b"\x02") + b"\x04\x27\x00", INVOPT),  # stray octets
    ("deliver_sm", _tlv(0x001E, b"x\x00") + b"\x04\x24\x00\x0a" + b"012345", INVPARLEN),
    ("submit_sm", b"\x00\x1e\xff\xff", INVPARLEN),  # length 65535 in a tiny PDU
    ("deliver_sm", _tlv(0x0427, b"\x00\x02"), INVOPT),  # int TLV longer than its size
    ("deliver_sm", _tlv(0x0204, b"\x01"), INVOPT),  # int TLV shorter than its size
    ("submit_sm", _tlv(0x001E, b"m42\x00"), INVOPT),  # smpplib has no receipt TLVs here
    ("deliver_sm", _tlv(0x0420, b"\x01"), INVOPT),  # dpf_result: not a deliver_sm TLV
    ("submit_sm", _tlv(0x130C, b"\x01"), INVOPT),  # flag TLV: smpplib misreads the value
])
def test_malformed_tlv_streams_keep_their_pdu_error(command: str, tlvs: bytes,
                                                    status: int) -> None:
    raw = _with_tlvs(command, tlvs, sequence=31)
    fast, _ = _fast_outcome(raw)
    assert fast == _reference_outcome(raw)
    assert fast[:2] == ("PduError", status)
    assert fast[3:] == (31, False)  # sequence kept, non-fatal


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
