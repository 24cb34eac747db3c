"""Billing and care events (``care_events``) and each subscriber's latest bill (``latest_bills``).

An event is recorded once: ``event_id`` is the primary key and the insert does nothing on a
conflict, so of any number of concurrent posts of one event exactly one gets ``created``. The
others read the row back in a second statement (a new snapshot, so they see the winner's
committed row even when it committed after their insert began waiting); if the row vanished
in between (:meth:`EventStore.forget` of an event whose message could not be made), the insert
is simply tried again.

The latest bill of a subscriber is replaced by an event only when the event is not older than
the bill it would replace, compared as the tuple

    (billing period, rank of the status within the period, event received_at)

with ranks issued < due < overdue < paid. So a late ``bill_issued`` for October leaves a
November bill alone, a late ``payment_due`` reminder does not reopen a bill already paid, and
of two events of the same period and rank (a corrected bill) the one received last wins.
Events without a period (``payment_received``, ``suspended_*`` usually) apply to the period of
the latest bill already known, and change nothing when no bill is known. Applying the same
event twice gives the same row (the tuple is equal, the values are the same).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from gateway.domain import Encoding, MessageStatus

log = logging.getLogger("smsgw.store.events")


class BillStatus(StrEnum):
    """Where a subscriber's latest bill stands, in the order an event may move it."""

    ISSUED = "issued"
    DUE = "due"
    OVERDUE = "overdue"
    PAID = "paid"


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    type: str
    msisdn: str  # E.164 digits
    data: Mapping[str, Any] = field(default_factory=dict)
    api_key_id: int | None = None


@dataclass(frozen=True, slots=True)
class EventMessage:
    """The message an event made, as far as the event's caller needs to see it."""

    id: UUID
    status: MessageStatus
    encoding: Encoding
    segments: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: str
    type: str
    msisdn: str
    data: Mapping[str, Any]
    message_id: UUID | None  # None until the message is made
    received_at: datetime
    api_key_id: int | None
    #: the message row (when read with it and it still exists)
    message: EventMessage | None = None


@dataclass(frozen=True, slots=True)
class BillUpdate:
    """What one event says about a subscriber's latest bill."""

    msisdn: str
    status: BillStatus
    amount: int  # đồng
    event_id: str
    received_at: datetime  # the event's, for ordering
    period: str | None = None  # None: the period of the latest known bill
    period_key: int | None = None  # year * 100 + month; given with period
    due_date: date | None = None  # None: keep the known one (same period)

    def __post_init__(self) -> None:
        if (self.period is None) != (self.period_key is None):
            raise ValueError("give both period and period_key, or neither")


@dataclass(frozen=True, slots=True)
class LatestBill:
    msisdn: str
    period: str
    period_key: int
    amount: int
    due_date: date | None
    status: BillStatus
    updated_at: datetime
    event_id: str
    event_received_at: datetime


# --- SQL ------------------------------------------------------------------------------------

_EVENT_COLUMNS = "event_id, type, msisdn, data, message_id, received_at, api_key_id"

_INSERT = f"""
INSERT INTO care_events (event_id, type, msisdn, data, api_key_id)
VALUES ($1, $2, $3, $4::jsonb, $5)
ON CONFLICT (event_id) DO NOTHING
RETURNING {_EVENT_COLUMNS}
"""

_GET = """
SELECT e.event_id, e.type, e.msisdn, e.data, e.message_id, e.received_at, e.api_key_id,
       m.id AS m_id, m.status AS m_status, m.encoding AS m_encoding,
       m.segments AS m_segments, m.updated_at AS m_updated_at
FROM care_events e
LEFT JOIN messages m ON m.id = e.message_id
WHERE e.event_id = $1
"""

_ATTACH = """
UPDATE care_events SET message_id = $2
WHERE event_id = $1 AND (message_id IS NULL OR message_id = $2)
RETURNING event_id
"""

_FORGET = "DELETE FROM care_events WHERE event_id = $1 AND message_id IS NULL RETURNING event_id"

_UNATTACHED = f"""
SELECT {_EVENT_COLUMNS} FROM care_events
WHERE message_id IS NULL AND received_at < now() - make_interval(secs => $1)
ORDER BY received_at
LIMIT $2
"""

_LATEST_BILL = """
SELECT msisdn, period, period_key, amount, due_date, status, updated_at, event_id,
       event_received_at
FROM latest_bills WHERE msisdn = $1
"""

