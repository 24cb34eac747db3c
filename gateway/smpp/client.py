"""Asyncio ESME: a thin shell that moves bytes and runs timers around :class:`Session`.

One :class:`Bind` is one TCP connection with its own reconnect loop (exponential backoff with
jitter). :class:`EsmeClient` owns the binds of one SMSC account (a transceiver, or a
transmitter + receiver pair) and offers :meth:`EsmeClient.submit`, which waits for a free slot
in the send window, writes the ``submit_sm`` and returns its ``submit_sm_resp``.

Outcomes a caller must tell apart (they decide whether a resend can double an SMS):

* :class:`SubmitResult` — the SMSC answered (``status`` 0 = accepted);
* :class:`NotSent` — the PDU never left this process: safe to retry;
* :class:`Ambiguous` — the PDU was written but no answer came (connection lost, timeout): the
  SMSC may or may not have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from smpplib import consts

from gateway.config import SmppConfig
from gateway.smpp.codec import Pdu, status_name
from gateway.smpp.session import (
    BadPdu,
    BindMode,
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

log = logging.getLogger("smsgw.smpp.client")

DeliverHandler = Callable[[Pdu], Awaitable[int]]
"""Called for every deliver_sm (receipt or MO); returns the deliver_sm_resp command_status."""

THROTTLE_STATUSES = frozenset({consts.SMPP_ESME_RTHROTTLED, consts.SMPP_ESME_RMSGQFUL})


class BindObserver(Protocol):
    """What a bind reports as it happens (e.g. :class:`gateway.metrics.Metrics`)."""

    def submit_answered(self, link: str, status: int, latency_s: float) -> None:
        """A submit_sm_resp came back ``latency_s`` after its submit_sm was written."""

    def reconnecting(self, link: str) -> None:
        """A bind lost (or could not open) its connection and is about to retry."""


class NotSent(Exception):
    """The submit_sm was never written to the SMSC; retrying cannot double it."""


class Ambiguous(Exception):
    """The submit_sm was written but its response never came; the SMSC may have it."""


class Unsendable(Exception):
    """The submit_sm cannot be encoded (e.g. an address longer than SMPP allows): our side's
    data is wrong and no retry will help."""


@dataclass(frozen=True, slots=True)
class SubmitResult:
    status: int
    message_id: str
    latency_s: float
    bind: str

    @property
    def ok(self) -> bool:
        return self.status == int(consts.SMPP_ESME_ROK)

    @property
    def status_name(self) -> str:
        return status_name(self.status)


def _tls_context(cfg: SmppConfig) -> ssl.SSLContext:
    """TLS for SMPP over TLS (often port 3550); verification on unless configured off."""
    ctx = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
    if not cfg.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Connection:
    """One live TCP connection and its session (exists only while connected)."""

    def __init__(self, session: Session, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, window: int) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.slots = asyncio.Semaphore(window)
        self.closed = asyncio.Event()
        self._out: list[bytes] = []  # PDUs encoded since the last flush

    def write(self, event: Request | Reply) -> None:
        """Encode now (errors raise here); the bytes go out with everything else written in
        this turn of the event loop, in one send instead of one per PDU."""
        data = self.session.send(event, now=time.monotonic())
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            if not self.writer.is_closing():
                self.writer.write(data)

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    def close(self) -> None:
        self.flush()
        if not self.writer.is_closing():
            self.writer.close()
        self.closed.set()


class Bind:
    """One bind (TCP connection) that keeps itself connected until :meth:`stop`."""

    def __init__(self, config: SmppConfig, mode: BindMode, *, name: str,
                 on_deliver: DeliverHandler, link: str = "",
                 observer: BindObserver | None = None) -> None:
        self.config = config
        self.mode = mode
        self.name = name
        self.link = link or config.name  # the link this bind belongs to (metrics label)
        self.observer = observer
        self._on_deliver = on_deliver
        self._conn: _Connection | None = None
        self._bound = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._deliver_tasks: set[asyncio.Task[None]] = set()
        self.reconnects = 0
        self.last_error = ""

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"smpp-bind-{self.name}")

    @property
    def bound(self) -> bool:
        return self._conn is not None and self._conn.session.bound and self._bound.is_set()

    @property
    def can_submit(self) -> bool:
        return self.bound and self.mode is not BindMode.RX

    @property
    def in_flight(self) -> int:
        return 0 if self._conn is None else self._conn.session.submits_outstanding

    @property
    def state(self) -> str:
        return "disconnected" if self._conn is None else str(self._conn.session.state)

    async def wait_bound(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._bound.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, wait for in-flight responses, unbind, close."""
        self._stopping = True
        conn = self._conn
        deadline = time.monotonic() + timeout
        if conn is not None and conn.session.bound:
            while conn.session.submits_outstanding and time.monotonic() < deadline - 1:
                await asyncio.sleep(0.01)
            with contextlib.suppress(Exception):
                fut = asyncio.get_running_loop().create_future()
                conn.write(Request(command="unbind", ref=fut))
                await conn.drain()
                await asyncio.wait_for(fut, max(0.1, min(5.0, deadline - time.monotonic())))
        if self._deliver_tasks:
            await asyncio.wait(self._deliver_tasks, timeout=max(0.1, deadline - time.monotonic()))
        if conn is not None:
            conn.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- submitting ------------------------------------------------------------------------
    async def submit(self, params: Mapping[str, Any]) -> SubmitResult:
        conn = self._conn
        if self._stopping or conn is None or not conn.session.can_submit:
            raise NotSent(f"bind {self.name} is not bound for sending")
        async with conn.slots:
            if conn is not self._conn or not conn.session.can_submit or self._stopping:
                raise NotSent(f"bind {self.name} lost its connection before the write")
            fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            sent_at = time.monotonic()
            try:
                conn.write(Request(command="submit_sm", params=params, ref=fut))
            except LocalProtocolError as exc:
                raise NotSent(f"bind {self.name} cannot send now: {exc}") from exc
            except ValueError as exc:
                raise Unsendable(str(exc)) from exc
            except (ConnectionError, RuntimeError) as exc:
                raise NotSent(f"write failed on {self.name}: {exc}") from exc
            resp = await fut  # Ambiguous is set on it when the answer cannot come
        latency = time.monotonic() - sent_at
        if self.observer is not None:
            self.observer.submit_answered(self.link, resp.status, latency)
        return SubmitResult(status=resp.status, message_id=resp.pdu.text("message_id"),
                            latency_s=latency, bind=self.name)

    # -- connection loop -------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._stopping:
            try:
                await self._connect_and_serve()
                delay = self.config.reconnect_min_s  # it was up: start backoff again
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every peer/IO failure ends here; never crash the service
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("bind %s: %s", self.name, self.last_error)
            if self._stopping:
                break
            self.reconnects += 1
            if self.observer is not None:
                self.observer.reconnecting(self.link)
            sleep = min(self.config.reconnect_max_s, delay) * random.uniform(0.5, 1.0)
            log.info("bind %s: reconnecting in %.1fs", self.name, sleep)
            await asyncio.sleep(sleep)
            delay = min(self.config.reconnect_max_s, delay * 2)

    async def _connect_and_serve(self) -> None:
        cfg = self.config
        tls = _tls_context(cfg) if cfg.tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.host, cfg.port, ssl=tls,
                                    server_hostname=cfg.host if tls else None),
            cfg.bind_timeout_s)
        conn = _Connection(Session(Role.ESME), reader, writer, cfg.window)
        self._conn = conn
        reader_task = asyncio.create_task(self._read_loop(conn), name=f"smpp-read-{self.name}")
        timer_task = asyncio.create_task(self._timer_loop(conn), name=f"smpp-timer-{self.name}")
        try:
            await self._bind(conn)
            self.last_error = ""
            log.info("bind %s: bound as %s to %s:%s", self.name, self.mode.value, cfg.host,
                     cfg.port)
            self._bound.set()
            await conn.closed.wait()
            if reader_task.done() and not reader_task.cancelled() and reader_task.exception():
                raise reader_task.exception()  # type: ignore[misc]
        finally:
            self._bound.clear()
            self._conn = None
            conn.close()
            for lost in conn.session.abandon():
                fut = lost.ref
                if isinstance(fut, asyncio.Future) and not fut.done():
                    fut.set_exception(Ambiguous(f"connection {self.name} lost before the "
                                                f"{lost.command} response"))
            for t in (reader_task, timer_task):
                t.cancel()
            await asyncio.gather(reader_task, timer_task, return_exceptions=True)

    async def _bind(self, conn: _Connection) -> None:
        cfg = self.config
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        conn.write(Request(command=f"bind_{self.mode.value}", ref=fut, params={
            "system_id": cfg.system_id, "password": cfg.password,
            "system_type": cfg.system_type}))
        resp = await asyncio.wait_for(fut, cfg.bind_timeout_s)
        if not resp.ok:
            raise ConnectionError(
                f"SMSC refused the bind of {cfg.system_id!r}: {status_name(resp.status)} "
                "(check smpp.system_id / smpp.password)")

    async def _read_loop(self, conn: _Connection) -> None:
        try:
            while True:
                data = await conn.reader.read(65536)
                if not data:
                    log.warning("bind %s: SMSC closed the connection", self.name)
                    return
                conn.session.receive_data(data, now=time.monotonic())
                for ev in conn.session.events():
                    if not self._handle(conn, ev):
                        return
        finally:
            conn.close()

    def _handle(self, conn: _Connection, ev: object) -> bool:
        """Act on one event; False when the connection must be dropped."""
        if isinstance(ev, Response):
            fut = ev.ref
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_result(ev)
            return conn.session.state is not State.CLOSED
        if isinstance(ev, Received):
            return self._on_request(conn, ev)
        if isinstance(ev, BadPdu):
            if ev.reply is not None and not ev.fatal:
                conn.write(ev.reply)
            if ev.kind == "unknown_command":
                log.warning("bind %s: SMSC sent %s; answered generic_nack", self.name, ev.reason)
                return True
            log.warning("bind %s: bad PDU from SMSC (%s); dropping the connection", self.name,
                        ev.reason)
            return False
        if isinstance(ev, InvalidState):
            log.warning("bind %s: SMSC sent %s in state %s", self.name, ev.pdu.command, ev.state)
            conn.write(ev.reply)
            return True
        if isinstance(ev, StrayResponse):
            log.warning("bind %s: response to unknown sequence %d (%s)", self.name,
                        ev.pdu.sequence, ev.pdu.command)
        return True

    def _on_request(self, conn: _Connection, ev: Received) -> bool:
        cmd = ev.command
        if cmd == "enquire_link":
            conn.write(Reply(command="enquire_link_resp", sequence=ev.sequence))
        elif cmd == "unbind":
            log.info("bind %s: SMSC asked to unbind", self.name)
            conn.write(Reply(command="unbind_resp", sequence=ev.sequence))
            return False
        elif cmd in ("deliver_sm", "data_sm"):
            task = asyncio.create_task(self._deliver(conn, ev))
            self._deliver_tasks.add(task)
            task.add_done_callback(self._deliver_tasks.discard)
        else:
            conn.write(Reply(command=ev.reply_command, sequence=ev.sequence,
                             status=consts.SMPP_ESME_RINVCMDID))
        return True

    async def _deliver(self, conn: _Connection, ev: Received) -> None:
        try:
            status = await self._on_deliver(ev.pdu)
        except Exception:
            log.exception("bind %s: deliver handler failed; answering ESME_RX_T_APPN", self.name)
            status = consts.SMPP_ESME_RX_T_APPN  # temporary error: the SMSC will redeliver
        if not conn.closed.is_set():
            params = {"message_id": ""} if ev.reply_command == "deliver_sm_resp" else {}
            with contextlib.suppress(Exception):
                conn.write(Reply(command=ev.reply_command, sequence=ev.sequence, status=status,
                                 params=params))

    async def _timer_loop(self, conn: _Connection) -> None:
        cfg = self.config
        tick = max(0.05, min(1.0, cfg.enquire_link_s / 4, cfg.response_timeout_s / 4))
        while not conn.closed.is_set():
            await asyncio.sleep(tick)
            now = time.monotonic()
            for _, late in conn.session.timed_out(now, cfg.response_timeout_s):
                if late.command == "enquire_link":
                    log.warning("bind %s: enquire_link unanswered for %.0fs; dropping", self.name,
                                cfg.response_timeout_s)
                    conn.close()
                    return
                fut = late.ref
                if isinstance(fut, asyncio.Future) and not fut.done():
                    fut.set_exception(Ambiguous(
                        f"no {late.command}_resp within {cfg.response_timeout_s}s on {self.name}"))
            if conn.session.bound and conn.session.enquire_link_due(now, cfg.enquire_link_s):
                conn.write(Request(command="enquire_link"))


