"""Sans-IO SMPP 3.4 session: bytes in → events out, events in → bytes out.

No sockets, no tasks, no clock: the caller passes ``now`` (any monotonic float) where time
matters and owns every timer. The same class plays either side — ``Role.ESME`` (our gateway)
or ``Role.SMSC`` (the simulator) — so tests join two sessions in memory.

Every state change is in :data:`TRANSITIONS`; a PDU that is not allowed in the current state is
a :class:`LocalProtocolError` when we try to send it and an :class:`InvalidState` event (answer
with ``ESME_RINVBNDSTS``) when the peer sends it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from smpplib import consts

from gateway.smpp import codec
from gateway.smpp.codec import Pdu, PduError


class Role(StrEnum):
    ESME = "esme"  # we initiate binds and submit_sm (the gateway)
    SMSC = "smsc"  # we accept binds and send deliver_sm (the simulator)


class State(StrEnum):
    OPEN = "open"  # connected, not bound
    BINDING = "binding"  # bind sent (ESME) or received (SMSC), response pending
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBINDING = "unbinding"  # unbind sent or received; only its response may follow
    CLOSED = "closed"  # unbound or broken: the connection must be closed


class BindMode(StrEnum):
    TRX = "transceiver"
    TX = "transmitter"
    RX = "receiver"


_BOUND_BY_MODE = {BindMode.TRX: State.BOUND_TRX, BindMode.TX: State.BOUND_TX,
                  BindMode.RX: State.BOUND_RX}
_BOUND = (State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX)
_CAN_TX = (State.BOUND_TX, State.BOUND_TRX)
_CAN_RX = (State.BOUND_RX, State.BOUND_TRX)

#: Request → the response command it expects.
RESPONSE_FOR = {
    "bind_transmitter": "bind_transmitter_resp", "bind_receiver": "bind_receiver_resp",
    "bind_transceiver": "bind_transceiver_resp", "submit_sm": "submit_sm_resp",
    "deliver_sm": "deliver_sm_resp", "enquire_link": "enquire_link_resp",
    "unbind": "unbind_resp", "data_sm": "data_sm_resp", "query_sm": "query_sm_resp",
}

# One table for every transition: (role, state, direction, command) → next state.
# ``"*bound"`` rows are expanded below for each bound state they list. A command missing from
# the table is illegal in that state. Responses that fail (status != 0) are handled in code:
# a failed bind response returns to OPEN.
_Key = tuple[Role, State, str, str]
TRANSITIONS: dict[_Key, State] = {}


def _allow(role: Role, states: tuple[State, ...], direction: str, commands: tuple[str, ...],
           to: State | None = None) -> None:
    for st in states:
        for cmd in commands:
            TRANSITIONS[(role, st, direction, cmd)] = to or st


_LINK = ("enquire_link", "enquire_link_resp", "generic_nack")
for _role in Role:
    _allow(_role, (State.OPEN, State.BINDING, *_BOUND, State.UNBINDING), "send", _LINK)
    _allow(_role, (State.OPEN, State.BINDING, *_BOUND, State.UNBINDING), "recv", _LINK)
    _allow(_role, _BOUND, "send", ("unbind",), State.UNBINDING)
    _allow(_role, _BOUND, "recv", ("unbind",), State.UNBINDING)
    _allow(_role, (State.UNBINDING,), "send", ("unbind_resp",), State.CLOSED)
    _allow(_role, (State.UNBINDING,), "recv", ("unbind_resp",), State.CLOSED)
# ESME side
for _mode in BindMode:
    _cmd = f"bind_{_mode.value}"
    _allow(Role.ESME, (State.OPEN,), "send", (_cmd,), State.BINDING)
    _allow(Role.ESME, (State.BINDING,), "recv", (f"{_cmd}_resp",), _BOUND_BY_MODE[_mode])
    _allow(Role.SMSC, (State.OPEN,), "recv", (_cmd,), State.BINDING)
    _allow(Role.SMSC, (State.BINDING,), "send", (f"{_cmd}_resp",), _BOUND_BY_MODE[_mode])
_allow(Role.ESME, _CAN_TX, "send", ("submit_sm", "data_sm", "query_sm"))
_allow(Role.ESME, (*_CAN_TX, State.UNBINDING), "recv",
       ("submit_sm_resp", "data_sm_resp", "query_sm_resp"))
_allow(Role.ESME, _CAN_RX, "recv", ("deliver_sm", "data_sm"))
_allow(Role.ESME, (*_CAN_RX, State.UNBINDING), "send", ("deliver_sm_resp", "data_sm_resp"))
_allow(Role.SMSC, _CAN_TX, "recv", ("submit_sm", "data_sm", "query_sm"))
_allow(Role.SMSC, (*_CAN_TX, State.UNBINDING), "send",
       ("submit_sm_resp", "data_sm_resp", "query_sm_resp"))
_allow(Role.SMSC, _CAN_RX, "send", ("deliver_sm", "data_sm"))
_allow(Role.SMSC, (*_CAN_RX, State.UNBINDING), "recv", ("deliver_sm_resp", "data_sm_resp"))


class LocalProtocolError(Exception):
    """We tried to do something the protocol or the session state forbids (our bug)."""


# --------------------------------------------------------------------------- events
# What we send (pass to Session.send) --------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A request PDU we originate; ``ref`` comes back on its :class:`Response`."""

    command: str
    params: Mapping[str, Any] = field(default_factory=dict)
    ref: Hashable = None

    def __post_init__(self) -> None:
        if self.command not in RESPONSE_FOR:
            raise LocalProtocolError(f"{self.command!r} is not a request PDU")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Our answer to the peer's request with ``sequence``."""

    command: str
    sequence: int
    status: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.command.endswith("_resp") or self.command == "generic_nack"):
            raise LocalProtocolError(f"{self.command!r} is not a response PDU")


