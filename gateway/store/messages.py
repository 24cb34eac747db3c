"""The message ledger: messages, their SMSC parts, the event log and delivery receipts.

Every status change writes a ``message_events`` row in the same transaction. Multi-row
updates lock their rows in id order first, so concurrent batches cannot deadlock.

Receipts and submit results for the same SMSC id are serialised with transaction-scoped
advisory locks on the id's hash: without that, a receipt that arrives while its
submit_sm_resp is being recorded could see no part, while the submit result sees no pending
receipt, and the receipt would stay unmatched.

A batch of receipts costs the same few statements whatever its size: one resolves every
receipt's part and locks the messages, one reads those messages' parts, then the receipts are
replayed in memory one by one, in order (so several receipts for one part or one message in a
batch give what applying them one at a time would), and one statement writes the result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    {MessageStatus.SUBMITTED, MessageStatus.REJECTED, MessageStatus.FAILED, MessageStatus.QUEUED,
     MessageStatus.HELD}  # held: withdrawn before sending because its campaign was paused
)
#: Message statuses a receipt may roll up from (the message has part rows).
_ROLLUP_FROM = frozenset({MessageStatus.SUBMITTED, *RECEIPT_STATUSES})
#: Part statuses that are final (a part has had a receipt).
_FINAL_PART_STATUSES = frozenset(status.value for status in RECEIPT_STATUSES)

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
    #: per-message SMPP options (validity_s, registered_delivery, priority_flag, data_coding,
    #: source_ton, source_npi); absent keys fall back to the link's configuration
    options: Mapping[str, Any] = field(default_factory=dict)


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
    link: str | None = None  # the SMSC link that accepted it
    options: Mapping[str, Any] = field(default_factory=dict)
    campaign_id: UUID | None = None
    advertiser: str | None = None  # whom the advertising cap counts against (default sender)
    not_before: datetime | None = None  # held by a rule until then


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
    link: str | None = None  # the link that carried (or last tried) it


@dataclass(frozen=True, slots=True)
class ReceiptUpdate:
    candidates: tuple[str, ...]  # every form of the SMSC id, canonical first
    status: MessageStatus  # delivered / undelivered / expired
    stat: str
    err: str | None
    raw: str
    link: str | None = None  # the link it came on: ids are only unique per SMSC



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
                          priority, khong_dau, idempotency_key, api_key_id, options)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)
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
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $9::text[])
        AS r(id, status, error, first_id, detail, link)
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
        link = COALESCE(r.link, m.link),
        -- held before anything was sent (campaign paused): that claim was no attempt
        attempts = CASE WHEN r.status = 'held' THEN GREATEST(0, m.attempts - 1)
                        ELSE m.attempts END,
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

# Every receipt's part in one pass: $1 receipt index, $2 candidate position, $3 candidate.
# Earlier candidates (the canonical form first) win; among equal ids, the newest submit. The
# matched messages are then locked in id order (a message deleted meanwhile matches nothing).
_FIND_AND_LOCK_PARTS = """
WITH c AS (
    SELECT * FROM unnest($1::integer[], $2::integer[], $3::text[], $4::text[])
        AS c(ord, pos, smsc_id, link)
), hit AS (
    SELECT DISTINCT ON (c.ord) c.ord, p.message_id, p.part_no
    FROM c
    JOIN message_parts p ON p.smsc_message_id = c.smsc_id
    JOIN messages m ON m.id = p.message_id
        AND (c.link IS NULL OR m.link IS NULL OR m.link = c.link)
    ORDER BY c.ord, c.pos, m.submitted_at DESC NULLS LAST, p.message_id, p.part_no
), locked AS (
    SELECT id FROM messages
    WHERE id = ANY(ARRAY(SELECT DISTINCT message_id FROM hit))
    ORDER BY id FOR UPDATE
)
SELECT hit.ord, hit.message_id, hit.part_no FROM hit JOIN locked ON locked.id = hit.message_id
"""

# Read once the messages are locked (a new statement, so a new snapshot).
_MESSAGE_PARTS_STATE = """
SELECT m.id, m.status AS message_status, p.part_no, p.status AS part_status
FROM messages m JOIN message_parts p ON p.message_id = m.id
WHERE m.id = ANY($1::uuid[])
"""

_PENDING_FOR = """
SELECT id, candidates, state, stat, err, raw, link FROM pending_receipts
WHERE matched_at IS NULL AND candidates && $1::text[]
ORDER BY id FOR UPDATE
"""

_MARK_PENDING_MATCHED = """
UPDATE pending_receipts SET matched_at = now() WHERE id = ANY($1::bigint[])
"""

# All the writes of a batch of receipts. Parts: $1-$5 (each part once, its last receipt);
# messages that rolled up: $6 $7; events in receipt order: $8-$10; unmatched receipts in
# receipt order: $11-$15, their candidates flattened as (receipt index, position, id): $16-$18.
_WRITE_RECEIPTS = """
WITH parts AS (
    UPDATE message_parts p
    SET status = u.status, receipt_stat = u.stat, receipt_err = u.err, receipt_at = now()
    FROM unnest($1::uuid[], $2::smallint[], $3::text[], $4::text[], $5::text[])
        AS u(message_id, part_no, status, stat, err)
    WHERE p.message_id = u.message_id AND p.part_no = u.part_no
), msgs AS (
    UPDATE messages m SET status = u.status, done_at = now(), updated_at = now()
    FROM unnest($6::uuid[], $7::text[]) AS u(id, status)
    WHERE m.id = u.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT e.message_id, e.status, e.detail
    FROM unnest($8::uuid[], $9::text[], $10::text[]) WITH ORDINALITY
        AS e(message_id, status, detail, n)
    ORDER BY e.n
), cands AS (
    SELECT x.ord, array_agg(x.smsc_id ORDER BY x.pos) AS candidates
    FROM unnest($16::integer[], $17::integer[], $18::text[]) AS x(ord, pos, smsc_id)
    GROUP BY x.ord
), pend AS (
    INSERT INTO pending_receipts (candidates, state, stat, err, raw, link)
    SELECT cands.candidates, r.state, r.stat, r.err, r.raw, r.link
    FROM unnest($11::integer[], $12::text[], $13::text[], $14::text[], $15::text[],
                $19::text[])
        AS r(ord, state, stat, err, raw, link)
    JOIN cands ON cands.ord = r.ord
    ORDER BY r.ord
)
SELECT 1
"""

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

# Queued advertising of one number → cancelled (locked in id order, re-checked once locked:
# one claimed meanwhile is submitting and stays out). Held ones (a campaign's, or deferred)
# are cancelled by the consent check right before their submit. Uses
# messages_queued_advertising_idx.
_CANCEL_PENDING_ADVERTISING = """
WITH locked AS (
    SELECT id FROM messages
    WHERE msisdn = $1 AND class = 'advertising' AND status = 'queued'
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE messages m SET status = 'cancelled', done_at = now(), updated_at = now()
    FROM locked
    WHERE m.id = locked.id AND m.status = 'queued'
    RETURNING m.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'cancelled', $2 FROM upd
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

_COUNTS_BY_CLASS_STATUS = "SELECT class, status, count(*) AS n FROM messages GROUP BY 1, 2"

_INSERT_MANY = """
INSERT INTO messages (msisdn, sender, body, template, encoding, segments, class, priority,
                      khong_dau, api_key_id, options)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::integer[], $7::text[], $8::smallint[], $9::boolean[], $10::integer[],
                     $11::jsonb[])
RETURNING id
"""

_CREATED_EVENTS = """
INSERT INTO message_events (message_id, status, detail)
SELECT id, 'queued', 'created' FROM unnest($1::uuid[]) AS id
"""

# Submitted messages whose receipts did not all come within $1 s become expired (an event says
# why); a receipt arriving later is still applied and may move them to delivered.
_EXPIRE_UNRECEIPTED = """
WITH due AS (
    SELECT id FROM messages
    WHERE status = 'submitted' AND submitted_at < now() - make_interval(secs => $1)
    ORDER BY submitted_at LIMIT $2
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE messages m SET status = 'expired', done_at = now(), updated_at = now(),
        last_error = 'no delivery receipt within ' || $1::text || ' s'
    FROM due WHERE m.id = due.id
    RETURNING m.id
), ev AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT id, 'expired', 'no delivery receipt within ' || $1::text || ' s' FROM upd
)
SELECT id FROM upd
"""


# --- helpers --------------------------------------------------------------------------------


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value or {})


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
        link=row["link"],
        options=_json(row["options"]),
        campaign_id=row["campaign_id"],
        advertiser=row["advertiser"],
        not_before=row["not_before"],
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


