"""The send pipeline between the arq jobs and the SMSC links.

``send_ids`` claims queued rows (queued → submitting; a row another run already claimed is
skipped, which is what makes an at-least-once job re-run harmless) — only as many as the
links can take soon — routes each message to its links, submits every part and hands the
outcome to :class:`~gateway.ledger.LedgerWriter`, which batches ledger writes.

Per part, the SMSC's answer is classified:

* ROK → accepted;
* throttling (``ESME_RTHROTTLED``/``ESME_RMSGQFUL``) never reaches here: the link resends it
  in order after cutting its rate;
* a status in the link's ``failover_statuses`` before any part was accepted → next link;
* a transient status → retried with backoff, up to ``max_attempts`` and half of
  ``stale_submitting_s``; then the message goes back to the queue (failed after
  ``max_attempts`` claims);
* anything else → the message is ``rejected`` with the status name;
* no answer (connection lost, response timeout) → ``ambiguous_policy``.

Receipts arriving on a link go through :meth:`Sender.on_deliver`; the ``deliver_sm`` is
acknowledged only once the receipt is in Postgres. MO messages go to the MO handler.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from smpplib import consts

from gateway.config import SendingConfig, SmppConfig

if TYPE_CHECKING:
    from gateway.adguard import AdvertisingGuard
    from gateway.campaigns import CampaignGate
from gateway.domain import MessageStatus, Priority
from gateway.ledger import LedgerWriter
from gateway.masking import mask_msisdn
from gateway.routing import Router
from gateway.smpp.client import Ambiguous, NotSent, SubmitResult, Unsendable
from gateway.smpp.codec import Pdu, status_name
from gateway.smpp.encoding import encode_message
from gateway.smpp.link import Link
from gateway.smpp.receipts import canonical_id, id_candidates, message_status_for, parse_receipt
from gateway.store.messages import MessageRecord, MessageStore, ReceiptUpdate
from gateway.store.messages import SubmitResult as LedgerResult

log = logging.getLogger("smsgw.sender")

OK: int = consts.SMPP_ESME_ROK

#: SMPP statuses worth another try on the same link (everything else rejects the message).
TRANSIENT_STATUSES = frozenset({
    consts.SMPP_ESME_RSYSERR, consts.SMPP_ESME_RSUBMITFAIL, consts.SMPP_ESME_RX_T_APPN,
    consts.SMPP_ESME_RUNKNOWNERR, consts.SMPP_ESME_RTHROTTLED, consts.SMPP_ESME_RMSGQFUL,
})

MoHandler = Callable[[Pdu, str], Awaitable[int]]
#: Re-enqueue messages put back in the queue: (ids, delay in s, attempt, bulk lane?)
Requeue = Callable[[Sequence[UUID], float, int, bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Part:
    """What became of one part: ``kind`` is accepted, requeue, failed, rejected or failover."""

    kind: str
    result: SubmitResult | None = None
    error: str = ""
    resent: bool = False  # accepted after an ambiguous first try: the SMSC may hold two


def relative_validity(seconds: int) -> str:
    """SMPP relative time format ``YYMMDDhhmmss000R`` for a validity of ``seconds``."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    years, days = divmod(days, 365)
    months, days = divmod(days, 30)
    return f"{years:02d}{months:02d}{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def receipt_candidates(raw: str, fmt: str) -> tuple[str, ...]:
    """The stored (canonical submit_sm_resp) forms a receipt's id may match, per link format."""
    cid = canonical_id(raw)
    if fmt == "exact" or not cid:
        return (cid,)
    if fmt == "auto":
        return id_candidates(raw)
    try:  # "hex": receipts in hex, responses decimal; "decimal": the other way round
        return (str(int(cid, 16)),) if fmt == "hex" else (format(int(cid, 10), "x"),)
    except ValueError:
        return (cid,)


