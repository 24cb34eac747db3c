"""Retention of personal data: message bodies and MO text are blanked after N days.

Rows are kept -- counts by status, class and day, events, receipts and dedupe keys stay
right -- only their text goes (sql/0013_retention.sql): ``messages.body`` becomes '' with
``body_purged_at`` set, once the message is in a terminal status; ``inbound_messages.text``
becomes '' with ``text_purged_at`` set, and its parts' payloads become empty.

Each batch is one short statement on the oldest rows not yet purged (a partial index finds
them). It skips rows another transaction holds (``FOR UPDATE SKIP LOCKED``), so it never
waits on the sender or the ledger writer; a skipped row is taken by the next run. Several
gateway processes may purge at once. A second run over the same data purges nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from gateway.domain import TERMINAL_STATUSES

log = logging.getLogger("smsgw.store.retention")

#: Default of retention.body_days: long enough for complaints and disputes about a message
#: or a bill cycle to be raised and settled, short enough not to keep every text for ever.
DEFAULT_BODY_DAYS = 180
#: Default of retention.interval_s: hourly runs stay small (an hour of traffic each).
DEFAULT_INTERVAL_S = 3600.0
#: Rows per statement: each batch is one short transaction.
DEFAULT_BATCH = 10_000

_TERMINAL = sorted(status.value for status in TERMINAL_STATUSES)

# The ids go through an array so the update finds them by primary key whatever the table's
# size (a join on a CTE lets the planner choose a sequential scan of the whole table).
_PURGE_MESSAGES = """
UPDATE messages SET body = '', body_purged_at = now()
WHERE id = ANY(ARRAY(
    SELECT id FROM messages
    WHERE body_purged_at IS NULL
      AND created_at < now() - make_interval(days => $1)
      AND status = ANY($2::text[])
    ORDER BY created_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED))
"""

_PURGE_INBOUND = """
WITH batch AS (
    SELECT ARRAY(
        SELECT id FROM inbound_messages
        WHERE text_purged_at IS NULL
          AND created_at < now() - make_interval(days => $1)
        ORDER BY created_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED) AS ids
), parts AS (
    UPDATE inbound_parts SET payload = ''::bytea
    WHERE message_id = ANY((SELECT ids FROM batch)::uuid[]) AND payload <> ''::bytea
)
UPDATE inbound_messages SET text = '', text_purged_at = now()
WHERE id = ANY((SELECT ids FROM batch)::uuid[])
"""


@dataclass(frozen=True, slots=True)
class PurgeResult:
    messages: int  # message bodies blanked
    inbound: int  # inbound messages (MO) whose text was blanked

    @property
    def total(self) -> int:
        return self.messages + self.inbound


def _updated(status: str) -> int:
    """Row count of an ``UPDATE n`` command tag."""
    return int(status.rsplit(" ", 1)[-1])


def _check(older_than_days: int, batch: int) -> None:
    if older_than_days < 1:
        raise ValueError(f"older_than_days must be at least 1, not {older_than_days}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")


class RetentionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _batches(self, sql: str, *args: object, batch: int, pause_s: float) -> int:
        total = 0
        while True:
            done = _updated(await self._pool.execute(sql, *args, batch))
            total += done
            if done < batch:
                return total
            if pause_s > 0:
                await asyncio.sleep(pause_s)

    async def purge_bodies(self, older_than_days: int, batch: int = DEFAULT_BATCH, *,
                           pause_s: float = 0.0) -> int:
        """Blank the bodies of terminal messages created more than N days ago; how many.

        ``pause_s``: a rest between batches, leaving Postgres to the traffic."""
        _check(older_than_days, batch)
        return await self._batches(_PURGE_MESSAGES, older_than_days, _TERMINAL, batch=batch,
                                   pause_s=pause_s)

    async def purge_mo_text(self, older_than_days: int, batch: int = DEFAULT_BATCH, *,
                            pause_s: float = 0.0) -> int:
        """Blank the text (and part payloads) of MOs received more than N days ago; how many."""
        _check(older_than_days, batch)
        return await self._batches(_PURGE_INBOUND, older_than_days, batch=batch,
                                   pause_s=pause_s)

    async def purge(self, older_than_days: int, batch: int = DEFAULT_BATCH, *,
                    pause_s: float = 0.0) -> PurgeResult:
        """:meth:`purge_bodies` then :meth:`purge_mo_text`; logs what it did."""
        result = PurgeResult(
            messages=await self.purge_bodies(older_than_days, batch, pause_s=pause_s),
            inbound=await self.purge_mo_text(older_than_days, batch, pause_s=pause_s))
        if result.total:
            log.info("retention: blanked %d message bodies and %d MO texts older than %d days",
                     result.messages, result.inbound, older_than_days)
        return result


_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def retention_loop(store: RetentionStore, *, days: int, interval_s: float,
                         stop: asyncio.Event, batch: int = DEFAULT_BATCH,
                         pause_s: float = 0.1) -> None:
    """Purge at once, then every ``interval_s``, until ``stop`` is set.

    ``days`` 0 (or less) means keep for ever: returns at once. A failed run (Postgres down)
    is logged and tried again at the next interval.
    """
    if days <= 0:
        log.info("retention off: message bodies and MO text are kept")
        return
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, not {interval_s}")
    log.info("retention: blanking texts older than %d days every %.0f s", days, interval_s)
    while not stop.is_set():
        try:
            await store.purge(days, batch, pause_s=pause_s)
        except _PG_ERRORS as exc:
            log.warning("retention purge failed (%s: %s); next try in %.0f s",
                        type(exc).__name__, exc, interval_s)
        except Exception:
            log.exception("retention purge failed; next try in %.0f s", interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
