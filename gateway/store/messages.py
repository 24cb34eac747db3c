"""The message ledger: messages, their SMSC parts, the event log and delivery receipts.

Every status change writes a ``message_events`` row in the same transaction. Multi-row
updates lock their rows in id order first, so concurrent batches cannot deadlock.

Receipts and submit results for the same SMSC id are serialised with transaction-scoped
advisory locks on the id's hash: without that, a receipt that arrives while its
submit_sm_resp is being recorded could see no part, while the submit result sees no pending
receipt, and the receipt would stay unmatched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from gateway.domain import Encoding, MessageClass, MessageStatus

log = logging.getLogger("smsgw.store.messages")

#: Statuses a receipt can report (for a part, and so for a message roll-up).
RECEIPT_STATUSES = frozenset(
    {MessageStatus.DELIVERED, MessageStatus.UNDELIVERED, MessageStatus.EXPIRED}
)
#: Statuses a submit attempt can end in.
SUBMIT_RESULT_STATUSES = frozenset(
    {MessageStatus.SUBMITTED, MessageStatus.REJECTED, MessageStatus.FAILED, MessageStatus.QUEUED}
)
#: Message statuses a receipt may roll up from (the message has part rows).
_ROLLUP_FROM = frozenset({MessageStatus.SUBMITTED, *RECEIPT_STATUSES})

#: First key of the two-int advisory locks taken per SMSC message id.
_SMSC_ID_LOCK_SPACE = 0x534D5347  # "SMSG"


@dataclass(frozen=True, slots=True)
class NewMessage:
    msisdn: str  # E.164 digits without "+", e.g. 84901234567
    sender: str
    body: str
    encoding: Encoding
    segments: int
    message_class: MessageClass
    priority: int = 1
    template: str | None = None
    khong_dau: bool = False
    idempotency_key: str | None = None
    api_key_id: int | None = None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: UUID
    created_at: datetime
    updated_at: datetime
    msisdn: str
    sender: str
    body: str
    template: str | None
    encoding: Encoding
    segments: int
    message_class: MessageClass
    priority: int
    khong_dau: bool
    status: MessageStatus
    smsc_message_id: str | None
    attempts: int
    idempotency_key: str | None
    api_key_id: int | None
    last_error: str | None
    submitting_at: datetime | None
    submitted_at: datetime | None
    done_at: datetime | None


@dataclass(frozen=True, slots=True)
class MessageEvent:
    at: datetime
    status: MessageStatus  # the message's status once the event happened
    detail: str


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """Outcome of one submit attempt: submitted / rejected / failed / queued (retry later)."""

    message_id: UUID
    status: MessageStatus
    part_ids: tuple[str, ...] = ()  # canonical SMSC ids per part, in order (submitted only)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiptUpdate:
    candidates: tuple[str, ...]  # every form of the SMSC id, canonical first
    status: MessageStatus  # delivered / undelivered / expired
    stat: str
    err: str | None
    raw: str


@dataclass(frozen=True, slots=True)
class ReceiptOutcome:
    message_id: UUID | None  # None: no part matched, the receipt is kept as pending
    part_no: int | None
    message_status: MessageStatus | None
    duplicate: bool


# --- SQL ------------------------------------------------------------------------------------

_INSERT = """
WITH ins AS (
    INSERT INTO messages (msisdn, sender, body, template, encoding, segments, class,
                          priority, khong_dau, idempotency_key, api_key_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT ((COALESCE(api_key_id, 0)), idempotency_key)
        WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'queued', 'created' FROM ins
)
SELECT * FROM ins
"""

_BY_IDEMPOTENCY_KEY = """
SELECT * FROM messages
WHERE COALESCE(api_key_id, 0) = COALESCE($1::integer, 0) AND idempotency_key = $2
"""

_GET = "SELECT * FROM messages WHERE id = $1"

_EVENTS = "SELECT at, status, detail FROM message_events WHERE message_id = $1 ORDER BY id"

_CLAIM = """
WITH locked AS (
    SELECT id FROM messages
    WHERE id = ANY($1::uuid[]) AND status = 'queued'
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE messages m
    SET status = 'submitting', attempts = m.attempts + 1,
        submitting_at = now(), updated_at = now()
    FROM locked
    WHERE m.id = locked.id AND m.status = 'queued'
    RETURNING m.*
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'submitting', 'attempt ' || attempts FROM upd
)
SELECT * FROM upd
"""

# $1 ids, $2 new status, $3 error, $4 first part id, $5 event detail; parts: $6 $7 $8.
_RECORD_RESULTS = """
WITH r AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
        AS r(id, status, error, first_id, detail)
), locked AS (
    SELECT m.id FROM messages m JOIN r ON r.id = m.id
    WHERE m.status = 'submitting'
    ORDER BY m.id FOR UPDATE OF m
), upd AS (
    UPDATE messages m SET
        status = r.status,
        smsc_message_id = CASE WHEN r.status = 'submitted'
                               THEN r.first_id ELSE m.smsc_message_id END,
        submitted_at = CASE WHEN r.status = 'submitted' THEN now() ELSE m.submitted_at END,
        done_at = CASE WHEN r.status IN ('rejected', 'failed') THEN now() ELSE m.done_at END,
        last_error = COALESCE(r.error, m.last_error),
        updated_at = now()
    FROM r JOIN locked ON locked.id = r.id
    WHERE m.id = r.id AND m.status = 'submitting'
    RETURNING m.id, m.status, r.detail
), parts AS (
    INSERT INTO message_parts (message_id, part_no, smsc_message_id)
    SELECT p.message_id, p.part_no, p.smsc_message_id
    FROM unnest($6::uuid[], $7::smallint[], $8::text[])
        AS p(message_id, part_no, smsc_message_id)
    JOIN upd ON upd.id = p.message_id AND upd.status = 'submitted'
    ON CONFLICT (message_id, part_no) DO UPDATE
        SET smsc_message_id = EXCLUDED.smsc_message_id, status = 'submitted',
            receipt_stat = NULL, receipt_err = NULL, receipt_at = NULL
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, status, detail FROM upd
)
SELECT id, status FROM upd
"""

_LOCK_SMSC_IDS = """
SELECT pg_advisory_xact_lock($1::integer, h)
FROM (SELECT DISTINCT hashtext(x) AS h FROM unnest($2::text[]) AS x ORDER BY h) AS s
"""

_LOCK_MESSAGES = "SELECT id FROM messages WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"

_PENDING_FOR = """
SELECT id, candidates, state, stat, err, raw FROM pending_receipts
WHERE matched_at IS NULL AND candidates && $1::text[]
ORDER BY id FOR UPDATE
"""

_MARK_PENDING_MATCHED = """
UPDATE pending_receipts SET matched_at = now() WHERE id = ANY($1::bigint[])
"""

_INSERT_PENDING = """
INSERT INTO pending_receipts (candidates, state, stat, err, raw) VALUES ($1, $2, $3, $4, $5)
"""

# Earlier candidates (the canonical form first) win; among equal ids, the newest submit.
_FIND_PART = """
SELECT p.message_id, p.part_no
FROM message_parts p JOIN messages m ON m.id = p.message_id
WHERE p.smsc_message_id = ANY($1::text[])
ORDER BY array_position($1::text[], p.smsc_message_id), m.submitted_at DESC NULLS LAST
LIMIT 1
"""

_PART_STATE = """
SELECT p.status AS part_status, m.status AS message_status
FROM message_parts p JOIN messages m ON m.id = p.message_id
WHERE p.message_id = $1 AND p.part_no = $2
"""

_UPDATE_PART = """
UPDATE message_parts
SET status = $3, receipt_stat = $4, receipt_err = $5, receipt_at = now()
WHERE message_id = $1 AND part_no = $2
"""

_PART_COUNTS = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE status = 'delivered') AS delivered,
       count(*) FILTER (WHERE status = 'undelivered') AS undelivered,
       count(*) FILTER (WHERE status IN ('delivered', 'undelivered', 'expired')) AS final
FROM message_parts WHERE message_id = $1
"""

