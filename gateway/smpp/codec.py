"""SMPP 3.4 PDU codec: smpplib's encoder/decoder behind a small typed surface.

Everything outside this module sees :class:`Pdu` records and ``bytes``; smpplib objects never
leak. smpplib quirks handled here, once:

* a PDU built with ``sequence=`` keeps the client's sequence instead; we set it after building;
* parsing a request advances the sequence generator of the client passed in; we pass a sink;
* C-string fields come back as ``bytes``; we decode them (latin-1, never raises);
* unknown TLVs are skipped (``allow_unknown_opt_params=True``);
* commands smpplib does not know (cancel_sm, replace_sm, submit_multi, outbind) decode to a
  :class:`Pdu` whose ``command`` is ``"unknown"`` so the session can answer ``generic_nack``.

The hot PDUs (submit_sm without TLVs, submit_sm_resp, deliver_sm_resp, enquire_link and their
decoders) have a hand-written fast path; tests prove it byte-identical to smpplib's output.
Decoding submit_sm/deliver_sm TLVs (delivery receipts) is hand-written too, for the tags smpplib
parses plainly; any other tag sends the whole TLV block through smpplib (tests prove the two equal).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smpplib import command_codes, consts, ptypes, smpp

HEADER = struct.Struct(">LLLL")
HEADER_LEN = 16
#: Largest command_length we accept from a peer; anything above is a protocol violation.
MAX_PDU_LEN = 64 * 1024

COMMAND_IDS: Mapping[str, int] = dict(command_codes.commands)
COMMAND_NAMES: Mapping[int, str] = {v: k for k, v in command_codes.commands.items()}
_SUPPORTED = frozenset(
    {
        "generic_nack", "bind_transmitter", "bind_transmitter_resp", "bind_receiver",
        "bind_receiver_resp", "bind_transceiver", "bind_transceiver_resp", "submit_sm",
        "submit_sm_resp", "deliver_sm", "deliver_sm_resp", "unbind", "unbind_resp",
        "enquire_link", "enquire_link_resp", "data_sm", "data_sm_resp", "query_sm",
        "query_sm_resp", "alert_notification",
    }
)

STATUS_NAMES: Mapping[int, str] = {
    getattr(consts, n): n.removeprefix("SMPP_") for n in dir(consts) if n.startswith("SMPP_ESME_R")
}


def status_name(status: int) -> str:
    """``0x58`` → ``"ESME_RTHROTTLED"``; unknown codes as hex."""
    return STATUS_NAMES.get(status, f"0x{status:08X}")


class PduError(Exception):
    """The peer sent bytes that are not a valid PDU (remote misbehaviour)."""

    def __init__(self, reason: str, *, status: int = consts.SMPP_ESME_RINVCMDLEN,
                 sequence: int = 0, fatal: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # what to answer in generic_nack
        self.sequence = sequence
        self.fatal = fatal  # framing is lost: the connection must be dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class Pdu:
    """One decoded PDU. ``params`` holds only fields that were present."""

    command: str
    sequence: int
    status: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    command_id: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & 0x80000000)

    def get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def text(self, name: str, default: str = "") -> str:
        value = self.params.get(name)
        return default if value is None else str(value)


class _SequenceSink:
    """Stands in for smpplib's client: absorbs the sequence it wants to advance."""

    sequence = 0

    def next_sequence(self) -> int:
        return 0


_SINK = _SequenceSink()


# --------------------------------------------------------------------------- framing

def frame_length(buf: bytes | bytearray | memoryview) -> int | None:
    """Length of the PDU at the start of ``buf``; None until 4 bytes are there.

    Raises :class:`PduError` for a length below the header size or above :data:`MAX_PDU_LEN`.
    """
    if len(buf) < 4:
        return None
    (length,) = struct.unpack_from(">L", buf, 0)
    if length < HEADER_LEN or length > MAX_PDU_LEN:
        raise PduError(f"absurd command_length {length} (allowed {HEADER_LEN}..{MAX_PDU_LEN})")
    return int(length)


# --------------------------------------------------------------------------- decoding

def _plain(value: Any, kind: Any) -> Any:
    if isinstance(value, bytes) and kind is str:
        return value.decode("latin-1")
    return value


