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
* personalities for failure tests: a TPS limit answered with ``ESME_RTHROTTLED``, slow
  responses, a dropped connection on the Nth submit, enquire_link probing, a bind limit;
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
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

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

_RECEIVING = (State.BOUND_RX, State.BOUND_TRX)
_ESM_UDHI = 0x40
_ESM_RECEIPT = 0x04
_READ_SIZE = 256 * 1024
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

    def __post_init__(self) -> None:
        if not self.receipt_mix:
            raise ValueError("receipt_mix needs at least one (state, weight) pair")
        for state, weight in self.receipt_mix:
            if state not in ReceiptState.__members__:
                raise ValueError(f"unknown receipt state {state!r} in receipt_mix")
            if weight < 0:
                raise ValueError(f"negative weight {weight} for {state} in receipt_mix")
        if sum(w for _, w in self.receipt_mix) <= 0:
            raise ValueError("receipt_mix weights must not all be zero")
        if self.message_id_format not in ("hex", "decimal"):
            raise ValueError(f"message_id_format must be 'hex' or 'decimal', "
                             f"not {self.message_id_format!r}")
        if self.tps_limit is not None and self.tps_limit <= 0:
            raise ValueError("tps_limit must be positive (or None for no limit)")
        if self.drop_after is not None and self.drop_after < 1:
            raise ValueError("drop_after counts submits from 1")
        if self.enquire_link_interval_s is not None and self.enquire_link_interval_s <= 0:
            raise ValueError("enquire_link_interval_s must be positive")
        if self.receipt_delay_s < 0 or self.resp_delay_s < 0:
            raise ValueError("delays must not be negative")


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


