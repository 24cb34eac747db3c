"""Ledger writes of the send-time advertising rules (see gateway/compliance.py).

Messages reach these methods claimed (status ``submitting``) and not yet on the wire:

* :meth:`AdvertisingStore.defer` puts them in ``held`` until ``not_before`` (outside the
  window, over the cap); :meth:`AdvertisingStore.release_due` queues them again when due
  (campaign messages are released by their campaign instead);
* :meth:`AdvertisingStore.cancel_claimed` cancels them (refused or on the Do-Not-Call list);
* :meth:`AdvertisingStore.enforce_cap` counts, per number and advertiser, the advertising
  claimed in the last 24 h and defers the excess — under a transaction-scoped advisory lock
  per (advertiser, number), so two workers or two gateway processes claiming for the same
  number are counted one after the other, never both as the third.

Every change writes a ``message_events`` row with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from gateway.compliance import cap_deferrals

_DEFER = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, until, reason)
), upd AS (
    UPDATE messages m
    SET status = 'held', not_before = u.until, last_error = u.reason, updated_at = now()
    FROM u
    WHERE m.id = u.id AND m.status = 'submitting'
    RETURNING m.id, u.reason
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'held', reason FROM upd
)
SELECT count(*) FROM upd
"""

_CANCEL = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::text[]) AS u(id, reason)
), upd AS (
    UPDATE messages m
    SET status = 'cancelled', last_error = u.reason, done_at = now(), updated_at = now()
    FROM u
    WHERE m.id = u.id AND m.status = 'submitting'
    RETURNING m.id, u.reason
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'cancelled', reason FROM upd
)
SELECT count(*) FROM upd
"""

# One lock per (advertiser, number), taken in a fixed order so batches cannot deadlock.
_LOCK = """
SELECT count(pg_advisory_xact_lock(h)) FROM (
    SELECT DISTINCT hashtextextended(k, 9120) AS h FROM unnest($1::text[]) AS k ORDER BY h
) AS s
"""

# Advertising of these numbers claimed in the 24 h before $3 by advertiser $2, other than
# the batch's own rows: what the SMSC has or may have (failed/rejected/requeued don't count).
_HISTORY = """
SELECT msisdn, submitting_at FROM messages
WHERE msisdn = ANY($1::text[]) AND class = 'advertising' AND submitting_at IS NOT NULL
  AND submitting_at > $3::timestamptz - interval '24 hours'
  AND COALESCE(advertiser, sender) = $2
  AND status IN ('submitting', 'submitted', 'delivered', 'undelivered', 'expired')
  AND id <> ALL($4::uuid[])
"""

_RELEASE_DUE = """
WITH due AS (
    SELECT id FROM messages
    WHERE status = 'held' AND campaign_id IS NULL AND not_before <= $1
    ORDER BY not_before LIMIT $2
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE messages m SET status = 'queued', not_before = NULL, updated_at = now()
    FROM due WHERE m.id = due.id
    RETURNING m.id, m.priority
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'queued', 'due again after a deferral' FROM upd
)
SELECT id, priority FROM upd
"""


@dataclass(frozen=True, slots=True)
class CapCandidate:
    """A claimed advertising message for :meth:`AdvertisingStore.enforce_cap`."""

    id: UUID
    msisdn: str
    advertiser: str


class AdvertisingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def defer(self, ids: Sequence[UUID], until: Sequence[datetime],
                    reasons: Sequence[str]) -> int:
        """Claimed messages → held until the given times (each with its reason)."""
        if not ids:
            return 0
        n: int = await self._pool.fetchval(_DEFER, list(ids), list(until), list(reasons))
        return n

    async def cancel_claimed(self, ids: Sequence[UUID], reasons: Sequence[str]) -> int:
        """Claimed messages → cancelled (never sent), each with its reason."""
        if not ids:
            return 0
        n: int = await self._pool.fetchval(_CANCEL, list(ids), list(reasons))
        return n

    async def enforce_cap(self, batch: Sequence[CapCandidate], *, limit: int, now: datetime
                          ) -> dict[UUID, datetime]:
        """Defer what would exceed ``limit`` per number per 24 h per advertiser; returns the
        deferred ids with the time each may go. The batch's order decides who goes first."""
        if not batch:
            return {}
        by_adv: dict[str, list[CapCandidate]] = defaultdict(list)
        for cand in batch:
            by_adv[cand.advertiser].append(cand)
        batch_ids = [c.id for c in batch]
        deferred: dict[UUID, datetime] = {}
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.fetchval(_LOCK, sorted({f"{c.advertiser}\x1f{c.msisdn}" for c in batch}))
            for advertiser, cands in by_adv.items():
                rows = await conn.fetch(_HISTORY, sorted({c.msisdn for c in cands}),
                                        advertiser, now, batch_ids)
                history: dict[str, list[datetime]] = defaultdict(list)
                for row in rows:
                    history[row["msisdn"]].append(row["submitting_at"])
                per_number: dict[str, list[CapCandidate]] = defaultdict(list)
                for cand in cands:
                    per_number[cand.msisdn].append(cand)
                for msisdn, mine in per_number.items():
                    allowed, until = cap_deferrals(limit, history[msisdn], len(mine), now)
                    for cand in mine[allowed:]:
                        assert until is not None
                        deferred[cand.id] = until
            if deferred:
                ids = list(deferred)
                await conn.fetchval(
                    _DEFER, ids, [deferred[i] for i in ids],
                    [f"advertising cap: already {limit} advertising SMS to this number in "
                     f"24 h; waits until {deferred[i]:%Y-%m-%d %H:%M} UTC" for i in ids])
        return deferred

    async def release_due(self, now: datetime, *, limit: int = 1000) -> list[tuple[UUID, int]]:
        """Held messages outside campaigns whose time has come → queued; (id, priority)."""
        rows = await self._pool.fetch(_RELEASE_DUE, now, limit)
        return [(r["id"], r["priority"]) for r in rows]
