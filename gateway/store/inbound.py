"""Inbound (MO) parts and the messages assembled from them.

Every part is inserted once (``dedupe_key`` is unique: a redelivered deliver_sm inserts
nothing). The part that completes its concatenation group -- (link, source, destination, ref,
total) -- creates the ``inbound_messages`` row in the same transaction. Everything that reads
or assigns the open parts of a group does so under a transaction-scoped advisory lock on the
group, so two parts of one group arriving on two connections at once, or a sweeper flushing
the group meanwhile, still make exactly one message.

Parts are kept after their message is made (``message_id`` points to it): a late redelivery of
an assembled part must still hit its ``dedupe_key`` and not open a new group. Only parts with
``message_id`` NULL form open groups, so a reference the handset reuses later starts afresh.
Deleting old parts (e.g. a retention job) is safe once they are older than the dedupe span
(twice the MO bucket width).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from gateway.mo import MoPart, assemble

log = logging.getLogger("smsgw.store.inbound")

#: First key of the two-int advisory locks taken per concatenation group.
_GROUP_LOCK_SPACE = 0x4D4F4752  # "MOGR"

_LOCK_GROUP = "SELECT pg_advisory_xact_lock($1::integer, hashtext($2))"

# A part unless it, or the same part in an earlier dedupe window ($11), is already stored.
_INSERT_PART = """
INSERT INTO inbound_parts (link, source, destination, ref, total, seq, data_coding, payload,
                           dedupe_key)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
WHERE NOT EXISTS (SELECT 1 FROM inbound_parts WHERE dedupe_key = ANY($10::text[]))
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id, received_at
"""

# The open parts of one multipart group (single parts never stay open: they make their
# message in the transaction that inserts them); "old": arrived at least $6 seconds ago.
_OPEN_GROUP = """
SELECT id, link, source, destination, ref, total, seq, data_coding, payload, dedupe_key,
       received_at, received_at <= now() - make_interval(secs => $6) AS old
FROM inbound_parts
WHERE link = $1 AND source = $2 AND destination = $3 AND ref = $4 AND total = $5
      AND message_id IS NULL
ORDER BY seq, id
"""

_CREATE_MESSAGE = """
WITH msg AS (
    INSERT INTO inbound_messages (link, source, destination, text, data_coding,
                                  parts_expected, parts_received, complete, received_at,
                                  completed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $8 THEN now() END)
    RETURNING id
), parts AS (
    UPDATE inbound_parts SET message_id = (SELECT id FROM msg)
    WHERE id = ANY($10::bigint[])
)
SELECT id FROM msg
"""

_STALE_GROUPS = """
SELECT link, source, destination, ref, total
FROM inbound_parts
WHERE message_id IS NULL
GROUP BY link, source, destination, ref, total
HAVING min(received_at) <= now() - make_interval(secs => $1)
ORDER BY min(received_at)
LIMIT $2
"""

_MESSAGE_COLUMNS = """
id, link, source, destination, text, data_coding, parts_expected, parts_received, complete,
received_at, completed_at, created_at, handled_at, keyword
"""

_GET = f"SELECT {_MESSAGE_COLUMNS} FROM inbound_messages WHERE id = $1"

_UNHANDLED = f"""
SELECT {_MESSAGE_COLUMNS} FROM inbound_messages
WHERE handled_at IS NULL
ORDER BY created_at, id
LIMIT $1
"""

_MARK_HANDLED = """
UPDATE inbound_messages SET handled_at = now(), keyword = $2
WHERE id = $1 AND handled_at IS NULL
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    id: UUID
    link: str
    source: str
    destination: str
    text: str
    data_coding: int
    parts_expected: int
    parts_received: int
    complete: bool  # False: flushed by the sweeper with parts missing
    received_at: datetime  # first part
    completed_at: datetime | None  # last part (complete messages only)
    created_at: datetime
    handled_at: datetime | None
    keyword: str | None


@dataclass(frozen=True, slots=True)
class _Group:
    link: str
    source: str
    destination: str
    ref: int | None
    total: int

    @property
    def lock_name(self) -> str:
        ref = "-" if self.ref is None else str(self.ref)
        return "\x1f".join((self.link, self.source, self.destination, ref, str(self.total)))


def _group_of(part: MoPart) -> _Group:
    return _Group(part.link, part.source, part.destination, part.ref, part.total)


def _message(row: Any) -> InboundMessage:
    return InboundMessage(
        id=row["id"],
        link=row["link"],
        source=row["source"],
        destination=row["destination"],
        text=row["text"],
        data_coding=row["data_coding"],
        parts_expected=row["parts_expected"],
        parts_received=row["parts_received"],
        complete=row["complete"],
        received_at=row["received_at"],
        completed_at=row["completed_at"],
        created_at=row["created_at"],
        handled_at=row["handled_at"],
        keyword=row["keyword"],
    )


