"""Billing and care events from the operator's systems, each turned into one care SMS.

An event ``{event_id, type, msisdn, data}`` is sent with the template its type maps to
(:class:`EventsConfig`, by default the template of the same name) and ``data`` as the
template's variables (``msisdn`` is always the event's number).

Exactly one SMS per ``event_id``, whoever posts it how often and however concurrently:

1. the ``care_events`` row is inserted first (``ON CONFLICT DO NOTHING``): one post creates it,
   every other one gets the stored event back and answers as a duplicate;
2. the message is made by :meth:`Intake.submit` with idempotency key ``event:<event_id>``
   under the API key that recorded the event, so whoever makes it -- the first post, a
   duplicate that finds the event still without a message, or
   :meth:`EventService.resume_unattached` after a crash between 1 and 3 -- gets the same one;
3. the latest bill is updated (for billing types) and the message id is stored on the event.

Event ids are global, not per API key: the operator's source systems make theirs unique (e.g.
``billing:2026-11:84912345678``), and the same id is the same event even when posted with
another key (after a key rotation). A repost whose type or number differs from the recorded
event is refused (409); its ``data`` is not compared, the recorded event's data is what is sent.

When the message cannot be made from the event (a template variable is missing, ...) the event
is forgotten and the caller gets the 422: the same event id can be posted again, corrected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any
from uuid import UUID

from gateway.config import EVENT_TYPES, EventsConfig
from gateway.domain import Encoding, MessageClass, MessageStatus
from gateway.intake import Intake, IntakeError, SendRequest
from gateway.masking import mask_msisdn
from gateway.numbers import InvalidNumber, normalise_msisdn
from gateway.store.events import BillStatus, BillUpdate, EventRow, EventStore, NewEvent
from gateway.store.messages import MessageRecord

log = logging.getLogger("smsgw.events")

#: Event types that update the subscriber's latest bill, and the status they give it.
BILL_STATUS_OF_TYPE: Mapping[str, BillStatus] = MappingProxyType({
    "bill_issued": BillStatus.ISSUED,
    "payment_due": BillStatus.DUE,
    "overdue": BillStatus.OVERDUE,
    "suspended_one_way": BillStatus.OVERDUE,
    "suspended_two_way": BillStatus.OVERDUE,
    "payment_received": BillStatus.PAID,
})

#: Event ids: URL-safe (they appear in ``GET /v1/events/{event_id}``), at most 128 characters.
EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
IDEMPOTENCY_PREFIX = "event:"

_PERIOD_MONTH_FIRST_RE = re.compile(r"(\d{1,2})/(\d{4})")  # 11/2026
_PERIOD_YEAR_FIRST_RE = re.compile(r"(\d{4})-(\d{1,2})")  # 2026-11
_BIGINT_MAX = 2**63 - 1


# --- configuration --------------------------------------------------------------------------


# --- validation of event content ------------------------------------------------------------


def check_event_id(event_id: str) -> str:
    if not EVENT_ID_RE.fullmatch(event_id):
        raise IntakeError("event_id", "must be 1 to 128 characters of letters, digits, '.', "
                                      "'_', ':' and '-', starting with a letter or digit")
    return event_id


def parse_period(value: Any) -> tuple[str, int]:
    """A billing month ``"11/2026"`` or ``"2026-11"`` as (text, key ``202611``)."""
    if isinstance(value, str):
        text = value.strip()
        found = _PERIOD_MONTH_FIRST_RE.fullmatch(text)
        month, year = (found.group(1), found.group(2)) if found else (None, None)
        if found is None and (found := _PERIOD_YEAR_FIRST_RE.fullmatch(text)):
            year, month = found.group(1), found.group(2)
        if month is not None and year is not None and 1 <= int(month) <= 12 \
                and int(year) >= 1000:
            return text, int(year) * 100 + int(month)
    raise IntakeError("data.period", f"must be a billing month such as \"11/2026\" or "
                                     f"\"2026-11\", not {str(value)[:30]!r}")


def parse_amount(value: Any) -> int:
    """An amount in đồng: a whole number, or a string of digits."""
    amount: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        amount = value
    elif isinstance(value, float) and value.is_integer():
        amount = int(value)
    elif isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
        amount = int(value.strip())
    if amount is None or abs(amount) > _BIGINT_MAX:
        raise IntakeError("data.amount", f"must be a whole number of đồng, not "
                                         f"{str(value)[:30]!r}")
    return amount


def parse_due_date(value: Any) -> date:
    """An ISO date (``"2026-12-20"``) or date-time."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return date.fromisoformat(text) if len(text) == 10 \
                else datetime.fromisoformat(text).date()
        except ValueError:
            pass
    raise IntakeError("data.due_date", f"must be an ISO date such as \"2026-12-20\", not "
                                       f"{str(value)[:30]!r}")


