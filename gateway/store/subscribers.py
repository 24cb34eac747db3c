"""Subscribers of the care programs (birthday, holidays, surveys), keyed by E.164 msisdn.

Writes are batched upserts: one statement per batch (``INSERT ... SELECT FROM unnest(...)``
with ``ON CONFLICT (msisdn) DO UPDATE``). A batch may name the columns it carries
(``columns=``): only those are overwritten on an existing subscriber, so a file without a
``tier`` column does not wipe the tiers already stored. ``attributes`` are merged (keys of the
batch replace the same keys, other keys stay).

Readers page with keysets on ``msisdn`` (``after_msisdn`` = the last number of the previous
page) and only see ``active`` subscribers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg

from gateway.smpp.encoding import khong_dau

log = logging.getLogger("smsgw.store.subscribers")

#: Membership tiers, lowest first, as stored.
TIERS = ("Thân thiết", "Bạc", "Titan", "Vàng", "Kim cương")
#: Values of ``subscribers.status``.
STATUSES = ("active", "suspended")

#: Columns an upsert may overwrite on an existing subscriber (msisdn is the key).
UPDATABLE_COLUMNS = ("full_name", "date_of_birth", "tier", "points", "segment", "status",
                     "khong_dau", "attributes")

_TIER_KEYS = {khong_dau(t).casefold().replace(" ", ""): t for t in TIERS}

_COLUMNS = """
msisdn, full_name, date_of_birth, tier, points, segment, status, khong_dau, attributes,
created_at, updated_at
"""

# xmax = 0 on the returned row: the row was inserted, not updated.
_UPSERT = """
INSERT INTO subscribers AS s (msisdn, full_name, date_of_birth, tier, points, segment, status,
                              khong_dau, attributes)
SELECT u.msisdn, u.full_name, u.date_of_birth, u.tier, u.points, u.segment, u.status,
       u.khong_dau, u.attributes::jsonb
FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::integer[], $6::text[],
            $7::text[], $8::boolean[], $9::text[])
     AS u(msisdn, full_name, date_of_birth, tier, points, segment, status, khong_dau,
          attributes)
ON CONFLICT (msisdn) DO UPDATE SET {assignments}updated_at = now()
RETURNING s.msisdn, (s.xmax = 0) AS inserted
"""

_GET = f"SELECT {_COLUMNS} FROM subscribers WHERE msisdn = $1"
_COUNT = "SELECT count(*) FROM subscribers"

# The expressions match subscribers_birthday_idx so the index serves the lookup.
_BORN_ON = f"""
SELECT {_COLUMNS} FROM subscribers
WHERE date_of_birth IS NOT NULL
  AND extract(month FROM date_of_birth) = $1::integer
  AND extract(day FROM date_of_birth) = $2::integer
  AND status = 'active' AND msisdn > $3
ORDER BY msisdn
LIMIT $4
"""

_IN_SEGMENT = f"""
SELECT {_COLUMNS} FROM subscribers
WHERE status = 'active'
  AND ($1::text[] IS NULL OR tier = ANY($1::text[]))
  AND ($2::text IS NULL OR segment = $2::text)
  AND msisdn > $3