# $2/$3 NULL: the period of the bill already known (no row: nothing to update). See the
# module docstring for the ordering rule in the WHERE clause.
_UPDATE_BILL = """
INSERT INTO latest_bills AS b (msisdn, period, period_key, amount, due_date, status,
                               event_id, event_received_at)
SELECT $1, p.period, p.period_key, $4::bigint, $5::date, $6::text, $7::text, $8::timestamptz
FROM (
    SELECT $2::text AS period, $3::integer AS period_key WHERE $2::text IS NOT NULL
    UNION ALL
    SELECT period, period_key FROM latest_bills WHERE msisdn = $1 AND $2::text IS NULL
) AS p
ON CONFLICT (msisdn) DO UPDATE SET
    period = EXCLUDED.period,
    period_key = EXCLUDED.period_key,
    amount = EXCLUDED.amount,
    due_date = CASE WHEN EXCLUDED.period_key = b.period_key
                    THEN COALESCE(EXCLUDED.due_date, b.due_date)
                    ELSE EXCLUDED.due_date END,
    status = EXCLUDED.status,
    updated_at = now(),
    event_id = EXCLUDED.event_id,
    event_received_at = EXCLUDED.event_received_at
WHERE (EXCLUDED.period_key, latest_bill_rank(EXCLUDED.status), EXCLUDED.event_received_at)
   >= (b.period_key, latest_bill_rank(b.status), b.event_received_at)
RETURNING msisdn, period, period_key, amount, due_date, status, updated_at, event_id,
          event_received_at
"""


# --- helpers --------------------------------------------------------------------------------


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value or {})


def _event(row: Any) -> EventRow:
    message = None
    if row.get("m_id") is not None:
        message = EventMessage(
            id=row["m_id"],
            status=MessageStatus(row["m_status"]),
            encoding=Encoding(row["m_encoding"]),
            segments=row["m_segments"],
            updated_at=row["m_updated_at"],
        )
    return EventRow(
        event_id=row["event_id"],
        type=row["type"],
        msisdn=row["msisdn"],
        data=_json(row["data"]),
        message_id=row["message_id"],
        received_at=row["received_at"],
        api_key_id=row["api_key_id"],
        message=message,
    )


def _bill(row: Any) -> LatestBill:
    return LatestBill(
        msisdn=row["msisdn"],
        period=row["period"],
        period_key=row["period_key"],
        amount=row["amount"],
        due_date=row["due_date"],
        status=BillStatus(row["status"]),
        updated_at=row["updated_at"],
        event_id=row["event_id"],
        event_received_at=row["event_received_at"],
    )


# --- the store ------------------------------------------------------------------------------


class EventStore:
    """All reads and writes of care events and latest bills."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, event: NewEvent) -> tuple[EventRow, bool]:
        """Insert the event; when its id is known, return the stored one (with its message)."""
        args = (event.event_id, event.type, event.msisdn, json.dumps(dict(event.data)),
                event.api_key_id)
        # The conflicting row can only vanish if it is forgotten between the two statements
        # (concurrent posts of an event that cannot be sent); then the insert is tried again.
        for _ in range(5):
            row = await self._pool.fetchrow(_INSERT, *args)
            if row is not None:
                return _event(row), True
            found = await self.get(event.event_id)
            if found is not None:
                return found, False
        raise RuntimeError(f"could not insert or find event {event.event_id!r}")

    async def get(self, event_id: str) -> EventRow | None:
        """The event and, when it exists, its message."""
        row = await self._pool.fetchrow(_GET, event_id)
        return None if row is None else _event(row)

    async def attach_message(self, event_id: str, message_id: UUID) -> bool:
        """Point the event at its message; False when it points at another one already."""
        return await self._pool.fetchval(_ATTACH, event_id, message_id) is not None

    async def forget(self, event_id: str) -> bool:
        """Delete an event that has no message (its message could not be made)."""
        return await self._pool.fetchval(_FORGET, event_id) is not None

    async def unattached(self, *, older_than_s: float, limit: int = 100) -> list[EventRow]:
        """Events recorded over ``older_than_s`` ago still without a message, oldest first."""
        rows = await self._pool.fetch(_UNATTACHED, older_than_s, limit)
        return [_event(r) for r in rows]

    async def latest_bill(self, msisdn: str) -> LatestBill | None:
        row = await self._pool.fetchrow(_LATEST_BILL, msisdn)
        return None if row is None else _bill(row)

    async def update_latest_bill(self, update: BillUpdate) -> LatestBill | None:
        """Apply ``update`` unless the known bill is newer; the new row, or None if ignored."""
        row = await self._pool.fetchrow(
            _UPDATE_BILL, update.msisdn, update.period, update.period_key, update.amount,
            update.due_date, update.status.value, update.event_id, update.received_at)
        return None if row is None else _bill(row)