class Sender:
    """Claims messages, routes and submits their parts, records outcomes; handles receipts."""

    def __init__(self, *, store: MessageStore, links: Mapping[str, Link], router: Router,
                 ledger: LedgerWriter, sending: SendingConfig,
                 on_mo: MoHandler | None = None, requeue: Requeue | None = None,
                 guard: AdvertisingGuard | None = None, gate: CampaignGate | None = None
                 ) -> None:
        self._store = store
        self._guard = guard  # send-time advertising rules (None: not checked)
        self._gate = gate  # which campaigns may send (None: all)
        self._links = links
        self._router = router
        self._ledger = ledger
        self._sending = sending
        self._on_mo = on_mo
        self._requeue = requeue
        self._ref = random.randrange(256)
        self.submitted_parts = 0
        # Messages claimed (status submitting) but not yet recorded, across every job. Claiming
        # only what the windows can take soon keeps the "submitting" (ambiguous-if-we-crash)
        # set small and its age far below sending.stale_submitting_s.
        slots = sum(link.config.window * len(link.client.binds) for link in links.values())
        self.capacity = max(10, slots * 2)
        # advertising/broadcast may hold only part of it: care messages always find room
        self._bulk_floor = self.capacity - max(1, int(self.capacity * sending.bulk_capacity_share))
        self._free = self.capacity
        # claims waiting for capacity, first come first served, care before bulk; a release
        # wakes only the waiters it can serve (waking all of them costs O(waiters) per
        # message, which with a backlog of thousands is most of the process's CPU)
        self._waiting: dict[bool, collections.deque[tuple[int, asyncio.Future[None]]]] = {
            False: collections.deque(), True: collections.deque()}

    def set_mo_handler(self, handler: MoHandler | None) -> None:
        self._on_mo = handler

    # -- claiming ----------------------------------------------------------------------------
    async def send_ids(self, ids: Sequence[UUID], *, bulk: bool = False) -> int:
        """Send the given messages if still queued; returns how many this run claimed.

        ``bulk`` jobs (advertising, broadcasts) claim only while the reserved share of the
        capacity stays free for care and transactional messages."""
        claimed_total = 0
        tasks: list[asyncio.Task[None]] = []
        chunk = max(1, min(self.capacity - self._bulk_floor, self.capacity // 2))
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            await self._acquire(len(part), bulk=bulk)
            try:
                claimed = await self._store.claim(part)
                if claimed and self._gate is not None:
                    await self._gate.confirm({r.campaign_id for r in claimed if r.campaign_id})
                if claimed and self._guard is not None:
                    claimed = await self._screen(claimed)
            except BaseException:  # Postgres down, job cancelled: this chunk holds no slot
                await self._release(len(part))
                raise
            await self._release(len(part) - len(claimed))
            claimed_total += len(claimed)
            tasks.extend(asyncio.create_task(self._send_and_release(rec)) for rec in claimed)
        if tasks:
            await asyncio.gather(*tasks)
        return claimed_total

    async def _screen(self, claimed: list[MessageRecord]) -> list[MessageRecord]:
        """The advertising rules right before submit; on a failure the batch goes back to
        the queue rather than waiting in 'submitting' for the sweeper."""
        assert self._guard is not None
        try:
            return await self._guard.screen(claimed)
        except Exception as exc:
            log.warning("send-time advertising check failed (%s); %d message(s) requeued",
                        exc, len(claimed))
            await self._store.release([r.id for r in claimed],
                                      f"send-time check failed: {type(exc).__name__}")
            return []

    def _stopped(self, rec: MessageRecord) -> bool:
        return (rec.campaign_id is not None and self._gate is not None
                and not self._gate.is_running(rec.campaign_id))

    async def _acquire(self, n: int, *, bulk: bool = False) -> None:
        """Take ``n`` slots of capacity; bulk claims leave ``_bulk_floor`` free for care."""
        keep = self._bulk_floor if bulk else 0
        if not self._waiting[False] and not (bulk and self._waiting[True]) \
                and self._free - n >= keep:
            self._free -= n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiting[bulk].append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                await self._release(n)  # granted, then cancelled: give it back
            elif entry in self._waiting[bulk]:
                self._waiting[bulk].remove(entry)
            raise

    async def _release(self, n: int) -> None:
        self._free += n
        for bulk, keep in ((False, 0), (True, self._bulk_floor)):
            waiting = self._waiting[bulk]
            while waiting:
                need, fut = waiting[0]
                if not fut.done():  # (done: its claim was cancelled while waiting)
                    if self._free - need < keep:
                        break
                    self._free -= need
                    fut.set_result(None)
                waiting.popleft()
            if waiting and not bulk:
                return  # care claims still wait: bulk ones wait behind them

    async def _send_and_release(self, rec: MessageRecord) -> None:
        try:
            await self._send_message(rec)
        finally:
            await self._release(1)

    # -- one message -------------------------------------------------------------------------
    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) % 256
        return self._ref

    @staticmethod
    def _params(rec: MessageRecord, link: SmppConfig, part: bytes, data_coding: int,
                esm_class: int) -> dict[str, Any]:
        opts = rec.options
        sender = link.default_sender if (link.default_sender and opts.get("default_sender")) \
            else rec.sender
        numeric = sender.isdigit()
        ton = 1 if numeric and len(sender) > 8 else (3 if numeric else link.source_ton)
        params: dict[str, Any] = {
            "source_addr": sender,
            "source_addr_ton": int(opts.get("source_ton", ton)),
            "source_addr_npi": int(opts.get("source_npi", 1 if numeric else link.source_npi)),
            "destination_addr": rec.msisdn,
            "dest_addr_ton": link.dest_ton,
            "dest_addr_npi": link.dest_npi,
            "esm_class": esm_class,
            "registered_delivery": int(opts.get("registered_delivery",
                                                link.registered_delivery)),
            "priority_flag": int(opts.get("priority_flag", 0)),
            "data_coding": data_coding,
            "short_message": part,
        }
        if opts.get("validity_s"):
            params["validity_period"] = relative_validity(int(opts["validity_s"]))
        return params

    async def _send_message(self, rec: MessageRecord) -> None:
        # The body was stored in its final form (không dấu already applied at intake).
        link_used: str | None = None
        if self._stopped(rec):
            await self._ledger.record(LedgerResult(
                message_id=rec.id, status=MessageStatus.HELD,
                error="campaign not running: held before sending"))
            return
        try:
            enc = encode_message(rec.body, ref=self._next_ref(),
                                 force_ucs2=rec.options.get("data_coding") == 8)
            outcomes: list[_Part] = []
            for name in self._router.links_for(rec.msisdn, rec.message_class.value, rec.sender):
                link = self._links[name]
                link_used = name
                outcomes = await self._send_on_link(rec, link, enc.parts, enc.data_coding,
                                                    enc.esm_class)
                if not any(o.kind == "failover" for o in outcomes):
                    break
                log.info("message %s: link %s refused it (%s); trying the next link", rec.id,
                         name, next(o.error for o in outcomes if o.kind == "failover"))
        except Exception as exc:  # our bug: never leave the row in 'submitting' silently
            log.exception("message %s: unexpected error while sending", rec.id)
            outcomes = [_Part("requeue", error=f"internal error {type(exc).__name__}: {exc}")]
        result = self._result(rec, outcomes, link_used)
        await self._ledger.record(result)
        if result.status is MessageStatus.QUEUED and self._requeue is not None:
            # back off 1, 2, 4 … s per claim (max 60) rather than waiting for the sweeper
            delay = min(60.0, 2.0 ** max(0, rec.attempts - 1))
            try:
                await self._requeue([rec.id], delay, rec.attempts,
                                    rec.priority >= Priority.BULK)
            except Exception as exc:  # Redis down: the sweeper finds the queued row later
                log.warning("message %s: could not re-enqueue (%s); the sweeper will",
                            rec.id, exc)

    async def _send_on_link(self, rec: MessageRecord, link: Link, parts: Sequence[bytes],
                            data_coding: int, esm_class: int) -> list[_Part]:
        if not link.up and len(self._links) > 1 and any(
                other.up for other in self._links.values() if other is not link):
            return [_Part("failover", error=f"link {link.name} is down")]
        first = await self._send_part(rec, link, self._params(
            rec, link.config, parts[0], data_coding, esm_class), failover_ok=True,
            keep=self._gate.keep(rec.campaign_id)
            if self._gate is not None and rec.campaign_id is not None else None)
        if first.kind != "accepted":
            return [first]
        rest = await asyncio.gather(*(
            self._send_part(rec, link, self._params(rec, link.config, p, data_coding, esm_class),
                            failover_ok=False) for p in parts[1:]))
        return [first, *rest]

    def _result(self, rec: MessageRecord, outcomes: list[_Part], link: str | None
                ) -> LedgerResult:
        failed = [o for o in outcomes if o.kind != "accepted"]
        if outcomes and not failed:
            ids = tuple(canonical_id(o.result.message_id) for o in outcomes if o.result)
            resent = sum(1 for o in outcomes if o.resent)
            note = (f"ambiguous: {resent} part(s) resent after a lost response "
                    "(ambiguous_policy=resend; the subscriber may receive them twice)"
                    if resent else None)
            return LedgerResult(message_id=rec.id, status=MessageStatus.SUBMITTED,
                                part_ids=ids, error=note, link=link)
        worst = failed[0] if failed else _Part("requeue", error="no link to send it on")
        status = {"requeue": MessageStatus.QUEUED, "failed": MessageStatus.FAILED,
                  "held": MessageStatus.HELD}.get(worst.kind, MessageStatus.REJECTED)
        error = worst.error
        if status is MessageStatus.QUEUED and rec.attempts >= self._sending.max_attempts:
            status, error = MessageStatus.FAILED, f"gave up after {rec.attempts} attempts: {error}"
        log.info("message %s to %s: %s (%s)", rec.id, mask_msisdn(rec.msisdn), status.value,
                 error)
        return LedgerResult(message_id=rec.id, status=status, error=error, link=link)

    async def _send_part(self, rec: MessageRecord, link: Link, params: dict[str, Any], *,
                         failover_ok: bool, keep: Callable[[], bool] | None = None) -> _Part:
        """Submit one part on ``link``, retrying what is safe to retry."""
        budget = self._sending.stale_submitting_s / 2
        deadline = time.monotonic() + budget
        attempt, delay, ambiguous = 0, 0.1, False
        while True:
            attempt += 1
            wait = max(0.5, deadline - time.monotonic())
            try:
                res = await link.submit(params, priority=rec.priority, wait_s=wait, keep=keep)
            except NotSent as exc:
                if self._stopped(rec):
                    return _Part("held", error="campaign paused or cancelled: withdrawn "
                                               "before sending")
                return _Part("requeue", error=f"not sent: {exc}")
            except Unsendable as exc:
                return _Part("failed", error=f"cannot encode the submit_sm: {exc}")
            except Ambiguous as exc:
                if self._sending.ambiguous_policy == "fail":
                    return _Part("failed", error=f"ambiguous (policy fail): {exc}")
                log.warning("message %s: %s; resending (ambiguous_policy=resend)", rec.id, exc)
                ambiguous = True
                if time.monotonic() > deadline:
                    return _Part("requeue", error=f"ambiguous: {exc}")
                continue
            if res.ok:
                self.submitted_parts += 1
                return _Part("accepted", result=res, resent=ambiguous)
            name = f"{status_name(res.status)} (0x{res.status:08X}) on link {link.name}"
            if failover_ok and res.status in link.config.failover_statuses:
                return _Part("failover", error=name)
            if res.status in TRANSIENT_STATUSES:
                if attempt < self._sending.max_attempts and time.monotonic() < deadline:
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
                    continue
                return _Part("requeue", error=f"{name} after {attempt} attempts")
            return _Part("rejected", error=name)

    # -- receiving -------------------------------------------------------------------------
    def deliver_handler(self, link: SmppConfig) -> Callable[[Pdu], Awaitable[int]]:
        """The deliver_sm handler for the binds of ``link``."""

        async def handle(pdu: Pdu) -> int:
            return await self.on_deliver(pdu, link=link)

        return handle

    async def on_deliver(self, pdu: Pdu, *, link: SmppConfig) -> int:
        """Receipts into the ledger; MO to the MO handler (stored before it is acknowledged)."""
        esm = int(pdu.get("esm_class", 0) or 0)
        is_receipt = bool(esm & 0x04) or pdu.get("receipted_message_id") is not None
        if not is_receipt:
            if self._on_mo is not None:
                return await self._on_mo(pdu, link.name)
            log.info("MO from %s (%d octets) acknowledged, no MO handler",
                     mask_msisdn(pdu.text("source_addr")), len(pdu.get("short_message") or b""))
            return OK
        sm = pdu.get("short_message") or pdu.get("message_payload") or b""
        receipt = parse_receipt(sm, receipted_message_id=pdu.get("receipted_message_id"),
                                message_state=pdu.get("message_state"))
        if receipt is None:
            log.warning("unparseable receipt on link %s (%d octets); acknowledged", link.name,
                        len(sm))
            return OK
        status = message_status_for(receipt.state)
        if status is None:  # ENROUTE / ACCEPTD: intermediate, nothing to record
            return OK
        await self._ledger.receipt(ReceiptUpdate(
            candidates=receipt_candidates(receipt.message_id, link.message_id_format),
            status=status, stat=receipt.state.value, err=receipt.error,
            raw=sm.decode("latin-1") if isinstance(sm, bytes) else str(sm), link=link.name))
        return OK
