"""Mobile-originated (MO) messages: from deliver_sm parts to whole texts.

The first half is pure (no I/O, no clock): :func:`part_from_pdu` turns one deliver_sm (or
data_sm) into a :class:`MoPart`, :func:`assemble` joins the parts of one message. The second
half, :class:`MoReceiver`, is the deliver_sm handler for MO: it stores each part through
:class:`~gateway.store.inbound.InboundStore` and answers ``ESME_ROK`` only once the part is
committed, so a crash can never lose an acknowledged MO (the SMSC redelivers whatever we did
not acknowledge, and the dedupe key turns that redelivery into a no-op).

Concatenation is read from a UDH (esm_class 0x40; IE 0x00 with an 8-bit reference or IE 0x08
with a 16-bit one) or from the ``sar_*`` TLVs. The text may come in ``short_message`` or in the
``message_payload`` TLV (which wins when both are present).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
from smpplib import consts

from gateway.masking import mask_msisdn
from gateway.smpp.codec import Pdu
from gateway.smpp.encoding import DATA_CODING_UCS2, ESM_CLASS_UDHI, decode_text, split_udh

if TYPE_CHECKING:
    from gateway.store.inbound import InboundMessage, InboundStore

log = logging.getLogger("smsgw.mo")

ESME_ROK: int = consts.SMPP_ESME_ROK
#: "temporary application error": the SMSC keeps the MO and delivers it again later.
ESME_RX_T_APPN: int = consts.SMPP_ESME_RX_T_APPN

#: Width of the dedupe time bucket (seconds); see :func:`dedupe_key`.
DEFAULT_BUCKET_S = 600.0
#: Suggested age after which the sweeper flushes an incomplete group (seconds).
MO_FLUSH_AFTER_S = 600.0
MAX_PARTS = 255

_LEN = struct.Struct(">I")
_NUMBERS = struct.Struct(">iiiiiq")
_KEY_VERSION = b"smsgw-mo-dedupe-v1"

# Errors of the database (or of reaching it) that make an MO "not stored, try again later".
# InternalClientError: what asyncpg raises when the server closed a pooled connection in the
# middle of a query (a Postgres restart) and resetting it for the pool fails.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class MoPart:
    """One received part of an MO. A single-part message has ``ref`` None, total 1, seq 1."""

    link: str  # the SMSC link it came from (not the bind: parts may arrive on several binds)
    source: str  # the subscriber
    destination: str  # our short code / service number
    ref: int | None  # concatenation reference (8- or 16-bit UDH, or sar_msg_ref_num)
    total: int
    seq: int
    data_coding: int
    payload: bytes  # the text octets, UDH removed
    dedupe_key: str


# --------------------------------------------------------------------------- parsing


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _octets(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("latin-1", errors="replace")
    return b""


def _concatenation(pdu: Pdu, raw: bytes, esm_class: int) -> tuple[int | None, int, int, bytes]:
    """(ref, total, seq, payload): from the UDH first, else from the SAR TLVs, else single."""
    payload = raw
    if esm_class & ESM_CLASS_UDHI:
        udh, payload = split_udh(raw, esm_class)
        if udh is not None and udh.total > 1:
            return udh.ref, udh.total, udh.seq, payload
    total = _int(pdu.get("sar_total_segments"), 1)
    seq = _int(pdu.get("sar_segment_seqnum"), 1)
    ref = _int(pdu.get("sar_msg_ref_num"))
    if 1 < total <= MAX_PARTS and 1 <= seq <= total and 0 <= ref <= 0xFFFF:
        return ref, total, seq, payload
    return None, 1, 1, payload


def time_bucket(now: float, bucket_s: float = DEFAULT_BUCKET_S) -> int:
    """Number of the ``bucket_s``-wide window that ``now`` (epoch seconds) falls in."""
    if bucket_s <= 0:
        raise ValueError("bucket_s must be positive")
    return int(now // bucket_s)


def dedupe_key(*, link: str, source: str, destination: str, data_coding: int, esm_class: int,
               ref: int | None, total: int, seq: int, payload: bytes, bucket: int) -> str:
    """Identity of one received deliver_sm part, for recognising a redelivery.

    An SMSC resends a deliver_sm whose deliver_sm_resp it did not get (our answer was lost,
    or we answered ESME_RX_T_APPN), usually with another sequence number, and SMPP 3.4 gives an
    MO no id of its own. So a part is identified by what it says: link, source, destination,
    data_coding, esm_class, the concatenation fields and the payload (sha256 over all of them,
    each length-prefixed) -- plus ``bucket``, a coarse time window (see :func:`time_bucket`).

    The trade-off of the bucket: without it, a subscriber who legitimately sends the same
    short text again ("KT" twice, a day apart) would be swallowed as a duplicate forever; with
    it, the same text sent twice *within* the window also counts as one message, and a
    redelivery that arrives in a later window is not recognised. :class:`MoReceiver` checks the
    previous window's key too, so a redelivery is always caught within ``bucket_s`` and never
    after ``2 * bucket_s``; an identical re-send inside that span is taken for a redelivery.
    """
    h = hashlib.sha256(_KEY_VERSION)
    for text in (link, source, destination):
        raw = text.encode("utf-8", errors="surrogatepass")
        h.update(_LEN.pack(len(raw)))
        h.update(raw)
    h.update(_NUMBERS.pack(data_coding, esm_class, -1 if ref is None else ref, total, seq,
                           bucket))
    h.update(_LEN.pack(len(payload)))
    h.update(payload)
    return h.hexdigest()


def part_from_pdu(pdu: Pdu, *, link: str, bucket: int) -> MoPart:
    """The MO part carried by a deliver_sm / data_sm; never raises.

    ``bucket`` is the dedupe time window (``time_bucket(time.time(), bucket_s)`` in
    production; tests pass fixed values). A malformed concatenation header or out-of-range
    SAR fields make the PDU a single-part message, so its text is kept rather than dropped.
    """
    esm_class = _int(pdu.get("esm_class"))
    data_coding = _int(pdu.get("data_coding"))
    raw = _octets(pdu.get("message_payload")) or _octets(pdu.get("short_message"))
    ref, total, seq, payload = _concatenation(pdu, raw, esm_class)
    source = pdu.text("source_addr")
    destination = pdu.text("destination_addr")
    key = dedupe_key(link=link, source=source, destination=destination,
                     data_coding=data_coding, esm_class=esm_class, ref=ref, total=total,
                     seq=seq, payload=payload, bucket=bucket)
    return MoPart(link=link, source=source, destination=destination, ref=ref, total=total,
                  seq=seq, data_coding=data_coding, payload=payload, dedupe_key=key)


# --------------------------------------------------------------------------- assembly


def _runs(parts: Sequence[MoPart]) -> list[list[MoPart]]:
    """Parts (one per seq, sorted) cut into runs of consecutive seqs with one data_coding."""
    runs: list[list[MoPart]] = []
    for part in parts:
        if runs:
            last = runs[-1][-1]
            if part.seq == last.seq + 1 and part.data_coding == last.data_coding:
                runs[-1].append(part)
                continue
        runs.append([part])
    return runs


def _decode_run(run: Sequence[MoPart]) -> str:
    data_coding = run[0].data_coding
    if data_coding == DATA_CODING_UCS2 and any(len(p.payload) % 2 for p in run):
        # an odd-length UCS-2 part would shift every following character; keep it local
        return "".join(decode_text(p.payload, data_coding) for p in run)
    return decode_text(b"".join(p.payload for p in run), data_coding)


def assemble(parts: Sequence[MoPart]) -> tuple[str, bool]:
    """The text of one message's parts, and whether every part 1..total is there.

    Parts may come in any order; a seq seen twice counts once (the first one given). Runs of
    consecutive parts with the same data_coding are decoded joined, so a UCS-2 surrogate pair
    or a GSM-7 escape sequence split across two parts still decodes; across a missing part
    nothing is joined, and the missing text is simply absent. NUL characters (which Postgres
    text cannot hold) become U+FFFD.
    """
    if not parts:
        return "", False
    by_seq: dict[int, MoPart] = {}
    for part in parts:
        by_seq.setdefault(part.seq, part)
    ordered = [by_seq[seq] for seq in sorted(by_seq)]
    total = max(part.total for part in parts)
    complete = all(seq in by_seq for seq in range(1, total + 1))
    text = "".join(_decode_run(run) for run in _runs(ordered))
    return text.replace("\x00", "\ufffd"), complete


# --------------------------------------------------------------------------- receiving


def _describe(exc: BaseException) -> str:
    """An error for the log: never a PostgresError's DETAIL, which can quote the row."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__} [{exc.sqlstate}]: {exc.message}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class MoReceiver:
    """deliver_sm handler for MO: store the part, then acknowledge it."""

    def __init__(self, store: InboundStore, *, bucket_s: float = DEFAULT_BUCKET_S,
                 timeout_s: float = 10.0, clock: Callable[[], float] = time.time,
                 on_message: Callable[[InboundMessage], Awaitable[None]] | None = None
                 ) -> None:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        self._store = store
        self._bucket_s = bucket_s
        self._timeout_s = timeout_s
        self._clock = clock
        #: Called with each inbound message once its row exists (made by on_mo, or flushed
        #: incomplete by sweep). From on_mo it runs in a background task, so it neither
        #: delays nor changes the deliver_sm_resp; its errors are logged. May be set later.
        self.on_message = on_message
        self._hook_tasks: set[asyncio.Task[None]] = set()

    async def on_mo(self, pdu: Pdu, link: str) -> int:
        """Store one MO part; the deliver_sm_resp command_status to answer.

        ``link`` is the name of the SMSC link the PDU came on. The signature fits
        ``gateway.sender.MoHandler``, so ``sender.set_mo_handler(receiver.on_mo)`` wires it.

        ``ESME_ROK`` only after the part is committed (or recognised as a redelivery of a
        committed one); ``ESME_RX_T_APPN`` when the database fails or does not answer within
        ``timeout_s``, so the SMSC keeps the MO and retries.
        """
        bucket = time_bucket(self._clock(), self._bucket_s)
        part = part_from_pdu(pdu, link=link, bucket=bucket)
        # the same PDU's key in the previous window: a redelivery across a window boundary
        earlier = part_from_pdu(pdu, link=link, bucket=bucket - 1).dedupe_key
        source = mask_msisdn(part.source)
        try:
            stored, message_id = await asyncio.wait_for(
                self._store.store_part(part, earlier_keys=(earlier,)), self._timeout_s)
        except _DB_ERRORS as exc:
            log.warning("MO part %d/%d from %s on %s not stored (%s); answering "
                        "ESME_RX_T_APPN so the SMSC delivers it again", part.seq, part.total,
                        source, link, _describe(exc))
            return ESME_RX_T_APPN
        if not stored:
            log.info("MO part %d/%d from %s on %s (%d octets) is a redelivery; acknowledged",
                     part.seq, part.total, source, link, len(part.payload))
        elif message_id is None:
            log.info("MO part %d/%d from %s on %s (%d octets) stored; waiting for the rest",
                     part.seq, part.total, source, link, len(part.payload))
        else:
            log.info("MO %s from %s on %s (%d part(s), last %d octets) stored", message_id,
                     source, link, part.total, len(part.payload))
            if self.on_message is not None:
                task = asyncio.create_task(self._notify(message_id),
                                           name=f"mo-hook-{message_id}")
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_tasks.discard)
        return ESME_ROK

    async def _notify(self, message_id: UUID) -> None:
        """Run the on_message hook for one stored message; never raises."""
        hook = self.on_message
        if hook is None:
            return
        try:
            message = await self._store.get(message_id)
            if message is None:
                log.warning("MO %s vanished before its on_message hook ran", message_id)
                return
            await hook(message)
        except Exception as exc:
            log.error("on_message hook failed for MO %s: %s", message_id, _describe(exc),
                      exc_info=not isinstance(exc, _DB_ERRORS))

    async def wait_hooks(self) -> None:
        """Wait for the on_message hooks still running (shutdown, tests)."""
        while self._hook_tasks:
            await asyncio.gather(*self._hook_tasks, return_exceptions=True)

    async def sweep(self, older_than_s: float = MO_FLUSH_AFTER_S) -> list[UUID]:
        """Flush groups still incomplete after ``older_than_s`` as incomplete messages."""
        ids = await self._store.flush_incomplete(older_than_s)
        if ids:
            log.info("flushed %d incomplete MO message(s) older than %.0fs", len(ids),
                     older_than_s)
        if self.on_message is not None:
            for message_id in ids:
                await self._notify(message_id)
        return ids