ORDER BY msisdn
LIMIT $4
"""

_SET_STATUS = """
UPDATE subscribers SET status = $2, updated_at = now() WHERE msisdn = $1 RETURNING msisdn
"""


@dataclass(frozen=True, slots=True)
class Subscriber:
    msisdn: str  # E.164 digits, e.g. 84901234567
    full_name: str = ""
    date_of_birth: date | None = None
    tier: str = ""  # one of TIERS, or "" when unknown
    points: int = 0
    segment: str = ""
    status: str = "active"  # one of STATUSES
    khong_dau: bool = False  # prefers SMS without diacritics
    attributes: Mapping[str, Any] = field(default_factory=dict)  # extra columns of imports
    created_at: datetime | None = None  # set by the database
    updated_at: datetime | None = None


def canonical_tier(value: str) -> str | None:
    """``"vang"``, ``"VÀNG"``, ``"Vàng"`` → ``"Vàng"``; None when it is no tier of ours."""
    return _TIER_KEYS.get(khong_dau(value.strip()).casefold().replace(" ", ""))


def _subscriber(row: Any) -> Subscriber:
    attributes = row["attributes"]
    return Subscriber(
        msisdn=row["msisdn"],
        full_name=row["full_name"],
        date_of_birth=row["date_of_birth"],
        tier=row["tier"],
        points=row["points"],
        segment=row["segment"],
        status=row["status"],
        khong_dau=row["khong_dau"],
        attributes=json.loads(attributes) if isinstance(attributes, str) else dict(attributes),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _upsert_sql(columns: Collection[str] | None) -> str:
    chosen = UPDATABLE_COLUMNS if columns is None else tuple(
        c for c in UPDATABLE_COLUMNS if c in columns)
    unknown = set(columns or ()) - set(UPDATABLE_COLUMNS) - {"msisdn"}
    if unknown:
        raise ValueError(f"unknown subscriber column(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(UPDATABLE_COLUMNS)}")
    parts = [
        "attributes = s.attributes || EXCLUDED.attributes" if c == "attributes"
        else f"{c} = EXCLUDED.{c}"
        for c in chosen
    ]
    return _UPSERT.format(assignments="".join(p + ", " for p in parts))


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be {' or '.join(STATUSES)}, not {status!r}")


class SubscriberStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert_detailed(self, rows: Sequence[Subscriber], *,
                              columns: Collection[str] | None = None) -> dict[str, bool]:
        """Insert or update ``rows`` in one statement; msisdn → True when it was new.

        ``columns``: the columns to overwrite on existing subscribers (default all). A number
        must appear once per call (Postgres cannot update one row twice in a statement).
        """
        if not rows:
            return {}
        for row in rows:
            _check_status(row.status)
        sql = _upsert_sql(columns)
        result = await self._pool.fetch(
            sql,
            [r.msisdn for r in rows],
            [r.full_name for r in rows],
            [r.date_of_birth for r in rows],
            [r.tier for r in rows],
            [r.points for r in rows],
            [r.segment for r in rows],
            [r.status for r in rows],
            [r.khong_dau for r in rows],
            [json.dumps(dict(r.attributes), ensure_ascii=False, default=str) for r in rows],
        )
        return {rec["msisdn"]: rec["inserted"] for rec in result}

    async def upsert_many(self, rows: Sequence[Subscriber], *,
                          columns: Collection[str] | None = None) -> int:
        """Insert or update ``rows`` (one round trip); the number of rows written."""
        return len(await self.upsert_detailed(rows, columns=columns))

    async def get(self, msisdn: str) -> Subscriber | None:
        """The subscriber with this E.164 number (normalise it first), or None."""
        row = await self._pool.fetchrow(_GET, msisdn)
        return None if row is None else _subscriber(row)

    async def count(self) -> int:
        value: int = await self._pool.fetchval(_COUNT)
        return value

    async def born_on(self, month: int, day: int, *, limit: int = 1000,
                      after_msisdn: str = "") -> list[Subscriber]:
        """Active subscribers born on ``day``/``month`` (any year), by msisdn after
        ``after_msisdn``. 29 February is only matched when asked for: the caller decides
        whether to ask for it on 28 February of common years."""
        if not (1 <= month <= 12 and 1 <= day <= 31):
            raise ValueError(f"no such day: month {month}, day {day}")
        rows = await self._pool.fetch(_BORN_ON, month, day, after_msisdn, limit)
        return [_subscriber(r) for r in rows]

    async def in_segment(self, *, tiers: Sequence[str] | None = None,
                         segment: str | None = None, after_msisdn: str = "",
                         limit: int = 1000) -> list[Subscriber]:
        """Active subscribers of the given tiers (None: any) and segment (None: any), by
        msisdn after ``after_msisdn``. Tiers are matched accent- and case-insensitively."""
        wanted: list[str] | None = None
        if tiers is not None:
            if isinstance(tiers, str):
                raise TypeError("tiers must be a sequence of tier names, not one string")
            wanted = []
            for tier in tiers:
                found = canonical_tier(tier)
                if found is None:
                    raise ValueError(f"unknown tier {tier!r}; the tiers are {', '.join(TIERS)}")
                wanted.append(found)
        rows = await self._pool.fetch(_IN_SEGMENT, wanted, segment, after_msisdn, limit)
        return [_subscriber(r) for r in rows]

    async def set_status(self, msisdn: str, status: str) -> bool:
        """Set ``active`` / ``suspended``; False when there is no such subscriber."""
        _check_status(status)
        row = await self._pool.fetchrow(_SET_STATUS, msisdn, status)
        return row is not None