def decode(frame: bytes) -> Pdu:
    """Decode one complete frame (``len(frame) == command_length``)."""
    if len(frame) < HEADER_LEN:
        raise PduError(f"PDU of {len(frame)} bytes is shorter than the 16-byte header")
    length, command_id, status, sequence = HEADER.unpack_from(frame, 0)
    if length != len(frame):
        raise PduError(f"command_length {length} does not match the frame ({len(frame)} bytes)")
    name = COMMAND_NAMES.get(command_id)
    if name is None or name not in _SUPPORTED:
        return Pdu(command="unknown", sequence=sequence, status=status, command_id=command_id)
    fast = _FAST_DECODERS.get(command_id)
    if fast is not None:
        return fast(frame, name, command_id, status, sequence)
    try:
        obj = smpp.parse_pdu(frame, client=_SINK, allow_unknown_opt_params=True)
    except Exception as exc:  # smpplib raises anything from struct.error to KeyError
        raise PduError(
            f"malformed {name} body: {type(exc).__name__}: {exc}",
            status=consts.SMPP_ESME_RSYSERR, sequence=sequence, fatal=False,
        ) from exc
    params: dict[str, Any] = {}
    for fname in getattr(obj, "params_order", ()):
        value = getattr(obj, fname, None)
        if value is None:
            continue
        params[fname] = _plain(value, obj.params[fname].type)
    return Pdu(command=name, sequence=sequence, status=status, params=params,
               command_id=command_id)


def _cstring_at(frame: bytes, pos: int, field_name: str, sequence: int) -> tuple[str, int]:
    end = frame.find(b"\x00", pos)
    if end < 0:
        raise PduError(f"{field_name} is not NUL-terminated", status=consts.SMPP_ESME_RSYSERR,
                       sequence=sequence, fatal=False)
    return frame[pos:end].decode("latin-1"), end + 1


def _decode_id_resp(frame: bytes, name: str, cid: int, status: int, seq: int) -> Pdu:
    params: dict[str, Any] = {}
    if len(frame) > HEADER_LEN:
        params["message_id"], _ = _cstring_at(frame, HEADER_LEN, "message_id", seq)
    return Pdu(command=name, sequence=seq, status=status, params=params, command_id=cid)


def _decode_empty(frame: bytes, name: str, cid: int, status: int, seq: int) -> Pdu:
    return Pdu(command=name, sequence=seq, status=status, command_id=cid)


_SUBMIT_LAYOUT: tuple[tuple[str, str], ...] = (
    ("service_type", "s"), ("source_addr_ton", "b"), ("source_addr_npi", "b"),
    ("source_addr", "s"), ("dest_addr_ton", "b"), ("dest_addr_npi", "b"),
    ("destination_addr", "s"), ("esm_class", "b"), ("protocol_id", "b"),
    ("priority_flag", "b"), ("schedule_delivery_time", "s"), ("validity_period", "s"),
    ("registered_delivery", "b"), ("replace_if_present_flag", "b"), ("data_coding", "b"),
    ("sm_default_msg_id", "b"),
)


def _decode_submit(frame: bytes, name: str, cid: int, status: int, seq: int) -> Pdu:
    """submit_sm / deliver_sm: mandatory part here, TLVs via :func:`_decode_tlvs`."""
    params: dict[str, Any] = {}
    pos = HEADER_LEN
    try:
        for fname, kind in _SUBMIT_LAYOUT:
            if kind == "s":
                params[fname], pos = _cstring_at(frame, pos, fname, seq)
            else:
                params[fname] = frame[pos]
                pos += 1
        sm_length = frame[pos]
        pos += 1
    except IndexError as exc:
        raise PduError(f"{name} body truncated", status=consts.SMPP_ESME_RSYSERR,
                       sequence=seq, fatal=False) from exc
    if pos + sm_length > len(frame):
        raise PduError(f"{name} sm_length {sm_length} runs past the PDU",
                       status=consts.SMPP_ESME_RINVMSGLEN, sequence=seq, fatal=False)
    params["sm_length"] = sm_length
    params["short_message"] = frame[pos:pos + sm_length]
    pos += sm_length
    if pos < len(frame):
        params.update(_decode_tlvs(frame, pos, name, seq))
    return Pdu(command=name, sequence=seq, status=status, params=params, command_id=cid)


