"""The greetings ledger (``greetings_sent``) and the subscribers a greeting goes to.

A greeting run pages through the subscribers it targets in ``msisdn`` order (keyset
pagination) and claims each page in one statement: the page's subscribers are inserted into
the ledger with ``ON CONFLICT DO NOTHING`` and the statement reports, per subscriber, whether
this call inserted its row (``claimed``: create its message) or found a row that an earlier
run claimed long ago but never got a message for (``retry``: create it again, with the same
idempotency key, so it is still made once). Subscribers whose greeting is already done, or was
claimed only moments ago (another runner is on it), are left out of the page.

Statements run in autocommit, each page in ascending ``msisdn`` order, so concurrent runners
wait on each other's rows in the same order and cannot deadlock.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

log = logging.getLogger("smsgw.store.greetings")

#: Page filter shared by both claims: active, after the cursor, not done and not being done.
_PAGE = """
WITH page AS (
    SELECT s.msisdn, s.full_name, s.tier, s.points, s.segment, s.khong_dau, s.attributes
    FROM subscribers s
    WHERE s.status = 'active' AND s.msisdn > $3
      AND {match}
      AND NOT EXISTS (
          SELECT 1 FROM greetings_sent g
          WHERE g.kind = $1 AND g.period = $2 AND g.msisdn = s.msisdn
            AND (g.message_id IS NOT NULL OR g.error IS NOT NULL
                 OR g.created_at > now() - make_interval(secs => $5::double precision)))
    ORDER BY s.msisdn
    LIMIT $4
), claimed AS (
    INSERT INTO greetings_sent (kind, period, msisdn)
    SELECT $1, $2, msisdn FROM page ORDER BY msisdn
    ON CONFLICT DO NOTHING
    RETURNING msisdn
)
SELECT p.*, c.msisdn IS NOT NULL AS claimed,
       c.msisdn IS NULL AND EXISTS (
           SELECT 1 FROM greetings_sent g
           WHERE g.kind = $1 AND g.period = $2 AND g.msisdn = p.msisdn
             AND g.message_id IS NULL AND g.error IS NULL) AS retry
FROM page p LEFT JOIN claimed c USING (msisdn)
ORDER BY p.msisdn
"""

# Born on month $6, day $7 (the expressions of subscribers_birthday_idx).
_CLAIM_BIRTHDAYS = _PAGE.format(match="""s.date_of_birth IS NOT NULL
      AND extract(month FROM s.date_of_birth) = $6::integer
      AND extract(day FROM s.date_of_birth) = $7::integer""")

# In one of the tiers $6 (lower-cased; empty = every tier) and segment $7 ('' = any).
_CLAIM_AUDIENCE = _PAGE.format(match="""(cardinality($6::text[]) = 0
           OR lower(btrim(s.tier)) = ANY($6::text[]))
      AND ($7::text = '' OR s.segment = $7::text)""")

_RECORD_SENT = """
UPDATE greetings_sent g SET message_id = u.message_id
FROM unnest($3::text[], $4::uuid[]) AS u(msisdn, message_id)
WHERE g.kind = $1 AND g.period = $2 AND g.msisdn = u.msisdn AND g.message_id IS NULL
"""

_RECORD_FAILED = """
UPDATE greetings_sent g SET error = u.error
FROM unnest($3::text[], $4::text[]) AS u(msisdn, error)
WHERE g.kind = $1 AND g.period = $2 AND g.msisdn = u.msisdn AND g.message_id IS NULL
"""

_ENTRIES = """
SELECT kind, period, msisdn, message_id, error, created_at
FROM greetings_sent
WHERE kind = $1 AND period = $2
ORDER BY msisdn
"""


@dataclass(frozen=True, slots=True)
class Recipient:
    """A subscriber a greeting goes to, with what the templates may use."""

    msisdn: str  # E.164 digits
    full_name: str
    tier: str
    points: int
    segment: str
    khong_dau: bool
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClaimedPage:
    """One page of a run: whom to greet now, and where the next page starts."""

    new: tuple[Recipient, ...]  # claimed by this call
    retry: tuple[Recipient, ...]  # claimed by an earlier run that never made the message
    cursor: str | None  # msisdn of the page's last subscriber; None = no more pages
    scanned: int  # subscribers in the page (claimed, retried or left to another runner)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    kind: str
    period: str
    msisdn: str
    message_id: UUID | None
    error: str | None
    created_at: datetime


def tier_key(tier: str) -> str:
    """How tiers are compared: NFC, trimmed, lower-cased (``" Vàng"`` matches ``"vàng"``)."""
    return unicodedata.normalize("NFC", tier).strip().lower()


def _attributes(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return dict(value or {})


def _page(rows: Sequence[Any]) -> ClaimedPage:
    new: list[Recipient] = []
    retry: list[Recipient] = []
    for row in rows:
        recipient = Recipient(msisdn=row["msisdn"], full_name=row["full_name"], tier=row["tier"],
                              points=row["points"], segment=row["segment"],
                              khong_dau=row["khong_dau"],
                              attributes=_attributes(row["attributes"]))
        if row["claimed"]:
            new.append(recipient)
        elif row["retry"]:
            retry.append(recipient)
    cursor = rows[-1]["msisdn"] if rows else None
    return ClaimedPage(new=tuple(new), retry=tuple(retry), cursor=cursor, scanned=len(rows))


class GreetingStore:
    """Claims of subscribers for a greeting, and what became of them."""

    def __init__(self, pool: asyncpg.Pool, *, retry_after_s: float = 120.0) -> None:
        """``retry_after_s``: a claim without a message is retried once it is this old."""
        self._pool = pool
        self._retry_after_s = float(retry_after_s)

    async def claim_birthdays(self, kind: str, period: str, *, month: int, day: int,
                              after: str, limit: int) -> ClaimedPage:
        """The next page (after msisdn ``after``) of active subscribers born on month/day."""
        rows = await self._pool.fetch(_CLAIM_BIRTHDAYS, kind, period, after, limit,
                                      self._retry_after_s, month, day)
        return _page(rows)

    async def claim_audience(self, kind: str, period: str, *, tiers: Sequence[str],
                             segment: str, after: str, limit: int) -> ClaimedPage:
        """The next page of active subscribers in ``tiers`` (empty = all) and ``segment``."""
        rows = await self._pool.fetch(_CLAIM_AUDIENCE, kind, period, after, limit,
                                      self._retry_after_s, [tier_key(t) for t in tiers],
                                      segment)
        return _page(rows)

    async def record_sent(self, kind: str, period: str,
                          sent: Sequence[tuple[str, UUID]]) -> None:
        """Store the message made for each claimed ``(msisdn, message_id)``."""
        if sent:
            await self._pool.execute(_RECORD_SENT, kind, period, [m for m, _ in sent],
                                     [i for _, i in sent])

    async def record_failed(self, kind: str, period: str,
                            failed: Sequence[tuple[str, str]]) -> None:
        """Mark claims whose message cannot be made (``(msisdn, reason)``): never retried."""
        if failed:
            await self._pool.execute(_RECORD_FAILED, kind, period, [m for m, _ in failed],
                                     [e for _, e in failed])

    async def entries(self, kind: str, period: str) -> list[LedgerEntry]:
        """Every ledger row of one greeting, in msisdn order."""
        rows = await self._pool.fetch(_ENTRIES, kind, period)
        return [LedgerEntry(kind=r["kind"], period=r["period"], msisdn=r["msisdn"],
                            message_id=r["message_id"], error=r["error"],
                            created_at=r["created_at"]) for r in rows]