_SET_FINAL_STATUS = """
UPDATE messages SET status = $2, done_at = now(), updated_at = now() WHERE id = $1
"""

_INSERT_EVENT = "INSERT INTO message_events (message_id, status, detail) VALUES ($1, $2, $3)"

_RELEASE = """
WITH locked AS (
    SELECT id FROM messages
    WHERE id = ANY($1::uuid[]) AND status = 'submitting'
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE messages m SET status = 'queued', last_error = $2, updated_at = now()
    FROM locked
    WHERE m.id = locked.id AND m.status = 'submitting'
    RETURNING m.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'queued', 'requeued: ' || $2 FROM upd
)
SELECT count(*) FROM upd
"""

_FAIL_SUBMITTING = """
WITH locked AS (
    SELECT id FROM messages
    WHERE id = ANY($1::uuid[]) AND status = 'submitting'
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE messages m
    SET status = 'failed', last_error = $2, done_at = now(), updated_at = now()
    FROM locked
    WHERE m.id = locked.id AND m.status = 'submitting'
    RETURNING m.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'failed', $2 FROM upd
)
SELECT count(*) FROM upd
"""

_STALE_QUEUED = """
SELECT id FROM messages
WHERE status = 'queued' AND updated_at < now() - make_interval(secs => $1)
ORDER BY updated_at LIMIT $2
"""