class EsmeClient:
    """The binds of one SMSC account; spreads submits over the binds that can send."""

    def __init__(self, config: SmppConfig, *, on_deliver: DeliverHandler,
                 name: str = "smsc", observer: BindObserver | None = None) -> None:
        self.config = config
        modes = [BindMode.TRX] if config.bind_mode == "trx" else [BindMode.TX, BindMode.RX]
        self.binds = [Bind(config, m, name=f"{name}-{m.name.lower()}{i}", on_deliver=on_deliver,
                           link=name, observer=observer)
                      for i in range(1, config.binds + 1) for m in modes]
        self._rr = 0

    def start(self) -> None:
        for b in self.binds:
            b.start()

    async def stop(self, timeout: float = 10.0) -> None:
        await asyncio.gather(*(b.stop(timeout) for b in self.binds))

    @property
    def bound(self) -> bool:
        return all(b.bound for b in self.binds)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.binds)

    async def wait_bound(self, timeout: float | None = None) -> bool:
        results = await asyncio.gather(*(b.wait_bound(timeout) for b in self.binds))
        return all(results)

    async def submit(self, params: Mapping[str, Any], *, wait_s: float = 5.0) -> SubmitResult:
        """Submit one part; waits up to ``wait_s`` for a bind that can send (else NotSent)."""
        deadline = time.monotonic() + wait_s
        while True:
            senders = [b for b in self.binds if b.can_submit]
            if senders:
                self._rr = (self._rr + 1) % len(senders)
                return await senders[self._rr].submit(params)
            if time.monotonic() >= deadline:
                raise NotSent("no SMPP bind is up for sending")
            await asyncio.sleep(0.05)

    def status(self) -> list[dict[str, Any]]:
        return [{"bind": b.name, "mode": b.mode.value, "state": b.state, "bound": b.bound,
                 "in_flight": b.in_flight, "reconnects": b.reconnects,
                 "last_error": b.last_error} for b in self.binds]