def bill_update(event_type: str, event_id: str, msisdn: str, data: Mapping[str, Any],
                received_at: datetime) -> BillUpdate | None:
    """What a billing event says about the latest bill; None for other types or no amount.

    Raises IntakeError for a ``period``, ``amount`` or ``due_date`` that is present but
    malformed (the event is refused before anything is stored).
    """
    status = BILL_STATUS_OF_TYPE.get(event_type)
    if status is None or data.get("amount") is None:
        return None
    amount = parse_amount(data["amount"])
    period = period_key = None
    if data.get("period") is not None:
        period, period_key = parse_period(data["period"])
    due = parse_due_date(data["due_date"]) if data.get("due_date") is not None else None
    return BillUpdate(msisdn=msisdn, status=status, amount=amount, event_id=event_id,
                      received_at=received_at, period=period, period_key=period_key,
                      due_date=due)


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    type: str
    msisdn: str
    message_id: UUID | None  # None only when the message row is gone (deleted since)
    status: MessageStatus | None
    encoding: Encoding | None
    segments: int | None
    duplicate: bool  # the event was recorded before this call


class EventService:
    """Records billing/care events and sends each one's SMS exactly once."""

    def __init__(self, store: EventStore, intake: Intake, config: EventsConfig | None = None,
                 *, region: str = "VN") -> None:
        self._store = store
        self._intake = intake
        self._config = config or EventsConfig()
        self._region = region

    @property
    def config(self) -> EventsConfig:
        return self._config

    def _check(self, event_id: str, event_type: str, msisdn: str,
               data: Mapping[str, Any]) -> str:
        """Everything that can be checked before storing; returns the E.164 number."""
        check_event_id(event_id)
        if event_type not in self._config.templates:
            raise IntakeError("type", f"unknown event type {event_type[:50]!r}; the types are "
                                      f"{', '.join(EVENT_TYPES)}")
        try:
            number = normalise_msisdn(msisdn, region=self._region)
        except InvalidNumber as exc:
            raise IntakeError("msisdn", f"{exc.value!r} is not a usable mobile number: "
                                        f"{exc.reason}") from exc
        in_data = data.get("msisdn")
        if in_data is not None and (not isinstance(in_data, str) or
                                    _same_number(in_data, self._region) != number):
            raise IntakeError("data.msisdn", "differs from msisdn; leave it out (the event's "
                                             "number is used) or give the same number")
        bill_update(event_type, event_id, number, data, datetime.now(UTC))  # checks only
        return number

    async def handle(self, event_id: str, type: str, msisdn: str, data: Mapping[str, Any], *,
                     api_key_id: int | None) -> EventResult:
        """Record the event and send its SMS; a known event id answers as a duplicate."""
        number = self._check(event_id, type, msisdn, data)
        row, created = await self._store.record(NewEvent(
            event_id=event_id, type=type, msisdn=number, data=dict(data),
            api_key_id=api_key_id))
        if not created:
            if row.type != type or row.msisdn != number:
                raise IntakeError("event_id", f"was already used for another event ({row.type} "
                                              f"to {mask_msisdn(row.msisdn)}); event ids must "
                                              "be unique", status=409)
            if row.message_id is not None:
                log.info("event %s: duplicate, message %s", event_id, row.message_id)
                return _from_row(row)
        return await self._complete(row, duplicate=not created)

    async def _complete(self, row: EventRow, *, duplicate: bool) -> EventResult:
        """Make (or find) the event's message, update the latest bill, attach the message."""
        template = self._config.templates[row.type]
        try:
            record, _ = await self._intake.submit(SendRequest(
                to=row.msisdn, template=template, data={**row.data, "msisdn": row.msisdn},
                idempotency_key=IDEMPOTENCY_PREFIX + row.event_id,
                message_class=MessageClass.CARE), api_key_id=row.api_key_id)
        except IntakeError as exc:
            await self._store.forget(row.event_id)
            if exc.field == "template":  # the mapping names a template that cannot be used
                log.error("event type %s: template %r: %s", row.type, template, exc.reason)
                raise RuntimeError(f"event type {row.type!r} maps to an unusable template "
                                   f"{template!r}: {exc.reason}") from exc
            # the reason may quote the subscriber's data: kept out of INFO
            log.info("event %s (%s) refused: bad %s", row.event_id, row.type, exc.field)
            log.debug("event %s refused: %s: %s", row.event_id, exc.field, exc.reason)
            field_name = {"to": "msisdn", "text": "data"}.get(exc.field, exc.field)
            raise IntakeError(field_name, exc.reason, status=exc.status) from exc
        await self._update_bill(row)
        if not await self._store.attach_message(row.event_id, record.id):
            log.warning("event %s already points at another message than %s", row.event_id,
                        record.id)
        log.info("event %s (%s) for %s: message %s%s", row.event_id, row.type,
                 mask_msisdn(row.msisdn), record.id, " (duplicate)" if duplicate else "")
        return _from_record(row, record, duplicate=duplicate)

    async def _update_bill(self, row: EventRow) -> None:
        try:
            update = bill_update(row.type, row.event_id, row.msisdn, row.data, row.received_at)
        except IntakeError as exc:  # stored before the check existed: keep the bill as it is
            log.warning("event %s: latest bill not updated: bad %s", row.event_id, exc.field)
            return
        if update is None:
            return
        bill = await self._store.update_latest_bill(update)
        if bill is None:
            log.info("event %s: latest bill of %s left as it is (newer, or none known)",
                     row.event_id, mask_msisdn(row.msisdn))

    async def get(self, event_id: str) -> EventRow | None:
        """The event with its message, or None."""
        return await self._store.get(event_id)

    async def resume_unattached(self, *, older_than_s: float = 60.0, limit: int = 100) -> int:
        """Finish events left without a message (a crash after recording); how many were.

        For the sweeper: events younger than ``older_than_s`` may still be in progress.
        """
        done = 0
        for row in await self._store.unattached(older_than_s=older_than_s, limit=limit):
            try:
                await self._complete(row, duplicate=True)
            except IntakeError as exc:  # forgotten by _complete: it can never be sent
                log.warning("event %s (%s) dropped: it cannot be sent (bad %s)",
                            row.event_id, row.type, exc.field)
            else:
                done += 1
        return done


def _same_number(raw: str, region: str) -> str | None:
    try:
        return normalise_msisdn(raw, region=region)
    except InvalidNumber:
        return None


def _from_row(row: EventRow) -> EventResult:
    message = row.message
    return EventResult(
        event_id=row.event_id, type=row.type, msisdn=row.msisdn, message_id=row.message_id,
        status=None if message is None else message.status,
        encoding=None if message is None else message.encoding,
        segments=None if message is None else message.segments,
        duplicate=True)


def _from_record(row: EventRow, record: MessageRecord, *, duplicate: bool) -> EventResult:
    return EventResult(
        event_id=row.event_id, type=row.type, msisdn=row.msisdn, message_id=record.id,
        status=record.status, encoding=record.encoding, segments=record.segments,
        duplicate=duplicate)
