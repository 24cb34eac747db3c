"""MessageStore and ApiKeyStore against the real Postgres (fixtures in tests/conftest.py).

Every test makes its own messages, SMSC ids and key names, so tests share one database and
may run in any order.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from uuid import UUID

import asyncpg
import pytest

from gateway.domain import Encoding, MessageClass, MessageStatus
from gateway.smpp.receipts import canonical_id, id_candidates
from gateway.store.apikeys import ApiKeyStore
from gateway.store.messages import (
    MessageRecord,
    MessageStore,
    NewMessage,
    ReceiptOutcome,
    ReceiptUpdate,
    SubmitResult,
)

S = MessageStatus


def _msisdn() -> str:
    return "849" + str(uuid.uuid4().int)[:8]


def _new(segments: int = 1, **kw: object) -> NewMessage:
    fields: dict[str, object] = {
        "msisdn": _msisdn(),
        "sender": "SMSGW",
        "body": "Ma xac thuc cua ban la 123456",
        "encoding": Encoding.GSM7,
        "segments": segments,
        "message_class": MessageClass.CARE,
    }
    fields.update(kw)
    return NewMessage(**fields)  # type: ignore[arg-type]


def _smsc_id() -> str:
    """A fresh canonical SMSC id (lower-case hex, no leading zero)."""
    return canonical_id("a" + uuid.uuid4().hex[:11])


def _receipt(
    smsc_id: str, status: MessageStatus = S.DELIVERED, stat: str = "DELIVRD"
) -> ReceiptUpdate:
    return ReceiptUpdate(
        candidates=id_candidates(smsc_id),
        status=status,
        stat=stat,
        err="000" if status is S.DELIVERED else "001",
        raw=f"id:{smsc_id} stat:{stat}",
    )


@pytest.fixture
def store(pg_pool: asyncpg.Pool) -> MessageStore:
    return MessageStore(pg_pool)


async def _submitted(store: MessageStore, segments: int) -> tuple[MessageRecord, list[str]]:
    """A message created, claimed and submitted with ``segments`` fresh part ids."""
    rec, _ = await store.create(_new(segments))
    assert [r.id for r in await store.claim([rec.id])] == [rec.id]
    parts = [_smsc_id() for _ in range(segments)]
    await store.record_submit_results([SubmitResult(rec.id, S.SUBMITTED, tuple(parts))])
    return rec, parts


async def _status(store: MessageStore, message_id: UUID) -> MessageStatus:
    rec = await store.get(message_id)
    assert rec is not None
    return rec.status


# --- create / get / events ------------------------------------------------------------------


async def test_create_and_get(store: MessageStore) -> None:
    new = _new(2, template="otp", khong_dau=True, priority=0, encoding=Encoding.UCS2)
    rec, created = await store.create(new)
    assert created
    assert isinstance(rec.id, UUID)
    assert rec.status is S.QUEUED
    assert (rec.msisdn, rec.segments, rec.template, rec.khong_dau) == (new.msisdn, 2, "otp", True)
    assert rec.encoding is Encoding.UCS2 and rec.message_class is MessageClass.CARE
    assert rec.priority == 0 and rec.attempts == 0 and rec.smsc_message_id is None
    assert await store.get(rec.id) == rec
    assert await store.get(uuid.uuid4()) is None
    events = await store.events(rec.id)
    assert [e.status for e in events] == [S.QUEUED]


async def test_idempotency_key_returns_existing(store: MessageStore) -> None:
    key = f"idem-{uuid.uuid4()}"
    first, created1 = await store.create(_new(idempotency_key=key, api_key_id=7))
    second, created2 = await store.create(_new(idempotency_key=key, api_key_id=7))
    assert created1 and not created2
    assert second.id == first.id
    assert second.msisdn == first.msisdn  # the stored message, not the second request
    # the same key under another API key (or none) is another message
    other, created3 = await store.create(_new(idempotency_key=key, api_key_id=8))
    none1, created4 = await store.create(_new(idempotency_key=key))
    none2, created5 = await store.create(_new(idempotency_key=key))
    assert created3 and other.id != first.id
    assert created4 and not created5 and none1.id == none2.id != first.id
    assert len(await store.events(first.id)) == 1


async def test_concurrent_creates_with_one_key_make_one_row(
    store: MessageStore, pg_pool: asyncpg.Pool
) -> None:
    key = f"race-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(store.create(_new(idempotency_key=key, api_key_id=3)) for _ in range(10))
    )
    assert len({rec.id for rec, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    rows = await pg_pool.fetchval("SELECT count(*) FROM messages WHERE idempotency_key = $1", key)
    assert rows == 1


async def test_without_key_every_create_inserts(store: MessageStore) -> None:
    a, _ = await store.create(_new())
    b, _ = await store.create(_new())
    assert a.id != b.id


async def test_database_checks_reject_bad_rows(store: MessageStore) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await store.create(_new(segments=0))
    with pytest.raises(asyncpg.CheckViolationError):
        await store.create(_new(msisdn="+84901234567"))


# --- claim / submit results -----------------------------------------------------------------


async def test_claim_skips_rows_not_queued(store: MessageStore) -> None:
    a, _ = await store.create(_new())
    b, _ = await store.create(_new())
    claimed = await store.claim([b.id, a.id, uuid.uuid4()])
    assert [r.id for r in claimed] == [b.id, a.id]
    assert all(r.status is S.SUBMITTING and r.attempts == 1 for r in claimed)
    assert all(r.submitting_at is not None for r in claimed)
    assert await store.claim([a.id, b.id]) == []
    assert await store.claim([]) == []
    assert [e.status for e in await store.events(a.id)] == [S.QUEUED, S.SUBMITTING]


async def test_concurrent_claims_claim_each_row_once(store: MessageStore) -> None:
    recs = [(await store.create(_new()))[0] for _ in range(6)]
    ids = [r.id for r in recs]
    batches = await asyncio.gather(store.claim(ids), store.claim(ids[::-1]), store.claim(ids))
    claimed = [r.id for batch in batches for r in batch]
    assert sorted(claimed) == sorted(ids)


async def test_record_submit_results_for_three_parts(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 3)
    got = await store.get(rec.id)
    assert got is not None
    assert got.status is S.SUBMITTED
    assert got.smsc_message_id == parts[0]
    assert got.submitted_at is not None and got.done_at is None
    events = await store.events(rec.id)
    assert [e.status for e in events] == [S.QUEUED, S.SUBMITTING, S.SUBMITTED]
    assert all(p in events[-1].detail for p in parts)
    # a repeated result (at-least-once job) changes nothing
    await store.record_submit_results([SubmitResult(rec.id, S.SUBMITTED, ("zzz", "y", "x"))])
    again = await store.get(rec.id)
    assert again is not None and again.smsc_message_id == parts[0]
    assert len(await store.events(rec.id)) == 3


async def test_record_submit_results_rejected_failed_and_retry(store: MessageStore) -> None:
    recs = [(await store.create(_new()))[0] for _ in range(4)]
    rej, fail, retry, untouched = (r.id for r in recs)
    await store.claim([rej, fail, retry])
    await store.record_submit_results(
        [
            SubmitResult(rej, S.REJECTED, error="ESME_RINVDSTADR (0x0b)"),
            SubmitResult(fail, S.FAILED, error="throttled too often"),
            SubmitResult(retry, S.QUEUED, error="ESME_RTHROTTLED (0x58)"),
            SubmitResult(untouched, S.SUBMITTED, ("abc",)),  # never claimed: ignored
        ]
    )
    r, f, q, u = [await store.get(i) for i in (rej, fail, retry, untouched)]
    assert r is not None and f is not None and q is not None and u is not None
    assert (r.status, r.last_error) == (S.REJECTED, "ESME_RINVDSTADR (0x0b)")
    assert r.done_at is not None
    assert (f.status, f.last_error) == (S.FAILED, "throttled too often")
    assert (q.status, q.last_error, q.done_at) == (S.QUEUED, "ESME_RTHROTTLED (0x58)", None)
    assert u.status is S.QUEUED and u.smsc_message_id is None
    assert (await store.events(rej))[-1].detail == "ESME_RINVDSTADR (0x0b)"
    # the retried one can be claimed again
    again = await store.claim([retry])
    assert [m.attempts for m in again] == [2]


async def test_record_submit_results_rejects_bad_batches(store: MessageStore) -> None:
    mid = uuid.uuid4()
    with pytest.raises(ValueError, match="no part ids"):
        await store.record_submit_results([SubmitResult(mid, S.SUBMITTED)])
    with pytest.raises(ValueError, match="twice"):
        await store.record_submit_results(
            [SubmitResult(mid, S.FAILED), SubmitResult(mid, S.FAILED)]
        )
    with pytest.raises(ValueError, match="cannot end in"):
        await store.record_submit_results([SubmitResult(mid, S.DELIVERED)])


# --- receipts -------------------------------------------------------------------------------


async def test_receipts_roll_up_to_delivered(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 3)
    out = await store.apply_receipts([_receipt(parts[0]), _receipt(parts[1])])
    assert [(o.message_id, o.part_no, o.duplicate) for o in out] == [
        (rec.id, 1, False),
        (rec.id, 2, False),
    ]
    assert [o.message_status for o in out] == [S.SUBMITTED, S.SUBMITTED]
    assert await _status(store, rec.id) is S.SUBMITTED
    (last,) = await store.apply_receipts([_receipt(parts[2])])
    assert (last.part_no, last.message_status) == (3, S.DELIVERED)
    got = await store.get(rec.id)
    assert got is not None and got.status is S.DELIVERED and got.done_at is not None
    details = [e.detail for e in await store.events(rec.id)][-3:]
    assert details[0].startswith("part 1/3 DELIVRD")
    assert details[2].startswith("part 3/3 DELIVRD")


async def test_receipts_worst_status_once_all_final(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 3)
    await store.apply_receipts([_receipt(parts[0]), _receipt(parts[1], S.EXPIRED, "EXPIRED")])
    assert await _status(store, rec.id) is S.SUBMITTED  # part 3 has no receipt yet
    (out,) = await store.apply_receipts([_receipt(parts[2], S.UNDELIVERED, "UNDELIV")])
    assert out.message_status is S.UNDELIVERED  # undelivered is worse than expired
    assert await _status(store, rec.id) is S.UNDELIVERED


async def test_all_expired_or_delivered_gives_expired(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 2)
    await store.apply_receipts([_receipt(parts[0]), _receipt(parts[1], S.EXPIRED, "EXPIRED")])
    assert await _status(store, rec.id) is S.EXPIRED


async def test_late_delivered_receipt_after_expired(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 1)
    await store.apply_receipts([_receipt(parts[0], S.EXPIRED, "EXPIRED")])
    assert await _status(store, rec.id) is S.EXPIRED
    (out,) = await store.apply_receipts([_receipt(parts[0])])
    assert not out.duplicate and out.message_status is S.DELIVERED
    assert await _status(store, rec.id) is S.DELIVERED


async def test_duplicate_receipt_is_harmless(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 1)
    (first,) = await store.apply_receipts([_receipt(parts[0])])
    n_events = len(await store.events(rec.id))
    second, third = await store.apply_receipts([_receipt(parts[0]), _receipt(parts[0])])
    assert not first.duplicate and second.duplicate and third.duplicate
    assert second.message_id == rec.id and second.message_status is S.DELIVERED
    assert len(await store.events(rec.id)) == n_events


async def test_receipt_before_submit_result_is_kept_then_applied(
    store: MessageStore, pg_pool: asyncpg.Pool
) -> None:
    rec, _ = await store.create(_new(2))
    await store.claim([rec.id])
    parts = [_smsc_id(), _smsc_id()]
    # both receipts overtake the submit_sm_resp: the message is still submitting
    out = await store.apply_receipts([_receipt(parts[0]), _receipt(parts[1])])
    assert all(o.message_id is None and o.message_status is None for o in out)
    assert await _status(store, rec.id) is S.SUBMITTING
    await store.record_submit_results([SubmitResult(rec.id, S.SUBMITTED, tuple(parts))])
    assert await _status(store, rec.id) is S.DELIVERED
    statuses = [e.status for e in await store.events(rec.id)]
    assert statuses == [S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.SUBMITTED, S.DELIVERED]
    unmatched = await pg_pool.fetchval(
        "SELECT count(*) FROM pending_receipts WHERE candidates && $1 AND matched_at IS NULL",
        parts,
    )
    assert unmatched == 0
    # a replay of the same receipt now finds the part: a duplicate
    (dup,) = await store.apply_receipts([_receipt(parts[1])])
    assert dup.duplicate and dup.message_id == rec.id


async def test_unknown_receipt_is_kept_pending(store: MessageStore, pg_pool: asyncpg.Pool) -> None:
    smsc_id = _smsc_id()
    (out,) = await store.apply_receipts([_receipt(smsc_id, S.UNDELIVERED, "UNDELIV")])
    assert out.message_id is None and out.part_no is None and not out.duplicate
    row = await pg_pool.fetchrow(
        "SELECT state, stat, matched_at FROM pending_receipts WHERE $1 = ANY(candidates)",
        smsc_id,
    )
    assert row is not None
    assert (row["state"], row["stat"], row["matched_at"]) == ("undelivered", "UNDELIV", None)


@pytest.mark.parametrize("form", ["hex", "decimal"])
async def test_hex_and_decimal_ids_match(store: MessageStore, form: str) -> None:
    value = uuid.uuid4().int % 10**9 + 10**9
    stored = canonical_id(format(value, "x") if form == "hex" else str(value))
    rec, _ = await store.create(_new())
    await store.claim([rec.id])
    await store.record_submit_results([SubmitResult(rec.id, S.SUBMITTED, (stored,))])
    # the receipt reports the id in the other base, with leading zeros and upper case
    other = str(value) if form == "hex" else format(value, "X")
    reported = id_candidates("00" + other)
    assert stored in reported and reported[0] != stored
    (out,) = await store.apply_receipts(
        [ReceiptUpdate(reported, S.DELIVERED, "DELIVRD", None, f"id:00{other}")]
    )
    assert out.message_id == rec.id and out.part_no == 1
    assert await _status(store, rec.id) is S.DELIVERED


async def test_concurrent_receipts_for_parts_of_one_message(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 4)
    await asyncio.gather(*(store.apply_receipts([_receipt(p)]) for p in parts))
    assert await _status(store, rec.id) is S.DELIVERED


async def test_receipt_racing_submit_result_is_never_lost(store: MessageStore) -> None:
    for _ in range(5):
        rec, _ = await store.create(_new())
        await store.claim([rec.id])
        part = _smsc_id()
        await asyncio.gather(
            store.apply_receipts([_receipt(part)]),
            store.record_submit_results([SubmitResult(rec.id, S.SUBMITTED, (part,))]),
        )
        assert await _status(store, rec.id) is S.DELIVERED


# --- receipts: several for one part or one message in one batch -----------------------------


async def test_same_part_twice_in_one_batch(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 1)
    n_events = len(await store.events(rec.id))
    first, second = await store.apply_receipts([_receipt(parts[0]), _receipt(parts[0])])
    assert (first.message_id, first.part_no, first.duplicate) == (rec.id, 1, False)
    assert (second.message_id, second.part_no, second.duplicate) == (rec.id, 1, True)
    assert first.message_status is second.message_status is S.DELIVERED
    events = await store.events(rec.id)
    assert len(events) == n_events + 1
    assert (events[-1].status, events[-1].detail) == (S.DELIVERED, "part 1/1 DELIVRD err:000")


async def test_expired_then_delivered_for_one_part_in_one_batch(
    store: MessageStore, pg_pool: asyncpg.Pool
) -> None:
    rec, parts = await _submitted(store, 1)
    out = await store.apply_receipts(
        [_receipt(parts[0], S.EXPIRED, "EXPIRED"), _receipt(parts[0])]
    )
    assert [(o.message_status, o.duplicate) for o in out] == [
        (S.EXPIRED, False),
        (S.DELIVERED, False),
    ]
    assert await _status(store, rec.id) is S.DELIVERED
    events = [(e.status, e.detail) for e in await store.events(rec.id)][-2:]
    assert events == [
        (S.EXPIRED, "part 1/1 EXPIRED err:001"),
        (S.DELIVERED, "part 1/1 DELIVRD err:000"),
    ]
    part = await pg_pool.fetchrow(
        "SELECT status, receipt_stat, receipt_err FROM message_parts WHERE message_id = $1",
        rec.id,
    )
    assert part is not None
    assert tuple(part.values()) == ("delivered", "DELIVRD", "000")


async def test_three_parts_of_one_message_in_one_batch(store: MessageStore) -> None:
    rec, parts = await _submitted(store, 3)
    other, other_parts = await _submitted(store, 3)
    out = await store.apply_receipts(
        [
            _receipt(parts[0]),
            _receipt(other_parts[2], S.UNDELIVERED, "UNDELIV"),
            _receipt(parts[1]),
            _receipt(other_parts[0]),
            _receipt(parts[2]),
            _receipt(other_parts[1], S.EXPIRED, "EXPIRED"),
        ]
    )
    assert [(o.message_id, o.part_no, o.message_status) for o in out] == [
        (rec.id, 1, S.SUBMITTED),
        (other.id, 3, S.SUBMITTED),
        (rec.id, 2, S.SUBMITTED),
        (other.id, 1, S.SUBMITTED),
        (rec.id, 3, S.DELIVERED),
        (other.id, 2, S.UNDELIVERED),
    ]
    assert not any(o.duplicate for o in out)
    got = await store.get(rec.id)
    assert got is not None and got.status is S.DELIVERED and got.done_at is not None
    assert await _status(store, other.id) is S.UNDELIVERED
    events = [(e.status, e.detail) for e in await store.events(rec.id)][-3:]
    assert events == [
        (S.SUBMITTED, "part 1/3 DELIVRD err:000"),
        (S.SUBMITTED, "part 2/3 DELIVRD err:000"),
        (S.DELIVERED, "part 3/3 DELIVRD err:000"),
    ]
    details = [e.detail for e in await store.events(other.id)][-3:]
    assert details == ["part 3/3 UNDELIV err:001", "part 1/3 DELIVRD err:000",
                       "part 2/3 EXPIRED err:001"]


async def test_batch_of_200_mixes_known_and_unknown_ids(
    store: MessageStore, pg_pool: asyncpg.Pool
) -> None:
    known = [await _submitted(store, 1) for _ in range(100)]
    unknown = [_smsc_id() for _ in range(100)]
    updates: list[ReceiptUpdate] = []
    expected: list[UUID | None] = []
    for (rec, parts), smsc_id in zip(known, unknown, strict=True):
        updates += [_receipt(smsc_id, S.UNDELIVERED, "UNDELIV"), _receipt(parts[0])]
        expected += [None, rec.id]
    out = await store.apply_receipts(updates)
    assert [o.message_id for o in out] == expected
    assert all(o.message_status is (None if o.message_id is None else S.DELIVERED) for o in out)
    assert not any(o.duplicate for o in out)
    for rec, _ in known:
        assert await _status(store, rec.id) is S.DELIVERED
    rows = await pg_pool.fetch(
        "SELECT candidates, state, stat, err, raw, matched_at FROM pending_receipts"
        " WHERE candidates && $1::text[] ORDER BY id",
        unknown,
    )
    # one pending row per unknown receipt, in the order of the batch, with all its candidates
    assert [tuple(r["candidates"]) for r in rows] == [id_candidates(i) for i in unknown]
    pending = ("undelivered", "UNDELIV", "001", None)
    assert all((r["state"], r["stat"], r["err"], r["matched_at"]) == pending for r in rows)
    assert [r["raw"] for r in rows] == [f"id:{i} stat:UNDELIV" for i in unknown]


async def test_candidate_order_then_newest_submit_wins_in_one_batch(
    store: MessageStore,
) -> None:
    value = uuid.uuid4().int % 10**9 + 10**9
    decimal, hexa = str(value), format(value, "x")
    candidates = id_candidates(decimal)
    assert candidates[:2] == (decimal, hexa)  # canonical first, then the hex form
    reused = _smsc_id()
    older = [(await store.create(_new()))[0] for _ in range(3)]
    await store.claim([r.id for r in older])
    await store.record_submit_results(
        [
            SubmitResult(older[0].id, S.SUBMITTED, (decimal,)),
            SubmitResult(older[1].id, S.SUBMITTED, (reused,)),
        ]
    )
    await asyncio.sleep(0.01)
    await store.record_submit_results([SubmitResult(older[2].id, S.SUBMITTED, (hexa,))])
    newer, _ = await store.create(_new())
    await store.claim([newer.id])
    await store.record_submit_results([SubmitResult(newer.id, S.SUBMITTED, (reused,))])
    out = await store.apply_receipts(
        [
            ReceiptUpdate(candidates, S.DELIVERED, "DELIVRD", None, ""),  # decimal form first
            ReceiptUpdate((hexa,), S.DELIVERED, "DELIVRD", None, ""),
            _receipt(reused),  # the same id submitted twice: the newest submit
        ]
    )
    assert [o.message_id for o in out] == [older[0].id, older[2].id, newer.id]
    assert await _status(store, older[1].id) is S.SUBMITTED


async def _snapshot(
    store: MessageStore, pg_pool: asyncpg.Pool, ids: list[UUID]
) -> list[tuple[object, ...]]:
    """Everything a receipt can change about some messages, without ids and timestamps."""
    snap: list[tuple[object, ...]] = []
    for message_id in ids:
        rec = await store.get(message_id)
        assert rec is not None
        parts = await pg_pool.fetch(
            "SELECT part_no, status, receipt_stat, receipt_err, receipt_at IS NOT NULL AS got"
            " FROM message_parts WHERE message_id = $1 ORDER BY part_no",
            message_id,
        )
        events = [  # the submit event names the twin's own SMSC ids
            (e.status, "" if e.detail.startswith("smsc ids:") else e.detail)
            for e in await store.events(message_id)
        ]
        snap.append(
            (rec.status, rec.done_at is not None, [tuple(p.values()) for p in parts], events)
        )
    return snap


async def test_one_batch_equals_receipts_one_by_one(
    store: MessageStore, pg_pool: asyncpg.Pool
) -> None:
    rng = random.Random(20240611)
    shape = [rng.randint(1, 3) for _ in range(10)]
    twins = [[await _submitted(store, n) for n in shape] for _ in range(2)]
    statuses = [(S.DELIVERED, "DELIVRD"), (S.UNDELIVERED, "UNDELIV"), (S.EXPIRED, "EXPIRED")]
    plan: list[tuple[int, int, int] | None] = []
    for _ in range(120):
        if rng.random() < 0.1:
            plan.append(None)  # an unknown id
        else:
            i = rng.randrange(len(shape))
            plan.append((i, rng.randrange(shape[i]), rng.choices(range(3), (6, 1, 2))[0]))

    def updates(messages: list[tuple[MessageRecord, list[str]]]) -> list[ReceiptUpdate]:
        out = []
        for step in plan:
            if step is None:
                out.append(_receipt(_smsc_id()))
            else:
                i, j, k = step
                out.append(_receipt(messages[i][1][j], *statuses[k]))
        return out

    def normalised(
        outcomes: list[ReceiptOutcome], messages: list[tuple[MessageRecord, list[str]]]
    ) -> list[tuple[object, ...]]:
        index = {rec.id: i for i, (rec, _) in enumerate(messages)}
        return [
            (None if o.message_id is None else index[o.message_id], o.part_no,
             o.message_status, o.duplicate)
            for o in outcomes
        ]

    batched, one_by_one = twins
    out_batched = await store.apply_receipts(updates(batched))
    out_single = [o for u in updates(one_by_one) for o in await store.apply_receipts([u])]
    assert normalised(out_batched, batched) == normalised(out_single, one_by_one)
    assert await _snapshot(store, pg_pool, [r.id for r, _ in batched]) == await _snapshot(
        store, pg_pool, [r.id for r, _ in one_by_one]
    )


async def test_bad_receipt_status_is_rejected(store: MessageStore) -> None:
    with pytest.raises(ValueError, match="cannot report"):
        await store.apply_receipts([ReceiptUpdate(("1",), S.SUBMITTED, "X", None, "")])
    with pytest.raises(ValueError, match="candidate"):
        await store.apply_receipts([ReceiptUpdate((), S.DELIVERED, "DELIVRD", None, "")])


# --- release / fail / stale / counts --------------------------------------------------------


async def test_release_and_fail_submitting(store: MessageStore) -> None:
    a, _ = await store.create(_new())
    b, _ = await store.create(_new())
    c, _ = await store.create(_new())
    await store.claim([a.id, b.id])
    assert await store.release([a.id, c.id], "link dropped before submit_sm_resp") == 1
    assert await store.fail_submitting([b.id, c.id], "ambiguous submit: policy give up") == 1
    assert await store.release([], "x") == 0 and await store.fail_submitting([], "x") == 0
    ra, rb, rc = [await store.get(i) for i in (a.id, b.id, c.id)]
    assert ra is not None and rb is not None and rc is not None
    assert (ra.status, ra.last_error) == (S.QUEUED, "link dropped before submit_sm_resp")
    assert (rb.status, rb.last_error) == (S.FAILED, "ambiguous submit: policy give up")
    assert rb.done_at is not None
    assert rc.status is S.QUEUED and rc.last_error is None
    last_a = (await store.events(a.id))[-1]
    assert (last_a.status, last_a.detail) == (
        S.QUEUED,
        "requeued: link dropped before submit_sm_resp",
    )
    assert (await store.events(b.id))[-1].status is S.FAILED
    # released rows can be claimed again; failed ones cannot
    assert [r.id for r in await store.claim([a.id, b.id])] == [a.id]


async def test_stale(store: MessageStore) -> None:
    q, _ = await store.create(_new())
    s, _ = await store.create(_new())
    await store.claim([s.id])
    await asyncio.sleep(0.05)
    queued, submitting = await store.stale(queued_before_s=0.01, submitting_before_s=0.01)
    assert q.id in queued and q.id not in submitting
    assert s.id in submitting and s.id not in queued
    queued, submitting = await store.stale(queued_before_s=3600, submitting_before_s=3600)
    assert q.id not in queued and s.id not in submitting
    queued, submitting = await store.stale(queued_before_s=0, submitting_before_s=0, limit=1)
    assert len(queued) <= 1 and len(submitting) <= 1


async def test_counts_by_status_and_ping(store: MessageStore) -> None:
    await store.ping()
    before = await store.counts_by_status()
    assert set(before) == set(MessageStatus)
    rec, _ = await store.create(_new())
    await store.claim([rec.id])
    await store.fail_submitting([rec.id], "gave up")
    after = await store.counts_by_status()
    assert after[S.FAILED] >= before[S.FAILED] + 1


# --- API keys -------------------------------------------------------------------------------


async def test_api_key_create_verify_list_revoke(pg_pool: asyncpg.Pool) -> None:
    keys = ApiKeyStore(pg_pool)
    name = f"crm-{uuid.uuid4().hex[:8]}"
    key, plaintext = await keys.create(name, ["send", "status"])
    assert plaintext.startswith("smsgw_") and len(plaintext) > 40
    assert key.name == name and key.scopes == ("send", "status")
    assert key.prefix == plaintext[6:14] and key.revoked_at is None
    assert await keys.verify(plaintext) == key
    assert await keys.verify(plaintext + "x") is None
    assert await keys.verify("not-a-key") is None
    assert key in await keys.list()
    # the plaintext is not stored anywhere in the row, only its sha256
    row = await pg_pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key.id)
    assert row is not None
    assert plaintext not in [str(v) for v in row.values()]
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    # revoke by name; a second revoke finds nothing active
    assert await keys.revoke(name)
    assert not await keys.revoke(name)
    assert await keys.verify(plaintext) is None
    listed = {k.name: k for k in await keys.list()}
    assert listed[name].revoked_at is not None


async def test_api_key_revoke_by_id_and_unknown(pg_pool: asyncpg.Pool) -> None:
    keys = ApiKeyStore(pg_pool)
    key, plaintext = await keys.create(f"ops-{uuid.uuid4().hex[:8]}", ("admin",))
    assert await keys.revoke(str(key.id))
    assert await keys.verify(plaintext) is None
    assert not await keys.revoke(f"missing-{uuid.uuid4().hex}")
    assert not await keys.revoke("99999999999999")


async def test_api_key_duplicate_name(pg_pool: asyncpg.Pool) -> None:
    keys = ApiKeyStore(pg_pool)
    name = f"dup-{uuid.uuid4().hex[:8]}"
    await keys.create(name, ["send"])
    with pytest.raises(ValueError, match="already exists"):
        await keys.create(name, ["send"])