class _Connection:
    """One TCP connection: the session, and replies waiting to be written."""

    __slots__ = ("closing", "id", "peer", "pending", "reader", "session", "system_id",
                 "writer")

    def __init__(self, cid: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.id = cid
        self.reader = reader
        self.writer = writer
        self.session = Session(Role.SMSC)
        self.pending: list[bytes] = []
        self.closing = False
        self.system_id = ""
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def __repr__(self) -> str:
        return f"<conn #{self.id} {self.peer} {self.session.state}>"

    @property
    def can_receive(self) -> bool:
        return not self.closing and self.session.state in _RECEIVING

    def write_now(self, data: bytes) -> None:
        if not self.writer.is_closing():
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
        self.receipts_sent = self.receipts_acked = self.receipts_rejected = self.mo_acked = 0
        self.enquire_links_received = 0  # probes from ESMEs that we answered
        self.enquire_links_answered = 0  # our probes that ESMEs answered

        self._by_destination: dict[str, list[str]] = {}
        self._partial: dict[tuple[str, str, int], _Partial] = {}
        self._submits_seen = 0
        self._dropped_once = False
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
        self._server = await asyncio.start_server(self._on_connect, cfg.host, cfg.port)
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

    def duplicates(self) -> dict[tuple[str, str], int]:
        """(destination, text) received more than once → how many times."""
        return {key: n for key, n in self.received.items() if n > 1}

    def reset_counters(self) -> None:
        """Forget every count and partial message (message ids keep increasing)."""
        self.received.clear()
        self._by_destination.clear()
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
            "receipts_sent": self.receipts_sent,
            "receipts_pending": len(self._receipts) + len(self._undelivered),
            "mo_acked": self.mo_acked,
        }

    # -- test hooks --------------------------------------------------------------------------
    async def inject_mo(self, *, source: str, destination: str, text: str,
                        data_coding: int | None = None, udh_parts: bool = True) -> int:
        """Send a mobile-originated message to a bound receiver; returns the parts sent.

        ``data_coding`` None picks GSM-7 or UCS-2 like a handset would; 8 forces UCS-2, 3 sends
        one latin-1 part. Long texts are split with a UDH, or with ``sar_*`` TLVs when
        ``udh_parts`` is False.
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
        for seq, part in enumerate(parts, start=1):
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
        delay = self.config.resp_delay_s
        while not conn.closing:
            data = await read(_READ_SIZE)
            if not data:
                log.debug("%r: peer closed the connection", conn)
                break
            now = loop.time()
            session.receive_data(data, now=now)
            delayed: list[bytes] | None = [] if delay > 0 else None
            for event in session.events():
                self._on_event(conn, event, now, delayed)
                if conn.closing:
                    break
            if delayed:
                loop.call_later(delay, conn.write_now, b"".join(delayed))
            await self._flush_dirty()
        if conn.pending:
            conn.write_now(b"".join(conn.pending))
            conn.pending.clear()

    def _forget(self, conn: _Connection) -> None:
        conn.closing = True
        self._conns.pop(conn, None)
        self._dirty.discard(conn)
        if conn in self._receivers:
            self._receivers.remove(conn)
        lost = [o.ref for o in conn.session.abandon() if isinstance(o.ref, _Receipt)]
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
    def _on_event(self, conn: _Connection,
                  event: Event, now: float, delayed: list[bytes] | None) -> None:
        if isinstance(event, Received):
            command = event.pdu.command
            if command == "submit_sm":
                self._on_submit(conn, event.pdu, now, delayed)
            elif command == "enquire_link":
                self.enquire_links_received += 1
                conn.pending.append(conn.session.send(
                    Reply(command="enquire_link_resp", sequence=event.sequence), now=now))
            elif command.startswith("bind_"):
                self._on_bind(conn, event, now)
            elif command == "unbind":
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
        if system_id != cfg.system_id:
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
                   delayed: list[bytes] | None) -> None:
        cfg = self.config
        self._submits_seen += 1
        if self._submits_seen == cfg.drop_after and not self._dropped_once:
            self._dropped_once = True
            conn.closing = True
            log.warning("drop_after=%d reached: closing %r without answering", cfg.drop_after,
                        conn)
            return
        out = conn.pending if delayed is None else delayed
        params = pdu.params
        destination = params.get("destination_addr") or ""
        if not destination or destination.startswith(cfg.reject_prefixes):
            out.append(conn.session.send(Reply(command="submit_sm_resp", sequence=pdu.sequence,
                                               status=consts.SMPP_ESME_RINVDSTADR), now=now))
            return
        if cfg.tps_limit is not None and not self._take_token(now, cfg.tps_limit):
            self.submits_throttled += 1
            out.append(conn.session.send(Reply(command="submit_sm_resp", sequence=pdu.sequence,
                                               status=consts.SMPP_ESME_RTHROTTLED), now=now))
            return
        n = self._next_id
        self._next_id = n + 1
        message_id = f"{n:x}" if self._hex_ids else str(n)
        out.append(conn.session.send(Reply(command="submit_sm_resp", sequence=pdu.sequence,
                                           params={"message_id": message_id}), now=now))
        text = self._record_part(params, destination)
        if params.get("registered_delivery", 0) & 1:
            self._schedule_receipt(params, message_id, text, now)

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

    def _schedule_receipt(self, params: Mapping[str, Any], message_id: str, text: str,
                          now: float) -> None:
        self._receipts.append(_Receipt(
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
        ))
        if len(self._receipts) == 1:
            self._receipt_wakeup.set()

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
        for rec in receipts:
            conn = self._pick_receiver()
            if conn is None:
                self._undelivered.append(rec)
                continue
            err = "000" if rec.state in _OK_ERR_STATES else "001"
            short_message = format_receipt_text(
                message_id=rec.message_id.decode("ascii"), state=rec.state,
                submit_date=rec.submitted_at, done_date=done, err=err, text=rec.text)
            base = conn.session.send(Request(command="deliver_sm", ref=rec, params={
                "source_addr": rec.source, "source_addr_ton": rec.source_ton,
                "source_addr_npi": rec.source_npi, "destination_addr": rec.destination,
                "dest_addr_ton": rec.destination_ton, "dest_addr_npi": rec.destination_npi,
                "esm_class": _ESM_RECEIPT, "short_message": short_message,
            }), now=now)
            # TLVs appended by hand: smpplib's generic encoder costs ~10x the fast path
            tlvs = _receipt_tlvs(rec.message_id, _STATE_TLV_VALUE[rec.state])
            conn.pending.append(_LENGTH.pack(len(base) + len(tlvs)) + base[4:] + tlvs)
            self._dirty.add(conn)
            self.receipts_sent += 1

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
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        try:
            parts = await self.inject_mo(source=source, destination=destination, text=text,
                                         data_coding=data_coding)
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


async def serve_forever(config: SimulatorConfig) -> None:
    """Run a simulator until cancelled (the ``smsgw smsc-sim`` command)."""
    async with SmscSimulator(config) as sim:
        control = f", control {sim.control_url}" if sim.control_url else ""
        log.info("SMSC simulator listening on %s:%d (system_id %s)%s", config.host, sim.port,
                 config.system_id, control)
        await asyncio.Event().wait()