def _flatten_candidates(updates: Sequence[ReceiptUpdate]) -> tuple[list[int], list[int], list[str]]:
    """Every receipt's candidates as three parallel arrays: receipt index, position, id."""
    ords: list[int] = []
    positions: list[int] = []
    ids: list[str] = []
    for i, update in enumerate(updates):
        for pos, candidate in enumerate(update.candidates, start=1):
            ords.append(i)
            positions.append(pos)
            ids.append(candidate)
    return ords, positions, ids


@dataclass(slots=True)
class _MessageState:
    """A locked message as a batch of receipts sees it, one receipt after the other."""

    status: MessageStatus
    parts: dict[int, str]  # part_no -> part status
    rolled_up: bool = False  # its status (and done_at) must be written


@dataclass(slots=True)
class _ReceiptPlan:
    """What applying a batch of receipts one by one amounts to: outcomes and rows to write."""

    outcomes: list[ReceiptOutcome] = field(default_factory=list)
    parts: dict[tuple[UUID, int], ReceiptUpdate] = field(default_factory=dict)  # last receipt
    events: list[tuple[UUID, str, str]] = field(default_factory=list)  # in receipt order
    pending: list[ReceiptUpdate] = field(default_factory=list)  # in receipt order


def _apply_in_memory(
    plan: _ReceiptPlan, state: _MessageState, message_id: UUID, part_no: int, update: ReceiptUpdate
) -> ReceiptOutcome:
    """Apply one receipt to a part and roll the message up, recording the writes in ``plan``."""
    current = state.status
    if state.parts[part_no] == update.status.value:
        return ReceiptOutcome(message_id, part_no, current, duplicate=True)
    state.parts[part_no] = update.status.value
    plan.parts[(message_id, part_no)] = update
    statuses = list(state.parts.values())
    total = len(statuses)
    rolled = _rollup(
        total,
        statuses.count(MessageStatus.DELIVERED.value),
        statuses.count(MessageStatus.UNDELIVERED.value),
        sum(s in _FINAL_PART_STATUSES for s in statuses),
    )
    if rolled is not None and rolled is not current and current in _ROLLUP_FROM:
        state.status = rolled
        state.rolled_up = True
    detail = _receipt_detail(part_no, total, update)
    plan.events.append((message_id, state.status.value, detail))
    return ReceiptOutcome(message_id, part_no, state.status, duplicate=False)