def _part(row: Any) -> MoPart:
    return MoPart(link=row["link"], source=row["source"], destination=row["destination"],
                  ref=row["ref"], total=row["total"], seq=row["seq"],
                  data_coding=row["data_coding"], payload=bytes(row["payload"]),
                  dedupe_key=row["dedupe_key"])


async def _lock_group(conn: Any, group: _Group) -> None:
    await conn.execute(_LOCK_GROUP, _GROUP_LOCK_SPACE, group.lock_name)


async def _create_message(conn: Any, group: _Group, parts: Sequence[MoPart],
                          part_ids: Sequence[int], received_at: datetime) -> tuple[UUID, bool]:
    """The message made of a group's (locked, open) parts; assigns the part rows to it."""
    text, complete = assemble(parts)
    first = min(parts, key=lambda p: p.seq)
    message_id: UUID = await conn.fetchval(
        _CREATE_MESSAGE, group.link, group.source, group.destination, text, first.data_coding,
        group.total, len({p.seq for p in parts}), complete, received_at, list(part_ids))
    return message_id, complete


async def _create_from_rows(conn: Any, group: _Group, rows: Sequence[Any]) -> tuple[UUID, bool]:
    return await _create_message(conn, group, [_part(row) for row in rows],
                                 [row["id"] for row in rows],
                                 min(row["received_at"] for row in rows))


class InboundStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def store_part(self, part: MoPart, *,
                         earlier_keys: Sequence[str] = ()) -> tuple[bool, UUID | None]:
        """Insert one part; (stored, id of the message it completed, if it did).

        ``(False, None)``: the part (its ``dedupe_key``, or one of ``earlier_keys`` -- the same
        part in earlier dedupe windows) is already stored: a redelivery, handled once.
        ``(True, None)``: stored, its group still waits for parts. ``(True, id)``: stored and
        the message is made (a single part, or the last missing part of its group).
        """
        group = _group_of(part)
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_group(conn, group)
            inserted = await conn.fetchrow(
                _INSERT_PART, part.link, part.source, part.destination, part.ref, part.total,
                part.seq, part.data_coding, part.payload, part.dedupe_key,
                [part.dedupe_key, *earlier_keys])
            if inserted is None:
                return False, None
            if part.total == 1:
                message_id, _ = await _create_message(conn, group, [part], [inserted["id"]],
                                                      inserted["received_at"])
                return True, message_id
            rows = await conn.fetch(_OPEN_GROUP, group.link, group.source, group.destination,
                                    group.ref, group.total, 0.0)
            if len({row["seq"] for row in rows}) < part.total:
                return True, None
            message_id, _ = await _create_from_rows(conn, group, rows)
            return True, message_id

    async def flush_incomplete(self, older_than_s: float, *, limit: int = 500) -> list[UUID]:
        """Make messages (complete=False) of groups whose first part is ``older_than_s`` old.

        Each group is flushed in its own transaction under the group's lock and re-read
        there, so running this twice, or concurrently, or while the last part arrives,
        still makes one message per group.
        """
        candidates = await self._pool.fetch(_STALE_GROUPS, float(older_than_s), limit)
        made: list[UUID] = []
        for cand in candidates:
            group = _Group(cand["link"], cand["source"], cand["destination"], cand["ref"],
                           cand["total"])
            async with self._pool.acquire() as conn, conn.transaction():
                await _lock_group(conn, group)
                rows = await conn.fetch(_OPEN_GROUP, group.link, group.source,
                                        group.destination, group.ref, group.total,
                                        float(older_than_s))
                if not any(row["old"] for row in rows):
                    continue  # made meanwhile (a new group may reuse the key): nothing stale
                message_id, complete = await _create_from_rows(conn, group, rows)
            made.append(message_id)
            if complete:  # only if a completing part's message was somehow never made
                log.warning("MO group flushed by the sweeper was complete: message %s",
                            message_id)
        return made

    async def get(self, message_id: UUID) -> InboundMessage | None:
        row = await self._pool.fetchrow(_GET, message_id)
        return None if row is None else _message(row)

    async def list_unhandled(self, limit: int = 100) -> list[InboundMessage]:
        """Messages the keyword router has not handled yet, oldest first."""
        return [_message(row) for row in await self._pool.fetch(_UNHANDLED, limit)]

    async def mark_handled(self, message_id: UUID, keyword: str | None) -> bool:
        """Record the router's decision; False if unknown or already handled."""
        return await self._pool.fetchval(_MARK_HANDLED, message_id, keyword) is not None