def _check_tlv_stream(frame: bytes, pos: int, name: str, seq: int) -> None:
    """Every TLV header and value must fit inside the PDU (smpplib truncates silently)."""
    end = len(frame)
    while pos < end:
        if end - pos < 4:
            raise PduError(f"{name} has {end - pos} stray octet(s) after its last TLV",
                           status=consts.SMPP_ESME_RINVOPTPARSTREAM, sequence=seq, fatal=False)
        (tag, length) = struct.unpack_from(">HH", frame, pos)
        pos += 4 + length
        if pos > end:
            raise PduError(f"TLV 0x{tag:04X} in {name} claims {length} octets past the PDU end",
                           status=consts.SMPP_ESME_RINVPARLEN, sequence=seq, fatal=False)


def _decode_tlvs_slow(frame: bytes, pos: int, name: str, seq: int) -> dict[str, Any]:
    """TLVs through smpplib: the reference for :func:`_decode_tlvs` and its fallback."""
    _check_tlv_stream(frame, pos, name, seq)
    obj = smpp.make_pdu(name, client=_SINK, allow_unknown_opt_params=True)
    try:
        obj.parse_optional_params(frame[pos:])
    except Exception as exc:
        raise PduError(f"malformed TLVs in {name}: {type(exc).__name__}: {exc}",
                       status=consts.SMPP_ESME_RINVOPTPARSTREAM, sequence=seq,
                       fatal=False) from exc
    out: dict[str, Any] = {}
    for fname, param in obj.params.items():
        if fname in consts.OPTIONAL_PARAMS and fname not in _MANDATORY_SUBMIT:
            value = getattr(obj, fname, None)
            if value is not None:
                out[fname] = _plain(value, param.type)
    return out


_MANDATORY_SUBMIT = frozenset(n for n, _ in _SUBMIT_LAYOUT) | {"sm_length", "short_message"}

#: TLV value kinds of the fast table; ints use their octet count (1, 2 or 4) as the kind.
_TLV_CSTRING = -1
_TLV_OCTETS = -2
_TLV_HEADER = struct.Struct(">HH")


def _tlv_table(command: str) -> tuple[dict[int, tuple[str, int]], dict[str, int]]:
    """tag → (name, kind) and name → output rank, read off smpplib's own metadata.

    Only what smpplib parses plainly is listed: ints of 1/2/4 octets (read with the fixed size,
    whatever the TLV length says), C-strings (the last octet dropped, NUL or not) and octet
    strings. Tags that smpplib maps to a name this command lacks (it raises ``KeyError``),
    ``flag`` TLVs (it does not advance past the value) and unknown tags stay out, so they take
    the smpplib path. The rank is smpplib's ``params`` order, which orders its output dict.
    """
    cls = type(smpp.make_pdu(command, client=_SINK))
    names: dict[int, str] = {}
    for tname, tag in consts.OPTIONAL_PARAMS.items():
        names.setdefault(tag, tname)  # smpplib's get_optional_name takes the first match
    table: dict[int, tuple[str, int]] = {}
    for tag, tname in names.items():
        param = cls.params.get(tname)
        if param is None or tname in _MANDATORY_SUBMIT:
            continue
        size = int(getattr(param, "size", 0))
        if param.type is int and size in consts.INT_PACK_FORMATS:
            table[tag] = (tname, size)
        elif param.type is str:
            table[tag] = (tname, _TLV_CSTRING)
        elif param.type is ptypes.ostr:
            table[tag] = (tname, _TLV_OCTETS)
    rank = {fname: i for i, fname in enumerate(cls.params)}
    return table, rank


_TLV_TABLES = {command: _tlv_table(command) for command in ("submit_sm", "deliver_sm")}