# What we receive (returned by Session.receive_data / next_event) ------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """The peer sent a request; answer it with a :class:`Reply` of ``reply_command``."""

    pdu: Pdu

    @property
    def command(self) -> str:
        return self.pdu.command

    @property
    def sequence(self) -> int:
        return self.pdu.sequence

    @property
    def reply_command(self) -> str:
        return RESPONSE_FOR[self.pdu.command]


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The answer to one of our requests (a generic_nack counts as a failed answer)."""

    request: str  # our request's command
    ref: Hashable
    pdu: Pdu
    sent_at: float

    @property
    def status(self) -> int:
        return self.pdu.status

    @property
    def ok(self) -> bool:
        return self.pdu.status == consts.SMPP_ESME_ROK and self.pdu.command != "generic_nack"


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidState:
    """The peer sent ``pdu`` in a state where it is not allowed: answer ``reply``."""

    pdu: Pdu
    state: State
    reply: Reply


@dataclass(frozen=True, slots=True, kw_only=True)
class BadPdu:
    """The peer sent an undecodable or unknown PDU. ``reply`` is the generic_nack to send;
    when ``fatal`` the byte stream cannot be re-framed and the connection must be dropped."""

    reason: str
    fatal: bool
    reply: Reply | None
    #: "framing" (length unusable: drop now), "malformed" (a known PDU whose body does not
    #: parse: answer, then drop — the peer is confused), "unknown_command" (answer, go on)
    kind: str = "malformed"


@dataclass(frozen=True, slots=True, kw_only=True)
class StrayResponse:
    """A response whose sequence matches nothing outstanding (late or bogus): log it."""

    pdu: Pdu


Event = Received | Response | InvalidState | BadPdu | StrayResponse


@dataclass(slots=True)
class Outstanding:
    command: str
    ref: Hashable
    sent_at: float


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


# --------------------------------------------------------------------------- the session

class Session:
    """One SMPP session's protocol state. Not thread-safe; no I/O."""

    def __init__(self, role: Role, *, first_sequence: int = 1) -> None:
        self.role = role
        self.state = State.OPEN
        self._buf = bytearray()
        self._seq = first_sequence - 1
        self._outstanding: dict[int, Outstanding] = {}
        self.submits_outstanding = 0
        self.last_received_at = 0.0
        self.last_sent_at = 0.0

    # -- state queries ------------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self.state in _BOUND

    @property
    def can_submit(self) -> bool:
        return self.state in _CAN_TX

    @property
    def outstanding(self) -> Mapping[int, Outstanding]:
        return self._outstanding

    def enquire_link_due(self, now: float, interval: float) -> bool:
        """True when nothing was received for ``interval`` s and no probe is already out."""
        if self.state in (State.CLOSED, State.UNBINDING):
            return False
        probing = any(o.command == "enquire_link" for o in self._outstanding.values())
        return not probing and now - max(self.last_received_at, self.last_sent_at) >= interval

    def timed_out(self, now: float, timeout: float) -> list[tuple[int, Outstanding]]:
        """Remove and return the requests that have waited longer than ``timeout`` s."""
        late = [(s, o) for s, o in self._outstanding.items() if now - o.sent_at >= timeout]
        for seq, out in late:
            del self._outstanding[seq]
            if out.command == "submit_sm":
                self.submits_outstanding -= 1
        return late

    def abandon(self) -> list[Outstanding]:
        """The connection is gone: every outstanding request is now unanswered."""
        lost = list(self._outstanding.values())
        self._outstanding.clear()
        self.submits_outstanding = 0
        self.state = State.CLOSED
        return lost

    # -- sending ---------------------------------------------------------------------------
    def next_sequence(self) -> int:
        self._seq = self._seq + 1 if self._seq < 0x7FFFFFFF else 1
        return self._seq

    def send(self, event: Request | Reply, *, now: float = 0.0) -> bytes:
        """Bytes to write for ``event``; raises :class:`LocalProtocolError` if not allowed."""
        if isinstance(event, Reply) and event.status != consts.SMPP_ESME_ROK:
            # An error answer is allowed in any live state and changes nothing, except that
            # refusing a bind we are processing returns the session to OPEN.
            if self.state is State.CLOSED:
                raise LocalProtocolError(f"cannot send {event.command} on a closed session")
            data = codec.encode(event.command, sequence=event.sequence, status=event.status,
                                **event.params)
            if event.command.startswith("bind_") and self.state is State.BINDING:
                self.state = State.OPEN
            self.last_sent_at = now
            return data
        nxt = self._transition("send", event.command)
        if isinstance(event, Request):
            seq = self.next_sequence()
            data = codec.encode(event.command, sequence=seq, **event.params)
            self._outstanding[seq] = Outstanding(event.command, event.ref, now)
            if event.command == "submit_sm":
                self.submits_outstanding += 1
        else:
            data = codec.encode(event.command, sequence=event.sequence, **event.params)
        self.state = nxt
        self.last_sent_at = now
        return data

    def _transition(self, direction: str, command: str) -> State:
        nxt = TRANSITIONS.get((self.role, self.state, direction, command))
        if nxt is None:
            if direction == "send":
                raise LocalProtocolError(
                    f"cannot send {command} in state {self.state} as {self.role}")
            raise KeyError(command)
        return nxt

    # -- receiving -------------------------------------------------------------------------
    def receive_data(self, data: bytes, *, now: float = 0.0) -> None:
        """Feed bytes read from the connection (b"" is not EOF here; call abandon())."""
        if data and self.state is not State.CLOSED:
            self._buf += data
            self.last_received_at = now

    def events(self) -> Iterator[Event]:
        """Drain every complete PDU buffered so far."""
        while True:
            ev = self.next_event()
            if ev is NEED_DATA:
                return
            assert not isinstance(ev, _NeedData)
            yield ev

    def next_event(self) -> Event | _NeedData:
        if self.state is State.CLOSED:
            return NEED_DATA
        try:
            length = codec.frame_length(self._buf)
        except PduError as exc:
            self.state = State.CLOSED
            self._buf.clear()
            return BadPdu(reason=exc.reason, fatal=True, reply=None, kind="framing")
        if length is None or len(self._buf) < length:
            return NEED_DATA
        frame = bytes(self._buf[:length])
        del self._buf[:length]
        try:
            pdu = codec.decode(frame)
        except PduError as exc:
            if exc.fatal:
                self.state = State.CLOSED
                return BadPdu(reason=exc.reason, fatal=True, reply=None, kind="framing")
            return BadPdu(reason=exc.reason, fatal=False,
                          reply=Reply(command="generic_nack", sequence=exc.sequence,
                                      status=exc.status))
        return self._on_pdu(pdu)

    def _on_pdu(self, pdu: Pdu) -> Event:
        if pdu.command == "unknown":
            return BadPdu(reason=f"unsupported command_id 0x{pdu.command_id:08X}", fatal=False,
                          kind="unknown_command",
                          reply=Reply(command="generic_nack", sequence=pdu.sequence,
                                      status=consts.SMPP_ESME_RINVCMDID))
        if pdu.is_response:
            return self._on_response(pdu)
        try:
            nxt = self._transition("recv", pdu.command)
        except KeyError:
            return InvalidState(pdu=pdu, state=self.state, reply=Reply(
                command=RESPONSE_FOR.get(pdu.command, "generic_nack"), sequence=pdu.sequence,
                status=consts.SMPP_ESME_RINVBNDSTS))
        self.state = nxt
        return Received(pdu=pdu)

    def _on_response(self, pdu: Pdu) -> Event:
        out = self._outstanding.get(pdu.sequence)
        if out is None or (pdu.command != "generic_nack"
                           and RESPONSE_FOR[out.command] != pdu.command):
            return StrayResponse(pdu=pdu)
        del self._outstanding[pdu.sequence]
        if out.command == "submit_sm":
            self.submits_outstanding -= 1
        if pdu.command == "generic_nack" or pdu.status != consts.SMPP_ESME_ROK:
            if out.command.startswith("bind_"):
                self.state = State.OPEN
            elif out.command == "unbind":
                self.state = State.CLOSED
        else:
            nxt = TRANSITIONS.get((self.role, self.state, "recv", pdu.command))
            if nxt is not None:
                self.state = nxt
        return Response(request=out.command, ref=out.ref, pdu=pdu, sent_at=out.sent_at)
