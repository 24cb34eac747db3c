"""The send pipeline between the arq jobs and the SMPP binds.

``send_ids`` claims queued rows (queued → submitting; a row another run already claimed is
skipped, which is what makes an at-least-once job re-run harmless), submits every part
through the window, and hands the outcome to :class:`~gateway.ledger.LedgerWriter`, which
batches ledger writes so Postgres is not one round trip per PDU.

Receipts arriving on any bind go through :meth:`Sender.on_deliver`; the deliver_sm is
acknowledged only after the receipt is in Postgres (matched, or kept in pending_receipts).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from smpplib import consts

from gateway.config import SendingConfig, SmppConfig
from gateway.domain import MessageStatus
from gateway.ledger import LedgerWriter
from gateway.masking import mask_msisdn
from gateway.smpp.client import Ambiguous, EsmeClient, NotSent, SubmitResult, Unsendable
from gateway.smpp.codec import Pdu, status_name
from gateway.smpp.encoding import encode_message
from gateway.smpp.receipts import (
    canonical_id,
    id_candidates,
    message_status_for,
    parse_receipt,
)
from gateway.store.messages import MessageRecord, MessageStore, ReceiptUpdate
from gateway.store.messages import SubmitResult as LedgerResult

log = logging.getLogger("smsgw.sender")

OK: int = consts.SMPP_ESME_ROK

#: SMPP statuses worth another try on the same link (everything else rejects the message).
TRANSIENT_STATUSES = frozenset({
    consts.SMPP_ESME_RTHROTTLED, consts.SMPP_ESME_RMSGQFUL, consts.SMPP_ESME_RSYSERR,
    consts.SMPP_ESME_RSUBMITFAIL, consts.SMPP_ESME_RX_T_APPN, consts.SMPP_ESME_RUNKNOWNERR,
})


@dataclass(frozen=True, slots=True)
class _Accepted:
    result: SubmitResult
    resent: bool  # accepted after an ambiguous first try: the SMSC may hold two copies


class Sender:
    """Claims messages, submits their parts, records outcomes; handles receipts."""

    def __init__(self, *, store: MessageStore, client: EsmeClient, ledger: LedgerWriter,
                 smpp: SmppConfig, sending: SendingConfig) -> None:
        self._store = store
        self._client = client
        self._ledger = ledger
        self._smpp = smpp
        self._sending = sending
        self._ref = random.randrange(256)
        self.submitted_parts = 0
        # Messages claimed (status submitting) but not yet recorded, across every job. Claiming
        # only what the windows can take soon keeps the "submitting" (ambiguous-if-we-crash)
        # set small and its age far below sending.stale_submitting_s.
        binds = max(1, sum(1 for b in client.binds if b.mode.value != "receiver"))
        self.capacity = max(10, smpp.window * binds * 2)
        self._free = self.capacity
        self._freed = asyncio.Condition()

    # -- sending ---------------------------------------------------------------------------
    async def send_ids(self, ids: Sequence[UUID]) -> int:
        """Send the given messages if still queued; returns how many this run claimed."""
        claimed_total = 0
        tasks: list[asyncio.Task[None]] = []
        chunk = max(1, self.capacity // 2)
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            await self._acquire(len(part))
            claimed = await self._store.claim(part)
            await self._release(len(part) - len(claimed))
            claimed_total += len(claimed)
            tasks.extend(asyncio.create_task(self._send_and_release(rec)) for rec in claimed)
        if tasks:
            await asyncio.gather(*tasks)
        return claimed_total

    async def _acquire(self, n: int) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self._free >= n)
            self._free -= n

    async def _release(self, n: int) -> None:
        if n:
            async with self._freed:
                self._free += n
                self._freed.notify_all()

    async def _send_and_release(self, rec: MessageRecord) -> None:
        try:
            await self._send_message(rec)
        finally:
            await self._release(1)

    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) % 256
        return self._ref

    def _params(self, rec: MessageRecord, part: bytes, data_coding: int,
                esm_class: int) -> dict[str, Any]:
        cfg = self._smpp
        numeric = rec.sender.isdigit()
        return {
            "source_addr": rec.sender,
            "source_addr_ton": 1 if numeric and len(rec.sender) > 8 else (
                3 if numeric else cfg.source_ton),
            "source_addr_npi": 1 if numeric else cfg.source_npi,
            "destination_addr": rec.msisdn,
            "dest_addr_ton": cfg.dest_ton,
            "dest_addr_npi": cfg.dest_npi,
            "esm_class": esm_class,
            "registered_delivery": cfg.registered_delivery,
            "data_coding": data_coding,
            "short_message": part,
        }

    async def _send_message(self, rec: MessageRecord) -> None:
        # The body was stored in its final form (không dấu already applied at intake).
        try:
            enc = encode_message(rec.body, ref=self._next_ref())
            outcomes: list[_Accepted | str] = list(await asyncio.gather(
                *(self._send_part(rec, self._params(rec, p, enc.data_coding, enc.esm_class))
                  for p in enc.parts)))
        except Exception as exc:  # our bug: never leave the row in 'submitting' silently
            log.exception("message %s: unexpected error while sending", rec.id)
            outcomes = [f"requeue:internal error {type(exc).__name__}: {exc}"]
        errors = [o for o in outcomes if isinstance(o, str)]
        if not errors:
            accepted = [o for o in outcomes if isinstance(o, _Accepted)]
            ids = tuple(o.result.message_id for o in accepted)
            resent = sum(1 for o in accepted if o.resent)
            note = (f"ambiguous: {resent} part(s) resent after a lost response "
                    "(ambiguous_policy=resend; the subscriber may receive them twice)"
                    if resent else None)
            result = LedgerResult(message_id=rec.id, status=MessageStatus.SUBMITTED,
                                  part_ids=tuple(canonical_id(i) for i in ids), error=note)
        else:
            status, error = self._classify_failure(errors)
            if status is MessageStatus.QUEUED and rec.attempts >= self._sending.max_attempts:
                status = MessageStatus.FAILED
                error = f"gave up after {rec.attempts} attempts: {error}"
            result = LedgerResult(message_id=rec.id, status=status, error=error)
            log.info("message %s to %s: %s (%s)", rec.id, mask_msisdn(rec.msisdn),
                     status.value, error)
        await self._ledger.record(result)

    @staticmethod
    def _classify_failure(errors: list[str]) -> tuple[MessageStatus, str]:
        first = errors[0]
        if first.startswith("requeue:"):
            return MessageStatus.QUEUED, first.removeprefix("requeue:")
        if first.startswith("failed:"):
            return MessageStatus.FAILED, first.removeprefix("failed:")
        return MessageStatus.REJECTED, first

    async def _send_part(self, rec: MessageRecord, params: dict[str, Any]) -> _Accepted | str:
        """Submit one part, retrying what is safe to retry; a str outcome is an error."""
        deadline = time.monotonic() + self._sending.stale_submitting_s / 2
        attempt = 0
        ambiguous = False
        delay = 0.1
        while True:
            attempt += 1
            try:
                res = await self._client.submit(params)
            except NotSent as exc:
                if time.monotonic() > deadline:
                    return f"requeue:not sent: {exc}"
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            except Unsendable as exc:
                return f"failed:cannot encode the submit_sm: {exc}"
            except Ambiguous as exc:
                if self._sending.ambiguous_policy == "fail":
                    return f"failed:ambiguous (policy fail): {exc}"
                log.warning("message %s: %s; resending (ambiguous_policy=resend)", rec.id, exc)
                ambiguous = True
                if time.monotonic() > deadline:
                    return f"requeue:ambiguous: {exc}"
                continue
            if res.ok:
                self.submitted_parts += 1
                return _Accepted(res, ambiguous)
            name = status_name(res.status)
            if res.status in TRANSIENT_STATUSES and attempt < self._sending.max_attempts * 4 \
                    and time.monotonic() < deadline:
                await asyncio.sleep(delay if res.status not in (
                    consts.SMPP_ESME_RTHROTTLED, consts.SMPP_ESME_RMSGQFUL) else 0)
                delay = min(2.0, delay * 2)
                continue
            if res.status in TRANSIENT_STATUSES:
                return f"requeue:{name} after {attempt} attempts"
            return f"{name} (0x{res.status:08X})"

    # -- receiving -------------------------------------------------------------------------
    async def on_deliver(self, pdu: Pdu) -> int:
        """deliver_sm handler: receipts into the ledger; MO logged (keywords come later)."""
        esm = int(pdu.get("esm_class", 0) or 0)
        is_receipt = bool(esm & 0x04) or pdu.get("receipted_message_id") is not None
        if not is_receipt:
            log.info("MO from %s (%d octets) acknowledged", mask_msisdn(pdu.text("source_addr")),
                     len(pdu.get("short_message") or b""))
            return OK
        sm = pdu.get("short_message") or pdu.get("message_payload") or b""
        receipt = parse_receipt(sm, receipted_message_id=pdu.get("receipted_message_id"),
                                message_state=pdu.get("message_state"))
        if receipt is None:
            log.warning("unparseable receipt from SMSC (%d octets); acknowledged", len(sm))
            return OK
        status = message_status_for(receipt.state)
        if status is None:  # ENROUTE / ACCEPTD: intermediate, nothing to record
            return OK
        candidates = (id_candidates(receipt.message_id) if self._smpp.message_id_format == "auto"
                      else (canonical_id(receipt.message_id),))
        await self._ledger.receipt(ReceiptUpdate(
            candidates=candidates, status=status,
            stat=receipt.state.value, err=receipt.error,
            raw=sm.decode("latin-1") if isinstance(sm, bytes) else str(sm)))
        return OK