def _decode_tlvs(frame: bytes, pos: int, name: str, seq: int) -> dict[str, Any]:
    """Hand-decode the TLVs smpplib parses plainly; same dict as :func:`_decode_tlvs_slow`.

    Building an smpplib PDU object costs most of a delivery receipt's decode time. Anything
    outside the fast table (unknown tag, int TLV whose length is not its size) hands the whole
    block to smpplib, so odd streams keep smpplib's exact result or error.
    """
    _check_tlv_stream(frame, pos, name, seq)
    table, rank = _TLV_TABLES[name]
    out: dict[str, Any] = {}
    start, end = pos, len(frame)
    while pos < end:
        tag, length = _TLV_HEADER.unpack_from(frame, pos)
        pos += 4
        spec = table.get(tag)
        if spec is None:
            return _decode_tlvs_slow(frame, start, name, seq)
        fname, kind = spec
        if kind == _TLV_CSTRING:
            # smpplib drops the last octet unchecked; length 0 gives "" (pos - 1 < pos)
            out[fname] = frame[pos:pos + length - 1].decode("latin-1")
        elif kind == _TLV_OCTETS:
            out[fname] = frame[pos:pos + length]
        elif kind == length:
            out[fname] = int.from_bytes(frame[pos:pos + length], "big")
        else:
            return _decode_tlvs_slow(frame, start, name, seq)
        pos += length  # a repeated tag overwrites, as smpplib's setattr does
    if len(out) > 1:  # smpplib emits its params order, not wire order
        return {fname: out[fname] for fname in sorted(out, key=rank.__getitem__)}
    return out


_FAST_DECODERS = {
    0x80000004: _decode_id_resp,  # submit_sm_resp
    0x80000005: _decode_id_resp,  # deliver_sm_resp
    0x00000015: _decode_empty,  # enquire_link
    0x80000015: _decode_empty,  # enquire_link_resp
    0x00000006: _decode_empty,  # unbind
    0x80000006: _decode_empty,  # unbind_resp
    0x80000000: _decode_empty,  # generic_nack
    0x00000004: _decode_submit,  # submit_sm
    0x00000005: _decode_submit,  # deliver_sm
}


# --------------------------------------------------------------------------- encoding

def encode_slow(command: str, *, sequence: int, status: int = 0, **params: Any) -> bytes:
    """Encode through smpplib (reference path, and for every PDU without a fast path)."""
    obj = smpp.make_pdu(command, client=_SINK, **params)
    obj.sequence = sequence  # smpplib ignores sequence= in make_pdu
    obj.status = status
    data: bytes = obj.generate()
    return data


def _cstr(value: str | bytes | None, field_name: str, max_len: int) -> bytes:
    if value is None:
        return b"\x00"
    raw = value.encode("latin-1") if isinstance(value, str) else value
    if len(raw) >= max_len:
        raise ValueError(f"{field_name} {raw!r} is longer than {max_len - 1} octets")
    return raw + b"\x00"


_ID_RESP = {"submit_sm_resp", "deliver_sm_resp", "data_sm_resp"}
_EMPTY = {"enquire_link", "enquire_link_resp", "unbind", "unbind_resp", "generic_nack"}
_SUBMIT_INTS = frozenset(n for n, k in _SUBMIT_LAYOUT if k == "b")
_SUBMIT_MAX = {"service_type": 6, "source_addr": 21, "destination_addr": 21,
               "schedule_delivery_time": 17, "validity_period": 17}


def encode(command: str, *, sequence: int, status: int = 0, **params: Any) -> bytes:
    """Encode a PDU; hot PDUs skip smpplib's object machinery (same bytes, tested)."""
    if command in _EMPTY and not params:
        return HEADER.pack(HEADER_LEN, COMMAND_IDS[command], status, sequence)
    if command in _ID_RESP and set(params) <= {"message_id"}:
        body = _cstr(params.get("message_id"), "message_id", 65)
        return HEADER.pack(HEADER_LEN + len(body), COMMAND_IDS[command], status, sequence) + body
    if command in ("submit_sm", "deliver_sm") and set(params) <= _MANDATORY_SUBMIT:
        return _encode_submit(command, sequence, status, params)
    return encode_slow(command, sequence=sequence, status=status, **params)


def _encode_submit(command: str, sequence: int, status: int, params: Mapping[str, Any]) -> bytes:
    parts: list[bytes] = []
    for fname, kind in _SUBMIT_LAYOUT:
        if kind == "s":
            parts.append(_cstr(params.get(fname), fname, _SUBMIT_MAX[fname]))
        else:
            value = params.get(fname) or 0
            parts.append(bytes((value,)))
    sm: bytes = params.get("short_message") or b""
    if len(sm) > 254:
        raise ValueError(f"short_message of {len(sm)} octets exceeds 254; use message_payload")
    parts.append(bytes((len(sm),)))
    parts.append(sm)
    body = b"".join(parts)
    return HEADER.pack(HEADER_LEN + len(body), COMMAND_IDS[command], status, sequence) + body

