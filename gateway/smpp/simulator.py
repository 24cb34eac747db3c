"""A small but real SMPP 3.4 SMSC on TCP, for the demo, the integration tests and benchmarks.

Each connection is an asyncio task that only moves bytes between its socket and a
``Session(Role.SMSC)``; everything the SMSC decides happens in plain methods of
:class:`SmscSimulator`. What it does:

* answers ``bind_*`` (checking ``system_id`` / ``password``), ``enquire_link``, ``unbind`` and
  ``submit_sm`` (``submit_sm_resp`` with a fresh message id), ``generic_nack`` for bad PDUs;
* counts every accepted ``submit_sm`` part and reassembles multipart messages (UDH with an 8- or
  16-bit reference, or ``sar_*`` TLVs) so tests can check what a handset would have shown;
* sends a delivery receipt (``deliver_sm``, ``esm_class`` 0x04) after ``receipt_delay_s`` for
  every part that asked for one; receipts wait for a receiver when none is bound, and receipts
  whose ``deliver_sm_resp`` never came are sent again after the next bind (as a real SMSC does);
* personalities for failure tests (each a :class:`SimulatorConfig` field, each a flag of
  ``smsgw smsc-sim``, several named in :data:`PERSONALITIES`): a black hole, unanswered,
  nacked or refused submits, an unbind on a submit, refused binds, a TPS limit answered with
  ``ESME_RTHROTTLED``, dropped connections, garbage bytes, slow, jittered and shuffled
  responses, receipts before their ``submit_sm_resp``, duplicate receipts, multipart MO out of
  order, enquire_link probing, a bind limit;
* test hooks (:meth:`SmscSimulator.inject_mo`, :meth:`~SmscSimulator.drop_connections`,
  :meth:`~SmscSimulator.send_raw`) and an optional aiohttp control endpoint.

Receipts use one scheduler: the delay is the same for every receipt, so a FIFO queue is already
in due order and one task drains it in batches (thousands of receipts per second cost one
wake-up per few milliseconds, not one timer each).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import json
import logging
import random
import ssl
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from aiohttp import web
from smpplib import consts

from gateway.masking import mask_msisdn
from gateway.smpp import codec
from gateway.smpp.encoding import decode_text, encode_message, split_udh
from gateway.smpp.receipts import MESSAGE_STATE_TLV, ReceiptState, format_receipt_text
from gateway.smpp.session import (
    BadPdu,
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
)

log = logging.getLogger("smsgw.smpp.simulator")

_T = TypeVar("_T")

_RECEIVING = (State.BOUND_RX, State.BOUND_TRX)
_ESM_UDHI = 0x40
_ESM_RECEIPT = 0x04
_READ_SIZE = 256 * 1024
_HANG_UP_S = 1.0  # how long a closing connection waits for the peer to close its side
_STATE_TLV_VALUE: dict[ReceiptState, int] = {s: v for v, s in MESSAGE_STATE_TLV.items()}
_OK_ERR_STATES = frozenset({ReceiptState.DELIVRD, ReceiptState.ACCEPTD, ReceiptState.ENROUTE})
_LENGTH = struct.Struct(">L")
_TLV_HEAD = struct.Struct(">HH")
_TAG_RECEIPTED_MESSAGE_ID = 0x001E
_TAG_MESSAGE_STATE = 0x0427


class NoReceiverError(RuntimeError):
    """No connection is bound as receiver or transceiver, so nothing can be delivered now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """How the simulated SMSC listens and behaves. Every default is a well-behaved SMSC."""

    host: str = "127.0.0.1"
    port: int = 2775  # 0 = ephemeral; SmscSimulator.port gives the real one
    system_id: str = "smsgw"
    password: str = "secret"
    smsc_system_id: str = "SMSCSIM"  # what we answer in bind_*_resp
    receipt_delay_s: float = 0.2
    #: (receipt state, weight) pairs; one state is drawn per submitted part.
    receipt_mix: tuple[tuple[str, float], ...] = (("DELIVRD", 1.0),)
    seed: int | None = None
    tps_limit: float | None = None  # accepted submit_sm per second over every bind
    tps_per_bind: float | None = None  # accepted submit_sm per second on each connection
    #: SMPP over TLS: PEM certificate chain and key files (None = plain TCP)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    message_id_format: Literal["hex", "decimal"] = "hex"
    #: id base in receipts: "same" as submit_sm_resp, or the other base, as some carriers do
    #: (hex in the response, decimal in the receipt or the other way round)
    receipt_id_format: Literal["same", "hex", "decimal"] = "same"
    #: first message id; None = derived from the wall clock, so consecutive runs differ
    first_message_id: int | None = None
    control_host: str = "127.0.0.1"
    control_port: int | None = None  # aiohttp control endpoint (0 = ephemeral)
    resp_delay_s: float = 0.0  # delay of every submit_sm_resp
    drop_after: int | None = None  # close the connection on the Nth submit_sm (once per run)
    enquire_link_interval_s: float | None = None  # probe idle ESMEs with enquire_link
    #: personality "error on submit": destinations starting with one of these are refused
    #: with ESME_RINVDSTADR (a permanent error)
    reject_prefixes: tuple[str, ...] = ()
    max_binds: int | None = None  # concurrent binds; more are answered ESME_RBINDFAIL

    # -- personalities (see PERSONALITIES); "the first N" counts over the whole run ----------
    #: accept binds, then answer nothing at all (an unbind from the ESME closes the connection
    #: unanswered); submits are neither counted nor receipted
    black_hole: bool = False
    #: accept and count submits (receipts included) but never write their submit_sm_resp —
    #: the ambiguous case; only the first ``no_submit_response_count`` when that is set
    no_submit_response: bool = False
    no_submit_response_count: int | None = None
    #: the first N submits are answered generic_nack ESME_RSYSERR (not counted)
    nack_submits: int = 0
    #: submits are answered with this error status (not counted): the first
    #: ``submit_error_count`` of them, or every one when that is None
    submit_error_status: int | None = None
    submit_error_count: int | None = None
    #: the Nth submit is answered with an unbind, then the connection closes (once per run)
    unbind_on_submit: int | None = None
    #: the first N binds are answered ESME_RBINDFAIL
    refuse_binds: int = 0
    #: every connection is closed once it has handled N PDUs of any kind (bind included)
    drop_after_pdus: int | None = None
    #: written right after the bind_resp of the first ``garbage_count`` binds (None: every bind)
    garbage_after_bind: bytes | None = None
    garbage_count: int | None = None
    #: random extra delay (0..resp_jitter_s) per submit_sm_resp, on top of resp_delay_s
    resp_jitter_s: float = 0.0
    #: the submit_sm_resps to one read batch are written in a random order
    shuffle_responses: bool = False
    #: the receipt is written at once, before the submit_sm_resp (receipt_delay_s unused)
    receipt_before_resp: bool = False
    #: every receipt is sent twice
    duplicate_receipts: bool = False
    #: default of inject_mo(shuffle_parts=...): multipart MO parts sent out of order
    shuffle_mo_parts: bool = False

    def __post_init__(self) -> None:
        self._check_basics()
        self._check_personalities()

    def _check_basics(self) -> None:
        self._check_receipt_mix()
        if self.message_id_format not in ("hex", "decimal"):
            raise ValueError(f"message_id_format must be 'hex' or 'decimal', "
                             f"not {self.message_id_format!r}")
        for name in ("tps_limit", "tps_per_bind"):
            limit = getattr(self, name)
            if limit is not None and limit <= 0:
                raise ValueError(f"{name} must be positive (or None for no limit)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.drop_after is not None and self.drop_after < 1:
            raise ValueError("drop_after counts submits from 1")
        if self.enquire_link_interval_s is not None and self.enquire_link_interval_s <= 0:
            raise ValueError("enquire_link_interval_s must be positive")
        if self.receipt_delay_s < 0 or self.resp_delay_s < 0 or self.resp_jitter_s < 0:
            raise ValueError("delays must not be negative")

    def _check_receipt_mix(self) -> None:
        if not self.receipt_mix:
            raise ValueError("receipt_mix needs at least one (state, weight) pair")
        for state, weight in self.receipt_mix:
            if state not in ReceiptState.__members__:
                raise ValueError(f"unknown receipt state {state!r} in receipt_mix")
            if weight < 0:
                raise ValueError(f"negative weight {weight} for {state} in receipt_mix")
        if sum(w for _, w in self.receipt_mix) <= 0:
            raise ValueError("receipt_mix weights must not all be zero")

    def _check_personalities(self) -> None:
        counts = {"no_submit_response_count": self.no_submit_response_count,
                  "submit_error_count": self.submit_error_count,
                  "unbind_on_submit": self.unbind_on_submit,
                  "drop_after_pdus": self.drop_after_pdus, "garbage_count": self.garbage_count}
        for name, count in counts.items():
            if count is not None and count < 1:
                raise ValueError(f"{name} must be at least 1 (or None)")
        if self.nack_submits < 0 or self.refuse_binds < 0:
            raise ValueError("nack_submits and refuse_binds must not be negative")
        if self.no_submit_response_count is not None and not self.no_submit_response:
            raise ValueError("no_submit_response_count needs no_submit_response")
        if self.submit_error_status is None:
            if self.submit_error_count is not None:
                raise ValueError("submit_error_count needs submit_error_status")
        elif not 0 < self.submit_error_status <= 0xFFFFFFFF:
            raise ValueError("submit_error_status must be a non-zero 32-bit command_status")
        if self.garbage_after_bind is not None and not self.garbage_after_bind:
            raise ValueError("garbage_after_bind must not be empty (use None)")
        if self.garbage_count is not None and self.garbage_after_bind is None:
            raise ValueError("garbage_count needs garbage_after_bind")


#: A nasty fixed pattern for ``garbage_after_bind``: a PDU with an unknown command_id, a
#: generic_nack nobody asked for, then an absurd command_length no ESME can re-frame (so a
#: careful ESME drops the connection and binds again).
GARBAGE = (struct.pack(">LLLL", 16, 0x00000099, 0, 0x7FFFFF01)
           + struct.pack(">LLLL", 16, 0x80000000, consts.SMPP_ESME_RSYSERR, 0x7FFFFF02)
           + b"\xff\xff\xff\xf0" + bytes(range(1, 13)))

#: Named personalities for ``smsgw smsc-sim --personality NAME``: SimulatorConfig overrides.
PERSONALITIES: Mapping[str, Mapping[str, Any]] = {
    "happy": {},
    "black-hole": {"black_hole": True},
    "no-submit-response": {"no_submit_response": True},
    "nack-submits": {"nack_submits": 5},
    "submit-error": {"submit_error_status": consts.SMPP_ESME_RSUBMITFAIL,
                     "submit_error_count": 5},
    "unbind-on-submit": {"unbind_on_submit": 10},
    "refuse-binds": {"refuse_binds": 3},
    "throttle": {"tps_limit": 10.0},
    "drop-pdus": {"drop_after_pdus": 25},
    "garbage": {"garbage_after_bind": GARBAGE, "garbage_count": 3},
    "slow-shuffled": {"resp_delay_s": 0.2, "resp_jitter_s": 0.3, "shuffle_responses": True},
    "receipt-before-resp": {"receipt_before_resp": True},
    "mo-out-of-order": {"shuffle_mo_parts": True},
    "duplicate-receipts": {"duplicate_receipts": True},
}


def config_with(personalities: Iterable[str] = (), **fields: Any) -> SimulatorConfig:
    """A config from named :data:`PERSONALITIES` (later names win), then ``fields``, where
    None means "not given" (the command line passes every flag, given or not)."""
    values: dict[str, Any] = {}
    for name in personalities:
        if name not in PERSONALITIES:
            raise ValueError(f"unknown personality {name!r}; choose from "
                             f"{', '.join(PERSONALITIES)}")
        values.update(PERSONALITIES[name])
    values.update({k: v for k, v in fields.items() if v is not None})
    return SimulatorConfig(**values)


def parse_status(text: str) -> int:
    """An SMPP command_status from ``0x45``, ``69`` or ``ESME_RSUBMITFAIL``."""
    name = text.strip().upper().removeprefix("SMPP_")
    if name.startswith("ESME_"):
        value = getattr(consts, f"SMPP_{name}", None)
        if not isinstance(value, int):
            raise ValueError(f"unknown SMPP status name {text!r}")
        return value
    try:
        return int(name, 0)
    except ValueError:
        raise ValueError(f"bad SMPP status {text!r}: use 0x45, 69 or ESME_RSUBMITFAIL") from None


# --------------------------------------------------------------------------- internals

@dataclass(slots=True, eq=False)
class _Receipt:
    """One pending delivery receipt (also the ``ref`` of its deliver_sm, to resend if lost)."""

    due: float
    message_id: bytes
    state: ReceiptState
    source: str  # the submit's destination (the handset) -> receipt source_addr
    source_ton: int
    source_npi: int
    destination: str  # the submit's source (our sender id) -> receipt destination_addr
    destination_ton: int
    destination_npi: int
    submitted_at: datetime
    text: str


@dataclass(slots=True, eq=False)
class _MoRef:
    """``ref`` of an injected MO deliver_sm, so its deliver_sm_resp is counted."""

    part: int


@dataclass(slots=True)
class _Partial:
    """Parts of one multipart message received so far."""

    total: int
    data_coding: int
    parts: dict[int, bytes] = field(default_factory=dict)


def _take_bind_token(conn: _Connection, now: float, rate: float) -> bool:
    """Per-connection token bucket holding a tenth of a second's submits (at least one)."""
    cap = max(1.0, rate / 10)
    if conn.tokens < 0:
        conn.tokens, conn.tokens_at = cap, now
    conn.tokens = min(cap, conn.tokens + (now - conn.tokens_at) * rate)
    conn.tokens_at = now
    if conn.tokens >= 1.0:
        conn.tokens -= 1.0
        return True
    return False


def _server_tls(cfg: SimulatorConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert_file is None or cfg.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    return ctx


_OPTION_FIELDS = ("source_addr", "source_addr_ton", "source_addr_npi", "dest_addr_ton",
                  "dest_addr_npi", "esm_class", "priority_flag", "validity_period",
                  "registered_delivery", "data_coding")


class _Connection:
    """One TCP connection: the session, and replies waiting to be written."""

    __slots__ = ("closing", "eof_sent", "id", "pdus", "peer", "pending", "reader", "session",
                 "system_id", "tokens", "tokens_at", "writer")

    def __init__(self, cid: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.id = cid
        self.reader = reader
        self.writer = writer
        self.session = Session(Role.SMSC)
        self.pending: list[bytes] = []
        self.closing = False
        self.eof_sent = False  # our side is shut: later (delayed) replies are lost
        self.system_id = ""
        self.pdus = 0  # PDUs handled (drop_after_pdus)
        self.tokens = -1.0  # tps_per_bind bucket (-1: not started)
        self.tokens_at = 0.0
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def __repr__(self) -> str:
        return f"<conn #{self.id} {self.peer} {self.session.state}>"

    @property
    def can_receive(self) -> bool:
        return not self.closing and self.session.state in _RECEIVING

    def write_now(self, data: bytes) -> None:
        if not self.eof_sent and not self.writer.is_closing():
            self.writer.write(data)


def _ton_npi(addr: str) -> tuple[int, int]:
    """A plausible TON/NPI for an address: alphanumeric, international or national/short."""
    if not addr.isdigit():
        return 5, 0  # alphanumeric sender id
    if len(addr) >= 9:
        return 1, 1  # international E.164
    return 0, 1


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("latin-1", errors="replace")


def _receipt_tlvs(message_id: bytes, state: int) -> bytes:
    """``message_state`` and ``receipted_message_id`` TLVs (the order smpplib writes them)."""
    return (_TLV_HEAD.pack(_TAG_MESSAGE_STATE, 1) + bytes((state,))
            + _TLV_HEAD.pack(_TAG_RECEIPTED_MESSAGE_ID, len(message_id) + 1) + message_id
            + b"\x00")


# --------------------------------------------------------------------------- the simulator

class SmscSimulator:
    """The simulated SMSC. ``async with SmscSimulator(config) as sim:`` or start()/stop()."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        cfg = self.config
        self._rng = random.Random(cfg.seed)
        self._states = [ReceiptState[s] for s, _ in cfg.receipt_mix]
        self._cum_weights = list(itertools.accumulate(w for _, w in cfg.receipt_mix))
        self._single_state = self._states[0] if len(self._states) == 1 else None
        first = cfg.first_message_id
        if first is None:
            first = (int(time.time()) & 0x0FFFFFFF) << 16
        self._next_id = first
        self._hex_ids = cfg.message_id_format == "hex"

        # public counters (reset_counters() zeroes them)
        self.received: collections.Counter[tuple[str, str]] = collections.Counter()
        self.parts_received = self.submits_throttled = self.binds = 0
        self.unbinds_received = 0  # unbind requests from ESMEs (graceful shutdowns)
        self.receipts_sent = self.receipts_acked = self.receipts_rejected = self.mo_acked = 0
        self.enquire_links_received = 0  # probes from ESMEs that we answered
        self.enquire_links_answered = 0  # our probes that ESMEs answered

        self._by_destination: dict[str, list[str]] = {}
        self._options_by_destination: dict[str, list[dict[str, Any]]] = {}
        self._first_arrival: dict[str, float] = {}  # destination → wall time of its first part
        self._ids_by_destination: dict[str, list[str]] = {}
        self._partial: dict[tuple[str, str, int], _Partial] = {}
        self._submits_seen = 0
        self._dropped_once = False
        # how often each "first N" personality has struck so far
        self._nacked = self._errored = self._unanswered = self._refused = self._garbaged = 0
        self._unbound_once = False
        self._tokens = float(max(1.0, cfg.tps_limit or 1.0))
        self._tokens_at = 0.0
        self._mo_ref = 0

        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._control_url: str | None = None
        self._conns: dict[_Connection, asyncio.Task[None]] = {}
        self._conn_ids = itertools.count(1)
        self._receivers: list[_Connection] = []
        self._rr = 0
        self._dirty: set[_Connection] = set()
        self._receipts: collections.deque[_Receipt] = collections.deque()
        self._undelivered: collections.deque[_Receipt] = collections.deque()
        self._receipt_wakeup = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        cfg = self.config
        self._stopping = False
        self._receipt_wakeup = asyncio.Event()
        self._tokens_at = asyncio.get_running_loop().time()
        self._server = await asyncio.start_server(self._on_connect, cfg.host, cfg.port,
                                                  ssl=_server_tls(cfg))
        self._scheduler = asyncio.create_task(self._run_receipts(), name="smsc-sim-receipts")
        if cfg.enquire_link_interval_s is not None:
            self._prober = asyncio.create_task(self._run_prober(cfg.enquire_link_interval_s),
                                               name="smsc-sim-enquire-link")
        if cfg.control_port is not None:
            await self._start_control(cfg.control_host, cfg.control_port)

    async def stop(self) -> None:
        """Unbind every bound ESME (waiting up to a second for unbind_resp), close the rest."""
        if self._server is None:
            return
        self._stopping = True
        server, self._server = self._server, None
        server.close()
        loop = asyncio.get_running_loop()
        for conn in list(self._conns):
            if conn.session.bound and not conn.closing:
                try:
                    conn.write_now(conn.session.send(Request(command="unbind"), now=loop.time()))
                except LocalProtocolError:
                    conn.writer.close()
            else:
                conn.closing = True
                conn.writer.close()
        tasks = list(self._conns.values())
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=1.0)
            for task in still:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for background in (self._scheduler, self._prober):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self._scheduler = self._prober = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._control_url = None
        await server.wait_closed()

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("simulator is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def control_url(self) -> str | None:
        return self._control_url

    @property
    def bound_connections(self) -> int:
        return sum(1 for c in self._conns if c.session.bound and not c.closing)

    # -- counters ----------------------------------------------------------------------------
    def messages(self, destination: str) -> list[str]:
        """Texts of the completed messages to ``destination``, in arrival order."""
        return list(self._by_destination.get(destination, ()))

    def first_arrivals(self, prefix: str = "") -> dict[str, float]:
        """Destination → wall-clock time (time.time()) its first accepted part arrived."""
        return {d: t for d, t in self._first_arrival.items() if d.startswith(prefix)}

    def submit_options(self, destination: str) -> list[dict[str, Any]]:
        """The SMPP options (TON/NPI, esm_class, priority, validity, registered_delivery,
        data_coding) of every accepted part for ``destination``, in arrival order."""
        return list(self._options_by_destination.get(destination, ()))

    def message_ids(self, destination: str) -> list[str]:
        """Message ids given (in submit_sm_resp, or not given: no_submit_response) to the
        accepted parts for ``destination``, in arrival order."""
        return list(self._ids_by_destination.get(destination, ()))

    def duplicates(self) -> dict[tuple[str, str], int]:
        """(destination, text) received more than once → how many times."""
        return {key: n for key, n in self.received.items() if n > 1}

    def reset_counters(self) -> None:
        """Forget every count and partial message (message ids keep increasing)."""
        self.received.clear()
        self._by_destination.clear()
        self._ids_by_destination.clear()
        self._options_by_destination.clear()
        self._first_arrival.clear()
        self._partial.clear()
        self.parts_received = self.submits_throttled = self.binds = 0
        self.receipts_sent = self.receipts_acked = self.receipts_rejected = self.mo_acked = 0
        self.enquire_links_received = self.enquire_links_answered = 0

    def stats(self) -> dict[str, int]:
        return {
            "parts_received": self.parts_received,
            "messages": len(self.received),
            "messages_total": sum(self.received.values()),
            "duplicates": len(self.duplicates()),
            "throttled": self.submits_throttled,
            "binds": self.binds,
            "bound": self.bound_connections,
            "unbinds_received": self.unbinds_received,
            "receipts_sent": self.receipts_sent,
            "receipts_pending": len(self._receipts) + len(self._undelivered),
            "mo_acked": self.mo_acked,
            # how often each personality struck (never reset: they decide what comes next)
            "nacked": self._nacked,
            "errored": self._errored,
            "unanswered": self._unanswered,
            "binds_refused": self._refused,
            "garbage_sent": self._garbaged,
        }

    # -- test hooks --------------------------------------------------------------------------
    async def inject_mo(self, *, source: str, destination: str, text: str,
                        data_coding: int | None = None, udh_parts: bool = True,
                        shuffle_parts: bool | None = None) -> int:
        """Send a mobile-originated message to a bound receiver; returns the parts sent.

        ``data_coding`` None picks GSM-7 or UCS-2 like a handset would; 8 forces UCS-2, 3 sends
        one latin-1 part. Long texts are split with a UDH, or with ``sar_*`` TLVs when
        ``udh_parts`` is False. ``shuffle_parts`` (default: ``config.shuffle_mo_parts``) sends
        the parts of a multipart message out of order (never in their own order).
        """
        conn = self._pick_receiver()
        if conn is None:
            raise NoReceiverError("no receiver or transceiver is bound")
        self._mo_ref = self._mo_ref % 255 + 1
        ref = self._mo_ref
        if data_coding == 3:
            raw = text.encode("latin-1")
            if len(raw) > 254:
                raise ValueError("latin-1 MO longer than 254 octets is not supported")
            parts: tuple[bytes, ...] = (raw,)
            esm_class, dc = 0, 3
        elif data_coding in (None, 0, 8):
            enc = encode_message(text, ref=ref, force_ucs2=data_coding == 8)
            if data_coding == 0 and enc.data_coding != 0:
                raise ValueError("text is not GSM-7 encodable; use data_coding 8")
            parts, esm_class, dc = enc.parts, enc.esm_class, enc.data_coding
        else:
            raise ValueError(f"unsupported MO data_coding {data_coding}")
        src_ton, src_npi = _ton_npi(source)
        dst_ton, dst_npi = _ton_npi(destination)
        now = asyncio.get_running_loop().time()
        total = len(parts)
        numbered = list(enumerate(parts, start=1))
        if self.config.shuffle_mo_parts if shuffle_parts is None else shuffle_parts:
            numbered = self._out_of_order(numbered)
        for seq, part in numbered:
            params: dict[str, Any] = {
                "source_addr": source, "source_addr_ton": src_ton, "source_addr_npi": src_npi,
                "destination_addr": destination, "dest_addr_ton": dst_ton,
                "dest_addr_npi": dst_npi, "esm_class": esm_class, "data_coding": dc,
                "short_message": part,
            }
            if total > 1 and not udh_parts:
                _, payload = split_udh(part, esm_class)
                params.update(esm_class=0, short_message=payload, sar_msg_ref_num=ref,
                              sar_total_segments=total, sar_segment_seqnum=seq)
            conn.pending.append(conn.session.send(
                Request(command="deliver_sm", params=params, ref=_MoRef(seq)), now=now))
        self._dirty.add(conn)
        await self._flush_dirty()
        log.info("MO injected from %s to %s: %d part(s) on %r", mask_msisdn(source),
                 mask_msisdn(destination), total, conn)
        return total

    def _out_of_order(self, items: list[_T]) -> list[_T]:
        """``items`` shuffled, and never left in their own order when there are two or more."""
        shuffled = list(items)
        self._rng.shuffle(shuffled)
        if len(shuffled) > 1 and shuffled == items:
            shuffled.append(shuffled.pop(0))
        return shuffled

    async def drop_connections(self) -> int:
        """Close every TCP connection abruptly (no unbind); returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.closing = True
            conn.writer.transport.abort()
        log.info("dropped %d connection(s)", len(conns))
        await asyncio.sleep(0)
        return len(conns)

    async def send_raw(self, data: bytes) -> int:
        """Write ``data`` as-is to every bound connection (garbage tests); returns how many."""
        conns = [c for c in self._conns if c.session.bound and not c.closing]
        for conn in conns:
            conn.write_now(data)
        for conn in conns:
            with contextlib.suppress(ConnectionError):
                await conn.writer.drain()
        return len(conns)

    # -- connections -------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(next(self._conn_ids), reader, writer)
        if self._stopping:
            writer.close()
            return
        self._conns[conn] = task
        log.debug("connection from %s (%r)", conn.peer, conn)
        try:
            await self._serve(conn)
        except (ConnectionError, OSError) as exc:
            log.info("connection %r lost: %s", conn, exc)
        except asyncio.CancelledError:
            pass  # stop() gave up waiting for this one
        except Exception:  # never let one connection take the simulator down
            log.exception("connection %r failed; closing it", conn)
        finally:
            self._forget(conn)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        read = conn.reader.read
        session = conn.session
        cfg = self.config
        # submit_sm_resps of one read go through _write_replies when they are delayed or
        # shuffled; otherwise straight into conn.pending, in order with every other reply
        batched = cfg.resp_delay_s > 0 or cfg.resp_jitter_s > 0 or cfg.shuffle_responses
        max_pdus = cfg.drop_after_pdus
        while not conn.closing:
            data = await read(_READ_SIZE)
            if not data:
                log.debug("%r: peer closed the connection", conn)
                break
            now = loop.time()
            session.receive_data(data, now=now)
            replies: list[bytes] = [] if batched else conn.pending
            for event in session.events():
                if not (cfg.black_hole and self._swallowed(conn, event)):
                    self._on_event(conn, event, now, replies)
                conn.pdus += 1
                if max_pdus is not None and conn.pdus >= max_pdus and not conn.closing:
                    conn.closing = True
                    log.info("drop_after_pdus=%d reached: closing %r", max_pdus, conn)
                if conn.closing:
                    break
            if replies is not conn.pending:
                self._write_replies(conn, replies)
            await self._flush_dirty()
        if conn.pending:
            conn.write_now(b"".join(conn.pending))
            conn.pending.clear()
        await self._hang_up(conn)

    async def _hang_up(self, conn: _Connection) -> None:
        """Close our side after what we wrote (FIN, not RST), and read until the peer closes.

        Closing a socket that still holds unread bytes makes the kernel send a reset, and a
        reset can destroy answers the peer has not read yet — which would turn answered
        submits into ambiguous ones. Answers to our own requests still count meanwhile.
        """
        writer = conn.writer
        if self._stopping or writer.is_closing() or not writer.can_write_eof():
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            conn.eof_sent = True
            writer.write_eof()
            async with asyncio.timeout(_HANG_UP_S):
                while data := await conn.reader.read(_READ_SIZE):
                    conn.session.receive_data(data, now=loop.time())
                    for event in conn.session.events():
                        if isinstance(event, Response):
                            self._on_response(conn, event)

    def _write_replies(self, conn: _Connection, replies: list[bytes]) -> None:
        """Write one read's submit_sm_resps: shuffled, delayed and jittered as configured."""
        if not replies:
            return
        cfg = self.config
        if cfg.shuffle_responses:
            replies = self._out_of_order(replies)
        delay, jitter = cfg.resp_delay_s, cfg.resp_jitter_s
        if delay <= 0 and jitter <= 0:
            conn.pending.extend(replies)
            self._dirty.add(conn)
            return
        loop = asyncio.get_running_loop()
        if jitter <= 0:
            loop.call_later(delay, conn.write_now, b"".join(replies))
            return
        for reply in replies:
            loop.call_later(delay + self._rng.uniform(0.0, jitter), conn.write_now, reply)

    def _swallowed(self, conn: _Connection, event: Event) -> bool:
        """Black hole: once bound, every request goes unanswered (True: ignore ``event``)."""
        if not conn.system_id or isinstance(event, Response):
            return False  # binding is answered, and answers to our own requests are read
        if isinstance(event, Received) and event.command == "unbind":
            conn.closing = True  # not even an unbind_resp: just hang up
        elif isinstance(event, BadPdu) and event.fatal:
            conn.closing = True
        log.debug("black hole: %r ignores %s", conn, type(event).__name__)
        return True

    def _forget(self, conn: _Connection) -> None:
        conn.closing = True
        self._conns.pop(conn, None)
        self._dirty.discard(conn)
        if conn in self._receivers:
            self._receivers.remove(conn)
        # dict.fromkeys: a receipt sent twice (duplicate_receipts) is queued again only once
        lost = list(dict.fromkeys(o.ref for o in conn.session.abandon()
                                  if isinstance(o.ref, _Receipt)))
        if lost and not self._stopping:
            # deliver_sm written but never answered: deliver again after the next bind
            self._undelivered.extendleft(reversed(lost))
            log.info("%d receipt(s) unacknowledged on %r; queued for redelivery", len(lost),
                     conn)
            self._receipt_wakeup.set()
        log.log(logging.INFO if conn.system_id else logging.DEBUG,
                "connection #%d from %s closed", conn.id, conn.peer)

    async def _flush_dirty(self) -> None:
        if not self._dirty:
            return
        dirty = list(self._dirty)
        self._dirty.clear()
        for conn in dirty:
            if conn.pending:
                conn.write_now(b"".join(conn.pending))
                conn.pending.clear()
        for conn in dirty:
            if not conn.writer.is_closing():
                with contextlib.suppress(ConnectionError):
                    await conn.writer.drain()

    def _reply(self, conn: _Connection, reply: Reply, now: float) -> bytes:
        """Bytes of ``reply``; replies the session state forbids (to a PDU sent in the wrong
        state, or a nack after a fatal error) are encoded without touching the session."""
        try:
            return conn.session.send(reply, now=now)
        except LocalProtocolError:
            return codec.encode(reply.command, sequence=reply.sequence, status=reply.status)

    # -- events ------------------------------------------------------------------------------
    def _on_event(self, conn: _Connection, event: Event, now: float,
                  replies: list[bytes]) -> None:
        """Act on one event; submit_sm_resps go to ``replies``, other answers to pending."""
        if isinstance(event, Received):
            command = event.pdu.command
            if command == "submit_sm":
                self._on_submit(conn, event.pdu, now, replies)
            elif command == "enquire_link":
                self.enquire_links_received += 1
                conn.pending.append(conn.session.send(
                    Reply(command="enquire_link_resp", sequence=event.sequence), now=now))
            elif command.startswith("bind_"):
                self._on_bind(conn, event, now)
            elif command == "unbind":
                self.unbinds_received += 1
                conn.pending.append(conn.session.send(
                    Reply(command="unbind_resp", sequence=event.sequence), now=now))
                conn.closing = True
                log.info("%r unbound by the ESME", conn)
            else:  # data_sm, query_sm: not offered by this SMSC
                conn.pending.append(self._reply(conn, Reply(
                    command=event.reply_command, sequence=event.sequence,
                    status=consts.SMPP_ESME_RINVCMDID), now))
        elif isinstance(event, Response):
            self._on_response(conn, event)
        elif isinstance(event, InvalidState):
            log.debug("%r sent %s in state %s", conn, event.pdu.command, event.state)
            conn.pending.append(self._reply(conn, event.reply, now))
        elif isinstance(event, BadPdu):
            log.warning("%r sent a bad PDU (%s)%s", conn, event.reason,
                        "; closing" if event.fatal else "")
            if event.reply is not None:
                conn.pending.append(self._reply(conn, event.reply, now))
            if event.fatal:
                conn.closing = True
        else:
            log.debug("%r sent a stray %s (sequence %d)", conn, event.pdu.command,
                      event.pdu.sequence)
        self._dirty.add(conn)

    def _on_bind(self, conn: _Connection, event: Received, now: float) -> None:
        cfg = self.config
        pdu = event.pdu
        system_id = pdu.text("system_id")
        status = consts.SMPP_ESME_ROK
        if self._refused < cfg.refuse_binds:
            self._refused += 1
            status = consts.SMPP_ESME_RBINDFAIL
        elif system_id != cfg.system_id:
            status = consts.SMPP_ESME_RINVSYSID
        elif pdu.text("password") != cfg.password:
            status = consts.SMPP_ESME_RINVPASWD
        elif cfg.max_binds is not None and self.bound_connections >= cfg.max_binds:
            status = consts.SMPP_ESME_RBINDFAIL
        params = {"system_id": cfg.smsc_system_id} if status == consts.SMPP_ESME_ROK else {}
        conn.pending.append(conn.session.send(Reply(
            command=event.reply_command, sequence=event.sequence, status=status,
            params=params), now=now))
        if status != consts.SMPP_ESME_ROK:
            log.info("bind refused for %r: %s", conn, codec.status_name(status))
            return
        conn.system_id = system_id
        self.binds += 1
        log.info("%r bound as %s (system_id %s)", conn, pdu.command.removeprefix("bind_"),
                 system_id)
        garbage = cfg.garbage_after_bind
        if garbage is not None and (cfg.garbage_count is None
                                    or self._garbaged < cfg.garbage_count):
            self._garbaged += 1
            conn.pending.append(garbage)
            log.info("garbage_after_bind: %d garbage byte(s) after the bind_resp to %r",
                     len(garbage), conn)
        if conn.can_receive:
            self._receivers.append(conn)
            if self._undelivered:
                pending = list(self._undelivered)
                self._undelivered.clear()
                self._dispatch(pending, now)

    def _on_response(self, conn: _Connection, event: Response) -> None:
        ref = event.ref
        if event.request == "deliver_sm":
            if isinstance(ref, _MoRef):
                if event.ok:
                    self.mo_acked += 1
            elif event.ok:
                self.receipts_acked += 1
            else:
                self.receipts_rejected += 1
                log.debug("%r refused a receipt: %s", conn, codec.status_name(event.status))
        elif event.request == "unbind":
            conn.closing = True
        elif event.request == "enquire_link" and event.ok:
            self.enquire_links_answered += 1

    # -- submit_sm ---------------------------------------------------------------------------
    def _on_submit(self, conn: _Connection, pdu: codec.Pdu, now: float,
                   out: list[bytes]) -> None:
        cfg = self.config
        self._submits_seen += 1
        if self._submits_seen == cfg.drop_after and not self._dropped_once:
            self._dropped_once = True
            conn.closing = True
            log.warning("drop_after=%d reached: closing %r without answering", cfg.drop_after,
                        conn)
            return
        if self._submits_seen == cfg.unbind_on_submit and not self._unbound_once:
            self._unbind_instead(conn, out, now)
            return
        refusal = self._refusal(conn, pdu, now)
        if refusal is not None:
            command, status = refusal
            out.append(conn.session.send(Reply(command=command, sequence=pdu.sequence,
                                               status=status), now=now))
            return
        params = pdu.params
        n = self._next_id
        self._next_id = n + 1
        message_id = f"{n:x}" if self._hex_ids else str(n)
        destination = params.get("destination_addr") or ""
        text = self._record_part(params, destination)
        self._ids_by_destination.setdefault(destination, []).append(message_id)
        if params.get("registered_delivery", 0) & 1:
            receipt = self._new_receipt(params, message_id, text, now)
            if cfg.receipt_before_resp:
                self._receipt_first(conn, receipt, now)
            else:
                self._receipts.append(receipt)
                if len(self._receipts) == 1:
                    self._receipt_wakeup.set()
        if cfg.no_submit_response and (cfg.no_submit_response_count is None
                                       or self._unanswered < cfg.no_submit_response_count):
            self._unanswered += 1
            log.debug("no_submit_response: submit_sm %d on %r accepted, never answered",
                      pdu.sequence, conn)
            return
        out.append(conn.session.send(Reply(command="submit_sm_resp", sequence=pdu.sequence,
                                           params={"message_id": message_id}), now=now))

    def _refusal(self, conn: _Connection, pdu: codec.Pdu, now: float
                 ) -> tuple[str, int] | None:
        """(reply command, error status) when this submit is refused, else None."""
        cfg = self.config
        if self._nacked < cfg.nack_submits:
            self._nacked += 1
            return "generic_nack", consts.SMPP_ESME_RSYSERR
        if cfg.submit_error_status is not None and (
                cfg.submit_error_count is None or self._errored < cfg.submit_error_count):
            self._errored += 1
            return "submit_sm_resp", cfg.submit_error_status
        destination = pdu.params.get("destination_addr") or ""
        if not destination or destination.startswith(cfg.reject_prefixes):
            return "submit_sm_resp", consts.SMPP_ESME_RINVDSTADR
        if cfg.tps_limit is not None and not self._take_token(now, cfg.tps_limit):
            self.submits_throttled += 1
            return "submit_sm_resp", consts.SMPP_ESME_RTHROTTLED
        if cfg.tps_per_bind is not None and not _take_bind_token(conn, now, cfg.tps_per_bind):
            self.submits_throttled += 1
            return "submit_sm_resp", consts.SMPP_ESME_RTHROTTLED
        return None

    def _unbind_instead(self, conn: _Connection, out: list[bytes], now: float) -> None:
        """unbind_on_submit: answer this submit with an unbind, then close the connection."""
        self._unbound_once = True
        if out is not conn.pending:  # answers to earlier submits of this read go first
            conn.pending.extend(out)
            out.clear()
        with contextlib.suppress(LocalProtocolError):
            conn.pending.append(conn.session.send(Request(command="unbind"), now=now))
        conn.closing = True
        log.warning("unbind_on_submit=%d reached: unbinding %r instead of answering",
                    self.config.unbind_on_submit, conn)

    def _receipt_first(self, conn: _Connection, receipt: _Receipt, now: float) -> None:
        """receipt_before_resp: the receipt goes out now, ahead of the submit_sm_resp."""
        self._dispatch([receipt], now)
        for other in list(self._dirty):  # a receiver on another connection: write it now
            if other is not conn and other.pending:
                other.write_now(b"".join(other.pending))
                other.pending.clear()

    def _take_token(self, now: float, rate: float) -> bool:
        """Token bucket holding one second's worth of submits."""
        tokens = min(max(1.0, rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False

    def _record_part(self, params: Mapping[str, Any], destination: str) -> str:
        """Count one accepted part; returns (the start of) its text for the receipt."""
        self.parts_received += 1
        self._first_arrival.setdefault(destination, time.time())
        self._options_by_destination.setdefault(destination, []).append(
            {k: params.get(k) for k in _OPTION_FIELDS})
        data_coding = params.get("data_coding", 0)
        esm_class = params.get("esm_class", 0)
        short_message = params.get("short_message") or _as_bytes(params.get("message_payload"))
        udh, payload = split_udh(short_message, esm_class) if esm_class & _ESM_UDHI else (
            None, short_message)
        ref = seq = 0
        if udh is not None:
            ref, total, seq = udh.ref, udh.total, udh.seq
        elif "sar_msg_ref_num" in params:
            ref = params["sar_msg_ref_num"]
            total = params.get("sar_total_segments") or 1
            seq = params.get("sar_segment_seqnum") or 1
        else:
            total = 1
        if total <= 1:
            text = decode_text(payload, data_coding)
            self._complete(destination, text)
            return text
        key = (params.get("source_addr") or "", destination, ref)
        partial = self._partial.get(key)
        if partial is None or partial.total != total:
            partial = self._partial[key] = _Partial(total=total, data_coding=data_coding)
        partial.parts[seq] = payload
        if len(partial.parts) == total:
            del self._partial[key]
            whole = b"".join(partial.parts.get(i, b"") for i in range(1, total + 1))
            self._complete(destination, decode_text(whole, partial.data_coding))
        return decode_text(payload[:40], data_coding)

    def _complete(self, destination: str, text: str) -> None:
        self.received[(destination, text)] += 1
        by_dest = self._by_destination.get(destination)
        if by_dest is None:
            self._by_destination[destination] = [text]
        else:
            by_dest.append(text)

    # -- receipts ----------------------------------------------------------------------------
    def _pick_state(self) -> ReceiptState:
        if self._single_state is not None:
            return self._single_state
        x = self._rng.random() * self._cum_weights[-1]
        return self._states[bisect.bisect_right(self._cum_weights, x)]

    def _receipt_id(self, message_id: str) -> str:
        fmt = self.config.receipt_id_format
        if fmt == "same" or fmt == self.config.message_id_format:
            return message_id
        value = int(message_id, 16 if self._hex_ids else 10)
        return f"{value:X}" if fmt == "hex" else str(value)

    def _new_receipt(self, params: Mapping[str, Any], message_id: str, text: str,
                     now: float) -> _Receipt:
        return _Receipt(
            due=now + self.config.receipt_delay_s,
            message_id=self._receipt_id(message_id).encode("ascii"),
            state=self._pick_state(),
            source=params.get("destination_addr") or "",
            source_ton=params.get("dest_addr_ton", 0),
            source_npi=params.get("dest_addr_npi", 0),
            destination=params.get("source_addr") or "",
            destination_ton=params.get("source_addr_ton", 0),
            destination_npi=params.get("source_addr_npi", 0),
            submitted_at=datetime.now(),
            text=text[:20],
        )

    async def _run_receipts(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._receipts
        while True:
            if not queue and not (self._undelivered and self._receivers):
                self._receipt_wakeup.clear()
                await self._receipt_wakeup.wait()
                continue
            now = loop.time()
            if queue and queue[0].due > now and not (self._undelivered and self._receivers):
                await asyncio.sleep(queue[0].due - now)
                continue
            batch: list[_Receipt] = []
            if self._undelivered and self._receivers:
                batch.extend(self._undelivered)
                self._undelivered.clear()
            while queue and queue[0].due <= now and len(batch) < 20_000:
                batch.append(queue.popleft())
            try:
                self._dispatch(batch, now)
                await self._flush_dirty()
            except Exception:  # a bug here must not stop every future receipt
                log.exception("receipt dispatch failed")

    def _dispatch(self, receipts: Iterable[_Receipt], now: float) -> None:
        """Send receipts round-robin to receivers; without one they wait for the next bind."""
        done = datetime.now()
        copies = 2 if self.config.duplicate_receipts else 1
        for rec in receipts:
            conn = self._pick_receiver()
            if conn is None:
                self._undelivered.append(rec)
                continue
            err = "000" if rec.state in _OK_ERR_STATES else "001"
            short_message = format_receipt_text(
                message_id=rec.message_id.decode("ascii"), state=rec.state,
                submit_date=rec.submitted_at, done_date=done, err=err, text=rec.text)
            params = {
                "source_addr": rec.source, "source_addr_ton": rec.source_ton,
                "source_addr_npi": rec.source_npi, "destination_addr": rec.destination,
                "dest_addr_ton": rec.destination_ton, "dest_addr_npi": rec.destination_npi,
                "esm_class": _ESM_RECEIPT, "short_message": short_message,
            }
            # TLVs appended by hand: smpplib's generic encoder costs ~10x the fast path
            tlvs = _receipt_tlvs(rec.message_id, _STATE_TLV_VALUE[rec.state])
            for _ in range(copies):
                base = conn.session.send(Request(command="deliver_sm", ref=rec, params=params),
                                         now=now)
                conn.pending.append(_LENGTH.pack(len(base) + len(tlvs)) + base[4:] + tlvs)
                self.receipts_sent += 1
            self._dirty.add(conn)

    def _pick_receiver(self) -> _Connection | None:
        receivers = self._receivers
        while receivers:
            self._rr = (self._rr + 1) % len(receivers)
            conn = receivers[self._rr]
            if conn.can_receive:
                return conn
            receivers.remove(conn)
        return None

    # -- enquire_link probing ----------------------------------------------------------------
    async def _run_prober(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(interval / 2, 1.0))
            now = loop.time()
            for conn in list(self._conns):
                session = conn.session
                if conn.closing or not session.bound:
                    continue
                late = any(o.command == "enquire_link" and now - o.sent_at > interval
                           for o in session.outstanding.values())
                if late:
                    log.warning("%r did not answer enquire_link in %.1fs; dropping it", conn,
                                interval)
                    conn.closing = True
                    conn.writer.transport.abort()
                elif session.enquire_link_due(now, interval):
                    conn.pending.append(session.send(Request(command="enquire_link"), now=now))
                    self._dirty.add(conn)
            await self._flush_dirty()

    # -- control endpoint --------------------------------------------------------------------
    async def _start_control(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/stats", self._http_stats)
        app.router.add_get("/arrivals", self._http_arrivals)
        app.router.add_post("/mo", self._http_mo)
        app.router.add_post("/drop", self._http_drop)
        app.router.add_post("/reset", self._http_reset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        addr = runner.addresses[0]
        self._control_url = f"http://{addr[0]}:{addr[1]}"

    async def _http_arrivals(self, request: web.Request) -> web.Response:
        """``GET /arrivals?prefix=849`` → {destination: epoch seconds of its first part}."""
        return web.json_response(self.first_arrivals(request.query.get("prefix", "")))

    async def _http_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _http_mo(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            source, destination, text = body["source"], body["destination"], body["text"]
            if not all(isinstance(v, str) for v in (source, destination, text)):
                raise TypeError("source, destination and text must be strings")
            data_coding = body.get("data_coding")
            if data_coding is not None and not isinstance(data_coding, int):
                raise TypeError("data_coding must be an integer")
            shuffle = body.get("shuffle_parts")
            if shuffle is not None and not isinstance(shuffle, bool):
                raise TypeError("shuffle_parts must be a boolean")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        try:
            parts = await self.inject_mo(source=source, destination=destination, text=text,
                                         data_coding=data_coding, shuffle_parts=shuffle)
        except NoReceiverError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"parts": parts})

    async def _http_drop(self, request: web.Request) -> web.Response:
        return web.json_response({"dropped": await self.drop_connections()})

    async def _http_reset(self, request: web.Request) -> web.Response:
        self.reset_counters()
        return web.json_response({"ok": True})


_BEHAVIOUR_FIELDS = (
    "black_hole", "no_submit_response", "no_submit_response_count", "nack_submits",
    "submit_error_status", "submit_error_count", "unbind_on_submit", "refuse_binds",
    "tps_limit", "drop_after", "drop_after_pdus", "garbage_after_bind", "garbage_count",
    "resp_delay_s", "resp_jitter_s", "shuffle_responses", "receipt_before_resp",
    "duplicate_receipts", "shuffle_mo_parts", "reject_prefixes", "max_binds",
    "enquire_link_interval_s",
)


def describe_personality(config: SimulatorConfig) -> str:
    """The non-default behaviour of ``config`` in one line ("happy" when there is none)."""
    happy = SimulatorConfig()
    parts = []
    for name in _BEHAVIOUR_FIELDS:
        value = getattr(config, name)
        if value != getattr(happy, name):
            shown = f"{len(value)} bytes" if isinstance(value, bytes) else value
            parts.append(f"{name}={shown}")
    return ", ".join(parts) or "happy"


async def serve_forever(config: SimulatorConfig) -> None:
    """Run a simulator until cancelled (the ``smsgw smsc-sim`` command)."""
    async with SmscSimulator(config) as sim:
        control = f", control {sim.control_url}" if sim.control_url else ""
        log.info("SMSC simulator listening on %s:%d (system_id %s)%s; personality: %s",
                 config.host, sim.port, config.system_id, control,
                 describe_personality(config))
        await asyncio.Event().wait()