_STALE_SUBMITTING = """
SELECT id FROM messages
WHERE status = 'submitting' AND submitting_at < now() - make_interval(secs => $1)
ORDER BY submitting_at LIMIT $2
"""

_COUNTS = "SELECT status, count(*) AS n FROM messages GROUP BY status"


# --- helpers --------------------------------------------------------------------------------


def _record(row: Any) -> MessageRecord:
    return MessageRecord(
        id=row["id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        msisdn=row["msisdn"],
        sender=row["sender"],
        body=row["body"],
        template=row["template"],
        encoding=Encoding(row["encoding"]),
        segments=row["segments"],
        message_class=MessageClass(row["class"]),
        priority=row["priority"],
        khong_dau=row["khong_dau"],
        status=MessageStatus(row["status"]),
        smsc_message_id=row["smsc_message_id"],
        attempts=row["attempts"],
        idempotency_key=row["idempotency_key"],
        api_key_id=row["api_key_id"],
        last_error=row["last_error"],
        submitting_at=row["submitting_at"],
        submitted_at=row["submitted_at"],
        done_at=row["done_at"],
    )


def _rollup(total: int, delivered: int, undelivered: int, final: int) -> MessageStatus | None:
    """A message's status from its parts' receipts, or None while some part has none yet."""
    if total == 0 or final < total:
        return None
    if delivered == total:
        return MessageStatus.DELIVERED
    return MessageStatus.UNDELIVERED if undelivered else MessageStatus.EXPIRED


def _receipt_detail(part_no: int, total: int, update: ReceiptUpdate) -> str:
    detail = f"part {part_no}/{total} {update.stat}"
    return f"{detail} err:{update.err}" if update.err else detail


def _check_receipt(update: ReceiptUpdate) -> None:
    if update.status not in RECEIPT_STATUSES:
        raise ValueError(f"a receipt cannot report status {update.status!s}")
    if not update.candidates:
        raise ValueError("a receipt needs at least one SMSC id candidate")


def _check_results(results: Sequence[SubmitResult]) -> None:
    seen: set[UUID] = set()
    for result in results:
        if result.message_id in seen:
            raise ValueError(f"message {result.message_id} appears twice in one batch")
        seen.add(result.message_id)
        if result.status not in SUBMIT_RESULT_STATUSES:
            raise ValueError(f"a submit attempt cannot end in status {result.status!s}")
        if result.status is MessageStatus.SUBMITTED and not result.part_ids:
            raise ValueError(f"submitted message {result.message_id} has no part ids")


def _result_detail(result: SubmitResult) -> str:
    if result.status is MessageStatus.SUBMITTED:
        ids = "smsc ids: " + ",".join(result.part_ids)
        return f"{ids}; {result.error}" if result.error else ids
    return result.error or ""


async def _lock_smsc_ids(conn: Any, ids: Iterable[str]) -> None:
    """Serialise receipts and submit results that concern the same SMSC message ids."""
    unique = sorted(set(ids))
    if unique:
        await conn.execute(_LOCK_SMSC_IDS, _SMSC_ID_LOCK_SPACE, unique)


async def _apply_to_part(
    conn: Any, message_id: UUID, part_no: int, update: ReceiptUpdate
) -> ReceiptOutcome:
    """Apply one receipt to a part and roll the message up; the message row must be locked."""
    state = await conn.fetchrow(_PART_STATE, message_id, part_no)
    current = MessageStatus(state["message_status"])
    if state["part_status"] == update.status.value:
        return ReceiptOutcome(message_id, part_no, current, duplicate=True)
    await conn.execute(
        _UPDATE_PART, message_id, part_no, update.status.value, update.stat, update.err
    )
    counts = await conn.fetchrow(_PART_COUNTS, message_id)
    total: int = counts["total"]
    rolled = _rollup(total, counts["delivered"], counts["undelivered"], counts["final"])
    new = current
    if rolled is not None and rolled is not current and current in _ROLLUP_FROM:
        await conn.execute(_SET_FINAL_STATUS, message_id, rolled.value)
        new = rolled
    await conn.execute(
        _INSERT_EVENT, message_id, new.value, _receipt_detail(part_no, total, update)
    )
    return ReceiptOutcome(message_id, part_no, new, duplicate=False)


# --- the store ------------------------------------------------------------------------------


class MessageStore:
    """All reads and writes of the message ledger."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def create(self, new: NewMessage) -> tuple[MessageRecord, bool]:
        """Insert a queued message; with a known idempotency key, return the existing one."""
        args = (
            new.msisdn,
            new.sender,
            new.body,
            new.template,
            new.encoding.value,
            new.segments,
            new.message_class.value,
            new.priority,
            new.khong_dau,
            new.idempotency_key,
            new.api_key_id,
        )
        # A conflicting row can only vanish if it is deleted between the two statements.
        for _ in range(3):
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(_INSERT, *args)
                if row is not None:
                    return _record(row), True
                row = await conn.fetchrow(_BY_IDEMPOTENCY_KEY, new.api_key_id, new.idempotency_key)
                if row is not None:
                    return _record(row), False
        raise RuntimeError(f"could not insert or find idempotency key {new.idempotency_key!r}")

    async def get(self, message_id: UUID) -> MessageRecord | None:
        row = await self._pool.fetchrow(_GET, message_id)
        return None if row is None else _record(row)

    async def events(self, message_id: UUID) -> list[MessageEvent]:
        rows = await self._pool.fetch(_EVENTS, message_id)
        return [MessageEvent(r["at"], MessageStatus(r["status"]), r["detail"]) for r in rows]

    async def claim(self, ids: Sequence[UUID]) -> list[MessageRecord]:
        """Move queued messages to submitting; others are skipped. Keeps the order of ids."""
        if not ids:
            return []
        rows = await self._pool.fetch(_CLAIM, list(ids))
        order = {message_id: i for i, message_id in enumerate(ids)}
        return sorted((_record(r) for r in rows), key=lambda rec: order[rec.id])

    async def record_submit_results(self, results: Sequence[SubmitResult]) -> None:
        """Record submit outcomes of messages still submitting, then match pending receipts."""
        if not results:
            return
        _check_results(results)
        part_mids: list[UUID] = []
        part_nos: list[int] = []
        part_ids: list[str] = []
        for result in results:
            if result.status is MessageStatus.SUBMITTED:
                for no, smsc_id in enumerate(result.part_ids, start=1):
                    part_mids.append(result.message_id)
                    part_nos.append(no)
                    part_ids.append(smsc_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_smsc_ids(conn, part_ids)
            rows = await conn.fetch(
                _RECORD_RESULTS,
                [r.message_id for r in results],
                [r.status.value for r in results],
                [r.error for r in results],
                [r.part_ids[0] if r.part_ids else None for r in results],
                [_result_detail(r) for r in results],
                part_mids,
                part_nos,
                part_ids,
            )
            changed = {row["id"]: MessageStatus(row["status"]) for row in rows}
            skipped = len(results) - len(changed)
            if skipped:
                log.info("%d submit result(s) ignored: message no longer submitting", skipped)
            by_smsc_id = {
                smsc_id: (mid, no)
                for mid, no, smsc_id in zip(part_mids, part_nos, part_ids, strict=True)
                if changed.get(mid) is MessageStatus.SUBMITTED
            }
            if by_smsc_id:
                await self._match_pending(conn, by_smsc_id)

    async def _match_pending(self, conn: Any, by_smsc_id: dict[str, tuple[UUID, int]]) -> None:
        """Apply receipts that arrived before their submit_sm_resp to the new parts."""
        pending = await conn.fetch(_PENDING_FOR, list(by_smsc_id))
        matched: list[int] = []
        for row in pending:
            target = next((by_smsc_id[c] for c in row["candidates"] if c in by_smsc_id), None)
            if target is None:  # pragma: no cover - the && filter guarantees a match
                continue
            update = ReceiptUpdate(
                candidates=tuple(row["candidates"]),
                status=MessageStatus(row["state"]),
                stat=row["stat"] or "",
                err=row["err"],
                raw=row["raw"] or "",
            )
            outcome = await _apply_to_part(conn, target[0], target[1], update)
            log.info(
                "pending receipt %s matched message %s part %d -> %s",
                row["id"],
                target[0],
                target[1],
                outcome.message_status,
            )
            matched.append(row["id"])
        if matched:
            await conn.execute(_MARK_PENDING_MATCHED, matched)

    async def apply_receipts(self, updates: Sequence[ReceiptUpdate]) -> list[ReceiptOutcome]:
        """Apply delivery receipts to parts and roll messages up; unknown ids are kept pending."""
        if not updates:
            return []
        for update in updates:
            _check_receipt(update)
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_smsc_ids(conn, (c for u in updates for c in u.candidates))
            targets: list[tuple[UUID, int] | None] = []
            for update in updates:
                row = await conn.fetchrow(_FIND_PART, list(update.candidates))
                targets.append(None if row is None else (row["message_id"], row["part_no"]))
            message_ids = sorted({t[0] for t in targets if t is not None})
            if message_ids:
                await conn.execute(_LOCK_MESSAGES, message_ids)
            outcomes: list[ReceiptOutcome] = []
            for update, target in zip(updates, targets, strict=True):
                if target is None:
                    await conn.execute(
                        _INSERT_PENDING,
                        list(update.candidates),
                        update.status.value,
                        update.stat,
                        update.err,
                        update.raw,
                    )
                    log.info("receipt for unknown SMSC id %s kept pending", update.candidates[0])
                    outcomes.append(ReceiptOutcome(None, None, None, duplicate=False))
                else:
                    outcomes.append(await _apply_to_part(conn, target[0], target[1], update))
            return outcomes

    async def release(self, ids: Sequence[UUID], reason: str) -> int:
        """Put submitting messages back in the queue (e.g. the link dropped before the resp)."""
        if not ids:
            return 0
        count: int = await self._pool.fetchval(_RELEASE, list(ids), reason)
        return count

    async def fail_submitting(self, ids: Sequence[UUID], reason: str) -> int:
        """Give up on submitting messages."""
        if not ids:
            return 0
        count: int = await self._pool.fetchval(_FAIL_SUBMITTING, list(ids), reason)
        return count

    async def stale(
        self, *, queued_before_s: float, submitting_before_s: float, limit: int = 1000
    ) -> tuple[list[UUID], list[UUID]]:
        """Ids queued (by updated_at) and submitting (by submitting_at) for longer than given."""
        async with self._pool.acquire() as conn:
            queued = await conn.fetch(_STALE_QUEUED, float(queued_before_s), limit)
            submitting = await conn.fetch(_STALE_SUBMITTING, float(submitting_before_s), limit)
        return [r["id"] for r in queued], [r["id"] for r in submitting]

    async def counts_by_status(self) -> dict[MessageStatus, int]:
        """Number of messages per status; every status is present (0 when none)."""
        counts = dict.fromkeys(MessageStatus, 0)
        for row in await self._pool.fetch(_COUNTS):
            counts[MessageStatus(row["status"])] = row["n"]
        return counts