async def _load_states(conn: Any, message_ids: Iterable[UUID]) -> dict[UUID, _MessageState]:
    """Status and part statuses of (locked) messages."""
    states: dict[UUID, _MessageState] = {}
    ids = list(message_ids)
    if not ids:
        return states
    for row in await conn.fetch(_MESSAGE_PARTS_STATE, ids):
        state = states.get(row["id"])
        if state is None:
            state = states[row["id"]] = _MessageState(MessageStatus(row["message_status"]), {})
        state.parts[row["part_no"]] = row["part_status"]
    return states


async def _write_plan(conn: Any, plan: _ReceiptPlan, states: dict[UUID, _MessageState]) -> None:
    """Every write of a batch of receipts in one statement."""
    if not plan.events and not plan.pending:
        return  # only duplicates
    rolled = [(mid, state.status.value) for mid, state in states.items() if state.rolled_up]
    ords, positions, ids = _flatten_candidates(plan.pending)
    await conn.execute(
        _WRITE_RECEIPTS,
        [mid for mid, _ in plan.parts],
        [no for _, no in plan.parts],
        [u.status.value for u in plan.parts.values()],
        [u.stat for u in plan.parts.values()],
        [u.err for u in plan.parts.values()],
        [mid for mid, _ in rolled],
        [status for _, status in rolled],
        [mid for mid, _, _ in plan.events],
        [status for _, status, _ in plan.events],
        [detail for _, _, detail in plan.events],
        list(range(len(plan.pending))),
        [u.status.value for u in plan.pending],
        [u.stat for u in plan.pending],
        [u.err for u in plan.pending],
        [u.raw for u in plan.pending],
        ords,
        positions,
        ids,
        [u.link for u in plan.pending],
    )


