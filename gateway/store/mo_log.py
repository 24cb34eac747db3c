"""The keyword router's log of inbound messages (``mo_log``, sql/0011_mo_log.sql).

One row per inbound message the router took. :meth:`MoLogStore.claim` makes it first and is
the claim on the message (``inbound_id`` is unique); :meth:`MoLogStore.record` writes the
outcome at the end. In between, :meth:`MoLogStore.reserve_reply` decides -- under a
transaction-scoped advisory lock on the number, so several gateway processes share the limit
exactly -- whether the number may get a reply, and marks the row ``replied`` if so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

log = logging.getLogger("smsgw.store.mo_log")

#: First key of the two-int advisory locks taken per number when reserving a reply.
_REPLY_LOCK_SPACE = 0x4D4F524C  # "MORL"

#: Kinds of reply (``mo_log.reply_kind``).
REPLY_KINDS = frozenset({"action", "help", "error"})

_CLAIM = """
INSERT INTO mo_log (inbound_id, msisdn, received_at, at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (inbound_id) DO UPDATE SET at = EXCLUDED.at, msisdn = EXCLUDED.msisdn
    WHERE mo_log.handled_at IS NULL
      AND mo_log.at <= EXCLUDED.at - make_interval(secs => $5)
RETURNING id
"""

_LOCK_NUMBER = "SELECT pg_advisory_xact_lock($1::integer, hashtext($2))"

_HISTORY = """
SELECT
    (SELECT replied FROM mo_log WHERE id = $1) AS already,
    (SELECT coalesce(array_agg(at ORDER BY at), '{}') FROM mo_log
     WHERE msisdn = $2 AND replied AND at >= $3) AS recent,
    (SELECT max(at) FROM mo_log
     WHERE msisdn = $2 AND replied AND reply_kind = 'help') AS last_help
"""

_RESERVE = "UPDATE mo_log SET replied = true, reply_kind = $2 WHERE id = $1"

_RELEASE = "UPDATE mo_log SET replied = false, reply_kind = NULL WHERE id = $1"

_RECORD = """
UPDATE mo_log
SET keyword = $2, action = $3, detail = $4, reply_message_id = $5, reason = $6,
    handled_at = now()
WHERE id = $1
"""

_REPLIES_SINCE = "SELECT count(*) FROM mo_log WHERE msisdn = $1 AND replied AND at >= $2"

_LAST_HELP = """
SELECT max(at) FROM mo_log WHERE msisdn = $1 AND replied AND reply_kind = 'help'
"""

_ENTRIES = """
SELECT id, inbound_id, msisdn, received_at, keyword, action, detail, reply_kind, replied,
       reply_message_id, reason, at, handled_at
FROM mo_log
WHERE msisdn = $1
ORDER BY id DESC
LIMIT $2
"""

_BY_INBOUND = """
SELECT id, inbound_id, msisdn, received_at, keyword, action, detail, reply_kind, replied,
       reply_message_id, reason, at, handled_at
FROM mo_log
WHERE inbound_id = $1
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class MoLogEntry:
    id: int
    inbound_id: UUID
    msisdn: str  # E.164 digits, or the source as received when it is no mobile number
    received_at: datetime
    keyword: str | None
    action: str | None
    detail: str
    reply_kind: str | None  # "action", "help", "error"
    replied: bool
    reply_message_id: UUID | None
    reason: str | None  # why there was no reply, or what failed
    at: datetime  # when the router took the message
    handled_at: datetime | None  # None: never finished (yet)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyHistory:
    """What a reply decision needs to know about a number's earlier replies."""

    recent_replies: tuple[datetime, ...]  # times of its replies since the window's start
    last_help_reply: datetime | None  # time of its last help for an unrecognised message


#: Decides on a reply from the number's history: None = reply, else the reason not to.
ReplyDecider = Callable[[ReplyHistory], str | None]


def _entry(row: Any) -> MoLogEntry:
    return MoLogEntry(
        id=row["id"], inbound_id=row["inbound_id"], msisdn=row["msisdn"],
        received_at=row["received_at"], keyword=row["keyword"], action=row["action"],
        detail=row["detail"], reply_kind=row["reply_kind"], replied=row["replied"],
        reply_message_id=row["reply_message_id"], reason=row["reason"], at=row["at"],
        handled_at=row["handled_at"])


class MoLogStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim(self, inbound_id: UUID, msisdn: str, received_at: datetime, *,
                    at: datetime, stale_after_s: float = 300.0) -> int | None:
        """Make the row of one inbound message; its id, or None if another handling has it.

        None when the message is already handled, or being handled by a claim younger than
        ``stale_after_s`` (the same message given twice at once). An unfinished claim older
        than that (a crash mid-way) is taken over, with ``at`` moved to the new claim.
        """
        entry_id: int | None = await self._pool.fetchval(
            _CLAIM, inbound_id, msisdn, received_at, at, float(stale_after_s))
        return entry_id

    async def reserve_reply(self, entry_id: int, msisdn: str, *, kind: str, since: datetime,
                            decide: ReplyDecider) -> str | None:
        """Reserve the reply of row ``entry_id`` if ``decide`` allows it; None when reserved,
        else the reason given by ``decide``.

        ``decide`` sees the number's replies since ``since`` and its last help reply, read
        under a lock on the number held until the row is marked ``replied``, so concurrent
        messages from one number (on any process) are decided one after the other. A row
        already reserved (a takeover after a crash) keeps its reservation.
        """
        if kind not in REPLY_KINDS:
            raise ValueError(f"reply kind must be one of {sorted(REPLY_KINDS)}, not {kind!r}")
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_NUMBER, _REPLY_LOCK_SPACE, msisdn)
            row = await conn.fetchrow(_HISTORY, entry_id, msisdn, since)
            if row is None or row["already"] is None:
                raise LookupError(f"mo_log row {entry_id} does not exist")
            if row["already"]:
                return None
            history = ReplyHistory(recent_replies=tuple(row["recent"]),
                                   last_help_reply=row["last_help"])
            refusal = decide(history)
            if refusal is None:
                await conn.execute(_RESERVE, entry_id, kind)
            return refusal

    async def release_reply(self, entry_id: int) -> None:
        """Undo :meth:`reserve_reply` (the reply could not be made)."""
        await self._pool.execute(_RELEASE, entry_id)

    async def record(self, entry_id: int, *, keyword: str | None, action: str | None,
                     detail: str, reply_message_id: UUID | None = None,
                     reason: str | None = None) -> None:
        """Write the outcome and mark the row handled."""
        await self._pool.execute(_RECORD, entry_id, keyword, action, detail, reply_message_id,
                                 reason)

    async def replies_since(self, msisdn: str, since: datetime) -> int:
        """Replies made (or reserved) to ``msisdn`` at or after ``since``."""
        count: int = await self._pool.fetchval(_REPLIES_SINCE, msisdn, since)
        return count

    async def last_unknown_reply(self, msisdn: str) -> datetime | None:
        """When ``msisdn`` last got help for an unrecognised message (None: never)."""
        at: datetime | None = await self._pool.fetchval(_LAST_HELP, msisdn)
        return at

    async def entries_for(self, msisdn: str, *, limit: int = 100) -> list[MoLogEntry]:
        """The rows of one number (E.164 digits, or a source as received), newest first."""
        return [_entry(row) for row in await self._pool.fetch(_ENTRIES, msisdn, limit)]

    async def entry_for(self, inbound_id: UUID) -> MoLogEntry | None:
        """The row of one inbound message."""
        row = await self._pool.fetchrow(_BY_INBOUND, inbound_id)
        return None if row is None else _entry(row)
