"""Campaigns (marketing broadcasts): their rows, their messages' life, their reports.

An upload is one transaction (:meth:`CampaignStore.ingest`): the campaign row, every
recipient's message streamed in with COPY (status ``held``; ids time-ordered UUIDv7, given by
the parser, so the primary key grows at its end instead of at random places), then,
set-based, the earlier rows of repeated numbers removed, advertising to refused /
Do-Not-Call numbers removed and the counts taken. A failure anywhere leaves nothing behind.

Running is done in slices: :meth:`release` moves held messages of a running campaign to
``queued`` (with an event each) for the runner to enqueue; :meth:`hold_queued` puts queued
ones back on pause; :meth:`cancel_waiting` cancels what is still waiting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from gateway.domain import MessageStatus


class CampaignStatus:
    DRAFT = "draft"
    APPROVED = "approved"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


#: message columns an upload COPYs, in order
MESSAGE_COLUMNS: tuple[str, ...] = (
    "id", "msisdn", "body", "encoding", "segments", "campaign_line", "sender", "template",
    "class", "priority", "khong_dau", "status", "campaign_id", "advertiser", "api_key_id")


class EmptyUpload(Exception):
    """Not one row of the upload can become a message; the transaction was rolled back."""

    def __init__(self, upload: dict[str, Any]) -> None:
        super().__init__("no message to send")
        self.upload = upload


@dataclass(frozen=True, slots=True, kw_only=True)
class NewCampaign:
    id: UUID
    name: str
    message_class: str
    sender: str
    advertiser: str
    template: str | None
    source: str
    file_name: str
    created_by: int | None
    schedule_at: datetime | None


@dataclass(frozen=True, slots=True)
class UploadTail:
    """What the parser knows once every row is read."""

    duplicate_ids: Sequence[UUID]  # earlier rows of repeated numbers (already COPYed)
    rejects: Sequence[tuple[int, str, str, str]]  # (line, value, kind, reason)
    rows: int
    samples: Sequence[dict[str, Any]]
    # (messages, segments) per encoding of the rows COPYed and not repeated; None: count them
    by_encoding: Mapping[str, tuple[int, int]] | None = None


@dataclass(frozen=True, slots=True)
class Campaign:
    id: UUID
    name: str
    message_class: str
    sender: str
    advertiser: str
    template: str | None
    source: str
    status: str
    file_name: str
    created_by: int | None
    approved_by: int | None
    created_at: datetime
    approved_at: datetime | None
    schedule_at: datetime | None
    started_at: datetime | None
    paused_at: datetime | None
    finished_at: datetime | None
    upload: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def _obj(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _campaign(row: Any) -> Campaign:
    return Campaign(
        id=row["id"], name=row["name"], message_class=row["class"], sender=row["sender"],
        advertiser=row["advertiser"], template=row["template"], source=row["source"],
        status=row["status"], file_name=row["file_name"], created_by=row["created_by"],
        approved_by=row["approved_by"], created_at=row["created_at"],
        approved_at=row["approved_at"], schedule_at=row["schedule_at"],
        started_at=row["started_at"], paused_at=row["paused_at"],
        finished_at=row["finished_at"], upload=_obj(row["upload"]) or {},
        estimate=_obj(row["estimate"]) or {}, samples=_obj(row["samples"]) or [])


_INSERT = """
INSERT INTO campaigns (id, name, class, sender, advertiser, template, source, file_name,
                       created_by, schedule_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""

_DELETE_DUPLICATES = "DELETE FROM messages WHERE id = ANY($1::uuid[])"

# Advertising to numbers that refused or are on the Do-Not-Call list (not the voice-only
# list) is not created; each removed row is kept as a 'suppressed' reject with its reason.
_SUPPRESS = """
WITH gone AS (
    DELETE FROM messages m
    USING (
        SELECT DISTINCT ON (msisdn) msisdn, reason FROM (
            SELECT msisdn, 'opted out' AS reason FROM consent_state WHERE refused
            UNION ALL
            SELECT msisdn, 'Do-Not-Call' FROM dnc_numbers WHERE channels <> 'voice'
        ) AS x ORDER BY msisdn, reason DESC
    ) AS sup
    WHERE m.campaign_id = $1 AND m.msisdn = sup.msisdn
    RETURNING m.campaign_line, m.msisdn, sup.reason, m.encoding, m.segments
), ins AS (
    INSERT INTO campaign_rejects (campaign_id, line, value, kind, reason)
    SELECT $1, campaign_line, msisdn, 'suppressed', reason FROM gone
)
SELECT reason, encoding, count(*) AS n, sum(segments) AS segments FROM gone
GROUP BY reason, encoding
"""

_ENCODINGS = """
SELECT encoding, count(*) AS n, sum(segments) AS segments FROM messages
WHERE campaign_id = $1 GROUP BY encoding
"""

_LOG = "INSERT INTO campaign_log (campaign_id, action, api_key_id, detail) VALUES ($1,$2,$3,$4)"

# A lifecycle move, only from the allowed statuses; sets the matching time column.
_MOVE = """
UPDATE campaigns SET status = $2,
    approved_at = CASE WHEN $2 = 'approved' THEN now() ELSE approved_at END,
    approved_by = CASE WHEN $2 = 'approved' THEN $4 ELSE approved_by END,
    started_at = CASE WHEN $2 = 'running' AND started_at IS NULL THEN now()
                      ELSE started_at END,
    paused_at = CASE WHEN $2 = 'paused' THEN now() ELSE paused_at END,
    finished_at = CASE WHEN $2 IN ('completed', 'cancelled') THEN now() ELSE finished_at END
WHERE id = $1 AND status = ANY($3::text[])
RETURNING *
"""

_HOLD_QUEUED = """
WITH locked AS (
    SELECT id FROM messages WHERE campaign_id = $1 AND status = 'queued'
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE messages m SET status = 'held', updated_at = now()
    FROM locked WHERE m.id = locked.id AND m.status = 'queued'
    RETURNING m.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail) SELECT id, 'held', $2 FROM upd
)
SELECT count(*) FROM upd
"""

_CANCEL_WAITING = """
WITH locked AS (
    SELECT id FROM messages WHERE campaign_id = $1 AND status IN ('held', 'queued')
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE messages m SET status = 'cancelled', last_error = $2, done_at = now(),
                          updated_at = now()
    FROM locked WHERE m.id = locked.id AND m.status IN ('held', 'queued')
    RETURNING m.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'cancelled', $2 FROM upd
)
SELECT count(*) FROM upd
"""

# Only while the campaign is running, checked under a share lock on its row: a pause or
# cancel (an UPDATE of that row, then hold_queued / cancel_waiting) either waits for this
# release to commit and then takes back what it queued, or commits first, and then this
# release finds the campaign no longer running and releases nothing. Without the lock a
# runner (of any process) that read the campaign as running just before the pause could
# queue messages after the pause had held the queued ones.
_RELEASE = """
WITH c AS MATERIALIZED (
    SELECT id FROM campaigns WHERE id = $1 AND status = 'running' FOR SHARE
), pick AS (
    SELECT m.id FROM messages m
    WHERE m.campaign_id = (SELECT id FROM c) AND m.status = 'held'
      AND (m.not_before IS NULL OR m.not_before <= $3)
    LIMIT $2 FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE messages m SET status = 'queued', not_before = NULL, updated_at = now()
    FROM pick WHERE m.id = pick.id
    RETURNING m.id, m.campaign_line
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'queued', 'released by its campaign' FROM upd
)
SELECT id FROM upd ORDER BY campaign_line
"""

_IN_PIPELINE = """
SELECT count(*) FROM messages WHERE campaign_id = $1 AND status IN ('queued', 'submitting')
"""

_WAITING = """
SELECT count(*) FILTER (WHERE status IN ('queued', 'submitting')) AS moving,
       count(*) FILTER (WHERE status = 'held') AS held,
       min(not_before) FILTER (WHERE status = 'held') AS next_due
FROM messages WHERE campaign_id = $1 AND status IN ('held', 'queued', 'submitting')
"""

_COUNTS = "SELECT status, count(*) AS n FROM messages WHERE campaign_id = $1 GROUP BY status"

_TIMELINE = """
SELECT to_timestamp(floor(extract(epoch FROM done_at) / $2) * $2) AS t,
       count(*) FILTER (WHERE status = 'delivered') AS delivered,
       count(*) FILTER (WHERE status IN ('undelivered', 'expired', 'rejected', 'failed'))
           AS failed
FROM messages WHERE campaign_id = $1 AND done_at IS NOT NULL
GROUP BY 1 ORDER BY 1
"""

_RATE = """
SELECT count(*) FROM messages
WHERE campaign_id = $1 AND status NOT IN ('held', 'queued', 'submitting', 'cancelled')
  AND submitted_at > now() - make_interval(secs => $2)
"""

_REPORT = """
SELECT campaign_line, msisdn, status, encoding, segments, created_at, submitted_at, done_at,
       last_error, link
FROM messages WHERE campaign_id = $1 ORDER BY campaign_line
"""

_RECANCEL = """
WITH upd AS (
    UPDATE messages m SET status = 'cancelled', last_error = 'campaign cancelled',
                          done_at = now(), updated_at = now()
    FROM campaigns c
    WHERE c.status = 'cancelled' AND c.finished_at > now() - interval '10 minutes'
      AND m.campaign_id = c.id AND m.status IN ('held', 'queued')
    RETURNING m.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'cancelled', 'campaign cancelled' FROM upd
)
SELECT count(*) FROM upd
"""

_REJECTS = """
SELECT line, value, kind, reason FROM campaign_rejects
WHERE campaign_id = $1 AND ($2::text IS NULL OR kind = $2) ORDER BY line LIMIT $3
"""


class CampaignStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ingest(self, new: NewCampaign, copy_text: AsyncIterable[bytes],
                     tail: Callable[[], UploadTail]) -> Campaign:
        """Create the campaign and its held messages in one transaction (see module doc).
        ``copy_text``: the messages in COPY's text format, ``MESSAGE_COLUMNS`` in order."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_INSERT, new.id, new.name, new.message_class, new.sender,
                               new.advertiser, new.template, new.source, new.file_name,
                               new.created_by, new.schedule_at)
            await conn.copy_to_table("messages", source=copy_text,
                                     columns=list(MESSAGE_COLUMNS), format="text")
            done = tail()
            if done.duplicate_ids:
                await conn.execute(_DELETE_DUPLICATES, list(done.duplicate_ids))
            if done.rejects:
                await conn.copy_records_to_table(
                    "campaign_rejects", columns=["campaign_id", "line", "value", "kind", "reason"],
                    records=((new.id, *r) for r in done.rejects))
            suppressed = {"opted_out": 0, "dnc": 0}
            gone: dict[str, list[int]] = {"gsm7": [0, 0], "ucs2": [0, 0]}
            if new.message_class == "advertising":
                for row in await conn.fetch(_SUPPRESS, new.id):
                    suppressed["opted_out" if row["reason"] == "opted out" else "dnc"] += row["n"]
                    gone[row["encoding"]][0] += row["n"]
                    gone[row["encoding"]][1] += int(row["segments"])
            if done.by_encoding is None:
                by_enc = {r["encoding"]: (r["n"], int(r["segments"]))
                          for r in await conn.fetch(_ENCODINGS, new.id)}
            else:
                by_enc = {e: (n - gone[e][0], segs - gone[e][1])
                          for e, (n, segs) in done.by_encoding.items()}
            rejected = sum(1 for r in done.rejects if r[2] == "rejected")
            upload = {"rows": done.rows,
                      "accepted": sum(n for n, _ in by_enc.values()),
                      "duplicates": len(done.duplicate_ids),
                      "rejected": rejected, "suppressed": suppressed}
            if not upload["accepted"]:
                raise EmptyUpload(upload)
            estimate = {"messages": upload["accepted"],
                        "segments": sum(s for _, s in by_enc.values()),
                        "by_encoding": {e: by_enc.get(e, (0, 0))[0] for e in ("gsm7", "ucs2")},
                        "segments_by_encoding": {e: by_enc.get(e, (0, 0))[1]
                                                 for e in ("gsm7", "ucs2")}}
            row = await conn.fetchrow(
                "UPDATE campaigns SET upload = $2, estimate = $3, samples = $4 WHERE id = $1 "
                "RETURNING *", new.id, json.dumps(upload), json.dumps(estimate),
                json.dumps(list(done.samples)))
            await conn.execute(_LOG, new.id, "uploaded", new.created_by,
                               f"{new.file_name}: {upload['accepted']} accepted")
        return _campaign(row)

    async def get(self, campaign_id: UUID) -> Campaign | None:
        row = await self._pool.fetchrow("SELECT * FROM campaigns WHERE id = $1", campaign_id)
        return None if row is None else _campaign(row)

    async def recent(self, *, limit: int = 100) -> list[Campaign]:
        rows = await self._pool.fetch(
            "SELECT * FROM campaigns ORDER BY created_at DESC LIMIT $1", limit)
        return [_campaign(r) for r in rows]

    async def move(self, campaign_id: UUID, to: str, *, allowed_from: Sequence[str],
                   api_key_id: int | None, detail: str = "") -> Campaign | None:
        """Change the status if it is one of ``allowed_from``; None otherwise."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_MOVE, campaign_id, to, list(allowed_from), api_key_id)
            if row is None:
                return None
            await conn.execute(_LOG, campaign_id, to, api_key_id, detail)
        return _campaign(row)

    async def log(self, campaign_id: UUID) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT at, action, api_key_id, detail FROM campaign_log WHERE campaign_id = $1 "
            "ORDER BY id", campaign_id)
        return [dict(r) for r in rows]

    async def due_scheduled(self, now: datetime) -> list[UUID]:
        """Scheduled campaigns whose time has come → running (one process wins each)."""
        rows = await self._pool.fetch(
            "UPDATE campaigns SET status = 'running', started_at = COALESCE(started_at, now()) "
            "WHERE status = 'scheduled' AND (schedule_at IS NULL OR schedule_at <= $1) "
            "RETURNING id", now)
        for row in rows:
            await self._pool.execute(_LOG, row["id"], "running", None, "scheduled time reached")
        return [r["id"] for r in rows]

    async def running(self) -> list[Campaign]:
        rows = await self._pool.fetch("SELECT * FROM campaigns WHERE status = 'running'")
        return [_campaign(r) for r in rows]

    async def running_ids(self) -> set[UUID]:
        rows = await self._pool.fetch("SELECT id FROM campaigns WHERE status = 'running'")
        return {r["id"] for r in rows}

    async def in_pipeline(self, campaign_id: UUID) -> int:
        n: int = await self._pool.fetchval(_IN_PIPELINE, campaign_id)
        return n

    async def waiting(self, campaign_id: UUID) -> tuple[int, int, datetime | None]:
        """(queued + submitting, held, earliest not_before among held)."""
        row = await self._pool.fetchrow(_WAITING, campaign_id)
        return row["moving"], row["held"], row["next_due"]

    async def release(self, campaign_id: UUID, n: int, now: datetime) -> list[UUID]:
        rows = await self._pool.fetch(_RELEASE, campaign_id, n, now)
        return [r["id"] for r in rows]

    async def hold_queued(self, campaign_id: UUID, reason: str) -> int:
        n: int = await self._pool.fetchval(_HOLD_QUEUED, campaign_id, reason)
        return n

    async def cancel_waiting(self, campaign_id: UUID, reason: str) -> int:
        n: int = await self._pool.fetchval(_CANCEL_WAITING, campaign_id, reason)
        return n

    async def counts(self, campaign_id: UUID) -> dict[str, int]:
        counts = {s.value: 0 for s in MessageStatus}
        for row in await self._pool.fetch(_COUNTS, campaign_id):
            counts[row["status"]] = row["n"]
        return counts

    async def recent_rate(self, campaign_id: UUID, seconds: float) -> float:
        n: int = await self._pool.fetchval(_RATE, campaign_id, float(seconds))
        return n / seconds

    async def timeline(self, campaign_id: UUID, bucket_s: int) -> list[tuple[datetime, int, int]]:
        rows = await self._pool.fetch(_TIMELINE, campaign_id, bucket_s)
        return [(r["t"], r["delivered"], r["failed"]) for r in rows]

    async def rejects(self, campaign_id: UUID, *, kind: str | None = None, limit: int = 200
                      ) -> list[tuple[int, str, str, str]]:
        rows = await self._pool.fetch(_REJECTS, campaign_id, kind, limit)
        return [(r["line"], r["value"], r["kind"], r["reason"]) for r in rows]

    async def report_rows(self, campaign_id: UUID, *, chunk: int = 5000
                          ) -> AsyncIterator[list[Any]]:
        """Every message of the campaign in file order, in chunks (a server-side cursor)."""
        async with self._pool.acquire() as conn, conn.transaction():
            cursor = await conn.cursor(_REPORT, campaign_id)
            while True:
                rows = await cursor.fetch(chunk)
                if not rows:
                    return
                yield list(rows)

    async def recancel_recent(self) -> int:
        """Cancel what waits in campaigns cancelled in the last 10 minutes: a message that was
        claimed when its campaign was cancelled comes back as held afterwards."""
        n: int = await self._pool.fetchval(_RECANCEL)
        return n

    async def all_rejects(self, campaign_id: UUID) -> list[tuple[int, str, str, str]]:
        return await self.rejects(campaign_id, limit=2_000_000)