async def _apply_batch(
    conn: Any, items: Sequence[tuple[ReceiptUpdate, tuple[UUID, int] | None]]
) -> list[ReceiptOutcome]:
    """Apply receipts to their (message id, part no), or keep them pending when None.

    The result, outcomes and rows alike, is that of applying them one by one in order
    (a receipt sees the parts and roll-ups of those before it), in one read and one write.
    The messages of every target must be locked.
    """
    states = await _load_states(conn, {t[0] for _, t in items if t is not None})
    plan = _ReceiptPlan()
    for update, target in items:
        if target is None:
            log.info("receipt for unknown SMSC id %s kept pending", update.candidates[0])
            plan.pending.append(update)
            plan.outcomes.append(ReceiptOutcome(None, None, None, duplicate=False))
        else:
            message_id, part_no = target
            outcome = _apply_in_memory(plan, states[message_id], message_id, part_no, update)
            plan.outcomes.append(outcome)
    await _write_plan(conn, plan, states)
    return plan.outcomes


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
            json.dumps(dict(new.options)),
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

    async def create_many(self, news: Sequence[NewMessage]) -> list[UUID]:
        """Insert many queued messages at once (broadcasts, benchmarks); no idempotency keys.

        One statement for the rows and one for their 'created' events, in one transaction."""
        if not news:
            return []
        if any(n.idempotency_key is not None for n in news):
            raise ValueError("create_many does not take idempotency keys; use create()")
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                _INSERT_MANY, [n.msisdn for n in news], [n.sender for n in news],
                [n.body for n in news], [n.template for n in news],
                [n.encoding.value for n in news], [n.segments for n in news],
                [n.message_class.value for n in news], [n.priority for n in news],
                [n.khong_dau for n in news], [n.api_key_id for n in news],
                [json.dumps(dict(n.options)) for n in news])
            ids = [r["id"] for r in rows]
            await conn.execute(_CREATED_EVENTS, ids)
        return ids

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
                [r.link for r in results],
            )
            changed = {row["id"]: MessageStatus(row["status"]) for row in rows}
            skipped = len(results) - len(changed)
            if skipped:
                log.info("%d submit result(s) ignored: message no longer submitting", skipped)
            link_of = {r.message_id: r.link for r in results}
            by_smsc_id = {
                smsc_id: (mid, no)
                for mid, no, smsc_id in zip(part_mids, part_nos, part_ids, strict=True)
                if changed.get(mid) is MessageStatus.SUBMITTED
            }
            if by_smsc_id:
                await self._match_pending(conn, by_smsc_id, link_of)

    async def _match_pending(self, conn: Any, by_smsc_id: dict[str, tuple[UUID, int]],
                             link_of: dict[UUID, str | None]) -> None:
        """Apply receipts that arrived before their submit_sm_resp to the new parts."""
        pending = await conn.fetch(_PENDING_FOR, list(by_smsc_id))
        matched: list[int] = []
        targets: list[tuple[UUID, int]] = []
        updates: list[ReceiptUpdate] = []
        for row in pending:
            target = next((by_smsc_id[c] for c in row["candidates"] if c in by_smsc_id
                           if row["link"] is None or link_of.get(by_smsc_id[c][0]) is None
                           or link_of[by_smsc_id[c][0]] == row["link"]), None)
            if target is None:  # the same id from another SMSC: not this message's receipt
                continue
            matched.append(row["id"])
            targets.append(target)
            updates.append(
                ReceiptUpdate(
                    candidates=tuple(row["candidates"]),
                    status=MessageStatus(row["state"]),
                    stat=row["stat"] or "",
                    err=row["err"],
                    raw=row["raw"] or "",
                )
            )
        if not matched:
            return
        outcomes = await _apply_batch(conn, list(zip(updates, targets, strict=True)))
        for pending_id, target, outcome in zip(matched, targets, outcomes, strict=True):
            log.info(
                "pending receipt %s matched message %s part %d -> %s",
                pending_id,
                target[0],
                target[1],
                outcome.message_status,
            )
        await conn.execute(_MARK_PENDING_MATCHED, matched)

    async def apply_receipts(self, updates: Sequence[ReceiptUpdate]) -> list[ReceiptOutcome]:
        """Apply delivery receipts to parts and roll messages up; unknown ids are kept pending.

        The outcome (one per update, in order) and the rows written are those of applying the
        updates one by one, in order; it takes four statements whatever the batch size.
        """
        if not updates:
            return []
        for update in updates:
            _check_receipt(update)
        ords, positions, ids = _flatten_candidates(updates)
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_smsc_ids(conn, ids)
            links = [updates[o].link for o in ords]
            rows = await conn.fetch(_FIND_AND_LOCK_PARTS, ords, positions, ids, links)
            targets: list[tuple[UUID, int] | None] = [None] * len(updates)
            for row in rows:
                targets[row["ord"]] = (row["message_id"], row["part_no"])
            return await _apply_batch(conn, list(zip(updates, targets, strict=True)))

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

    async def cancel_pending_advertising(self, msisdn: str, reason: str) -> int:
        """Cancel the queued advertising messages to ``msisdn`` (after a refusal); their count.

        Each gets a 'cancelled' event with ``reason``. Only messages still queued can be
        recalled: one already submitting or submitted may be with the SMSC (SMPP gives no
        reliable way to withdraw it) and is left as it is.
        """
        count: int = await self._pool.fetchval(_CANCEL_PENDING_ADVERTISING, msisdn, reason)
        return count

    async def stale(
        self, *, queued_before_s: float, submitting_before_s: float, limit: int = 1000
    ) -> tuple[list[UUID], list[UUID]]:
        """Ids queued (by updated_at) and submitting (by submitting_at) for longer than given."""
        async with self._pool.acquire() as conn:
            queued = await conn.fetch(_STALE_QUEUED, float(queued_before_s), limit)
            submitting = await conn.fetch(_STALE_SUBMITTING, float(submitting_before_s), limit)
        return [r["id"] for r in queued], [r["id"] for r in submitting]

    async def split_by_lane(self, ids: Sequence[UUID]) -> tuple[list[UUID], list[UUID]]:
        """(care/transactional ids, bulk ids) by priority (bulk = priority ≥ 5)."""
        if not ids:
            return [], []
        rows = await self._pool.fetch(
            "SELECT id, priority >= 5 AS bulk FROM messages WHERE id = ANY($1::uuid[])",
            list(ids))
        return ([r["id"] for r in rows if not r["bulk"]], [r["id"] for r in rows if r["bulk"]])

    async def expire_unreceipted(self, *, older_than_s: float, limit: int = 5000) -> list[UUID]:
        """Submitted messages without every receipt after ``older_than_s`` → expired."""
        rows = await self._pool.fetch(_EXPIRE_UNRECEIPTED, float(older_than_s), limit)
        return [r["id"] for r in rows]

    async def counts_by_status(self) -> dict[MessageStatus, int]:
        """Number of messages per status; every status is present (0 when none)."""
        counts = dict.fromkeys(MessageStatus, 0)
        for row in await self._pool.fetch(_COUNTS):
            counts[MessageStatus(row["status"])] = row["n"]
        return counts

    async def counts_by_class_status(self) -> dict[tuple[MessageClass, MessageStatus], int]:
        """Number of messages per (class, status); every pair is present (0 when none).

        A full scan of ``messages``: callers that poll it (``/metrics``) cache the result."""
        counts = {(c, s): 0 for c in MessageClass for s in MessageStatus}
        for row in await self._pool.fetch(_COUNTS_BY_CLASS_STATUS):
            counts[MessageClass(row["class"]), MessageStatus(row["status"])] = row["n"]
        return counts
