"""TC (refuse advertising) and DK QC (opt in again): keyword actions on the consent ledger.

A refusal (Decree 91/2020) is recorded in the ledger with the inbound message id as
``source_ref``, takes effect at once, and withdraws the advertising still queued for the
number (messages already with the SMSC cannot be recalled). The subscriber gets ONE
confirmation (``keyword_refused``: received when, stopping from when; no advertising in it).

The same MO handled twice (after a crash) is recorded once and answered as the first time.

One confirmation rule: a TC that leaves the number refused as it was (nothing changed) and
comes within 24 hours of another TC by SMS already recorded for that number gets no reply: it
is still recorded in the ledger and still withdraws queued advertising. A TC after an opt-in,
or more than 24 hours after the last TC, is a new refusal and is confirmed again. A refusal
recorded by an import or the API never counts: the subscriber got no SMS confirmation for it.

A request older than one already recorded (its MO flushed late) is recorded but does not move
the state (see gateway/store/consent.py): a TC older than a recorded DK QC, or a DK QC older
than a recorded TC, gets no reply, since the newer request stands and was answered.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.actions import ActionResult, MoContext
from gateway.masking import mask_msisdn
from gateway.store.consent import SUPPRESSED_DNC, ConsentChange, ConsentSource, ConsentStore
from gateway.store.messages import MessageStore

log = logging.getLogger("smsgw.actions.consent")

#: A repeated TC within this long of the previous one gets no second confirmation.
CONFIRMATION_WINDOW = timedelta(hours=24)
REFUSED_TEMPLATE = "keyword_refused"
OPTIN_TEMPLATE = "keyword_optin"


def local_time_text(when: datetime, tz: ZoneInfo) -> str:
    """``HH:MM dd/mm/yyyy`` in ``tz`` (how times are written to subscribers)."""
    if when.tzinfo is None:
        raise ValueError("a naive datetime has no defined local time")
    return when.astimezone(tz).strftime("%H:%M %d/%m/%Y")


def _ledger_note(change: ConsentChange) -> str:
    again = " (this MO was recorded before)" if change.replayed else ""
    return f"consent ledger {change.entry.id}{again}"


def needs_confirmation(change: ConsentChange, received_at: datetime) -> bool:
    """Whether this refusal gets the confirmation SMS (see the module docstring)."""
    if change.changed:
        return True
    previous = change.nearest_sms_refusal_at
    return previous is None or abs(received_at - previous) >= CONFIRMATION_WINDOW


class RefuseAdsAction:
    """``TC``: refuse advertising, cancel what is queued, confirm once."""

    def __init__(self, consent: ConsentStore, messages: MessageStore, *,
                 tz: str = "Asia/Ho_Chi_Minh") -> None:
        self._consent = consent
        self._messages = messages
        self._tz = ZoneInfo(tz)

    async def __call__(self, ctx: MoContext) -> ActionResult:
        change = await self._consent.refuse(
            ctx.msisdn, source=ConsentSource.SMS, source_ref=str(ctx.inbound_id),
            at=ctx.received_at)
        if not change.refused:  # an opt-in sent after this TC was recorded first: it stands
            return ActionResult(action="refuse_ads", detail=(
                f"{_ledger_note(change)}, a newer opt-in is recorded: not refused"))
        cancelled = await self._messages.cancel_pending_advertising(
            ctx.msisdn, f"subscriber refused advertising ({ctx.keyword}, inbound {ctx.inbound_id})")
        detail = (f"{_ledger_note(change)}, "
                  f"{'refused' if change.changed else 'already refused'}, "
                  f"{cancelled} queued advertising message(s) cancelled")
        if not needs_confirmation(change, ctx.received_at):
            log.info("repeated refusal from %s within %s: no second confirmation",
                     mask_msisdn(ctx.msisdn), CONFIRMATION_WINDOW)
            return ActionResult(action="refuse_ads",
                                detail=detail + "; confirmed within 24 h already, no reply")
        return ActionResult(
            action="refuse_ads",
            detail=detail,
            reply_template=REFUSED_TEMPLATE,
            reply_data={
                "received_at": local_time_text(ctx.received_at, self._tz),
                "effective_from": local_time_text(change.entry.effective_at, self._tz),
            },
        )


class OptInAdsAction:
    """``DK QC``: advertising welcome again (a Do-Not-Call registration still wins)."""

    def __init__(self, consent: ConsentStore, *, tz: str = "Asia/Ho_Chi_Minh") -> None:
        self._consent = consent
        self._tz = ZoneInfo(tz)

    async def __call__(self, ctx: MoContext) -> ActionResult:
        change = await self._consent.opt_in(
            ctx.msisdn, source=ConsentSource.SMS, source_ref=str(ctx.inbound_id),
            at=ctx.received_at)
        if change.refused:  # a TC sent after this DK QC was recorded first: it stands
            return ActionResult(action="optin_ads", detail=(
                f"{_ledger_note(change)}, a newer refusal is recorded: still refused"))
        detail = (f"{_ledger_note(change)}, "
                  f"{'opted in' if change.changed else 'already opted in'}")
        if await self._consent.is_suppressed(ctx.msisdn) == SUPPRESSED_DNC:
            detail += "; on the Do-Not-Call list: advertising stays suppressed"
        return ActionResult(
            action="optin_ads",
            detail=detail,
            reply_template=OPTIN_TEMPLATE,
            reply_data={
                "received_at": local_time_text(ctx.received_at, self._tz),
                "shortcode": ctx.destination,
            },
        )
