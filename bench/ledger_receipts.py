"""Ledger writer throughput for delivery receipts: ``MessageStore.apply_receipts`` in batches.

Creates a scratch database (dropped at the end), then two sets of N submitted messages through
``MessageStore`` (create → claim → record_submit_results, in batches), and applies one DELIVRD
receipt per part, shuffled, in batches of 500, the way the ledger's single receipt writer does:

* "before": the previous receipt path, kept here only for comparison
  (:func:`_apply_receipts_sequential`: a lookup and four statements per receipt);
* "after": the current ``MessageStore.apply_receipts`` (four statements per batch).

Prints a markdown table of receipts/s and per-batch latency.

    python3 bench/ledger_receipts.py [--count 20000] [--batch 500] [--segments 1] [--unknown 0]
                                     [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simtools import add_quick, apply_quick, print_result

from gateway import PROJECT_ROOT
from gateway.domain import Encoding, MessageClass, MessageStatus
from gateway.smpp.receipts import canonical_id, id_candidates
from gateway.store.messages import (
    _ROLLUP_FROM,
    MessageStore,
    NewMessage,
    ReceiptOutcome,
    ReceiptUpdate,
    SubmitResult,
    _check_receipt,
    _lock_smsc_ids,
    _receipt_detail,
    _rollup,
)
from gateway.store.migrate import migrate_dsn

ADMIN = os.environ.get("SMSGW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

Apply = Callable[[Sequence[ReceiptUpdate]], Awaitable[list[ReceiptOutcome]]]

# --- the previous implementation, for comparison only ---------------------------------------

_FIND_PART = """
SELECT p.message_id, p.part_no
FROM message_parts p JOIN messages m ON m.id = p.message_id
WHERE p.smsc_message_id = ANY($1::text[])
ORDER BY array_position($1::text[], p.smsc_message_id), m.submitted_at DESC NULLS LAST
LIMIT 1
"""
_LOCK_MESSAGES = "SELECT id FROM messages WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
_INSERT_PENDING = """
INSERT INTO pending_receipts (candidates, state, stat, err, raw) VALUES ($1, $2, $3, $4, $5)
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


async def _apply_to_part(
    conn: Any, message_id: UUID, part_no: int, update: ReceiptUpdate
) -> ReceiptOutcome:
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


async def _apply_receipts_sequential(
    pool: asyncpg.Pool, updates: Sequence[ReceiptUpdate]
) -> list[ReceiptOutcome]:
    """The receipt path before the set-based rewrite: statements per receipt."""
    for update in updates:
        _check_receipt(update)
    async with pool.acquire() as conn, conn.transaction():
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
                outcomes.append(ReceiptOutcome(None, None, None, duplicate=False))
            else:
                outcomes.append(await _apply_to_part(conn, target[0], target[1], update))
        return outcomes


# --- setup ----------------------------------------------------------------------------------


def _smsc_id() -> str:
    return canonical_id("b" + uuid.uuid4().hex[:11])


def _receipt(smsc_id: str) -> ReceiptUpdate:
    return ReceiptUpdate(
        candidates=id_candidates(smsc_id),
        status=MessageStatus.DELIVERED,
        stat="DELIVRD",
        err="000",
        raw=f"id:{smsc_id} sub:001 dlvrd:001 stat:DELIVRD err:000",
    )


async def _submitted(
    store: MessageStore, count: int, segments: int, batch: int
) -> tuple[list[UUID], list[str]]:
    """``count`` submitted messages of ``segments`` parts: their ids and every part's SMSC id."""
    sem = asyncio.Semaphore(16)

    async def create(i: int) -> UUID:
        async with sem:
            rec, _ = await store.create(
                NewMessage(
                    msisdn=f"8490{i:07d}",
                    sender="SMSGW",
                    body=f"Thong bao cuoc so {i}: 125.000d.",
                    encoding=Encoding.GSM7,
                    segments=segments,
                    message_class=MessageClass.CARE,
                )
            )
            return rec.id

    ids = list(await asyncio.gather(*(create(i) for i in range(count))))
    part_ids: list[str] = []
    for start in range(0, count, batch):
        claimed = await store.claim(ids[start : start + batch])
        results = []
        for rec in claimed:
            parts = tuple(_smsc_id() for _ in range(segments))
            part_ids.extend(parts)
            results.append(SubmitResult(rec.id, MessageStatus.SUBMITTED, parts))
        await store.record_submit_results(results)
    return ids, part_ids


async def _measure(
    name: str, apply: Apply, updates: list[ReceiptUpdate], batch: int
) -> dict[str, Any]:
    latencies: list[float] = []
    started = time.perf_counter()
    for start in range(0, len(updates), batch):
        t0 = time.perf_counter()
        await apply(updates[start : start + batch])
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "name": name,
        "receipts": len(updates),
        "batches": len(latencies),
        "seconds": elapsed,
        "rate": len(updates) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p95": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def run(args: argparse.Namespace) -> None:
    db = f"smsgw_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = ADMIN.rpartition("/")[0] + f"/{db}"
    try:
        await migrate_dsn(dsn, PROJECT_ROOT / "sql")
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=16)
        assert pool is not None
        try:
            store = MessageStore(pool)
            rng = random.Random(args.seed)
            sets: list[tuple[list[UUID], list[ReceiptUpdate]]] = []
            t0 = time.perf_counter()
            for _ in range(2):
                ids, parts = await _submitted(store, args.count, args.segments, args.batch)
                updates = [_receipt(p) for p in parts]
                updates += [_receipt(_smsc_id()) for _ in range(int(len(parts) * args.unknown))]
                rng.shuffle(updates)
                sets.append((ids, updates))
            print(f"set-up: 2 × {args.count} submitted messages in {time.perf_counter() - t0:.1f}s")
            await pool.execute("VACUUM ANALYZE")

            async def before(updates: Sequence[ReceiptUpdate]) -> list[ReceiptOutcome]:
                return await _apply_receipts_sequential(pool, updates)

            rows = [
                await _measure("before (per receipt)", before, sets[0][1], args.batch),
                await _measure("after (set-based)", store.apply_receipts, sets[1][1], args.batch),
            ]
            for ids, _ in sets:
                delivered = await pool.fetchval(
                    "SELECT count(*) FROM messages WHERE id = ANY($1) AND status = 'delivered'",
                    ids,
                )
                assert delivered == len(ids), f"{delivered} of {len(ids)} delivered"
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()

    print(
        f"\n{args.count} messages × {args.segments} part(s), "
        f"{args.unknown:.0%} extra unknown ids, batches of {args.batch}\n"
    )
    print("| implementation | receipts | batches | seconds | receipts/s | batch p50 ms | p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['receipts']} | {r['batches']} | {r['seconds']:.2f} "
            f"| {r['rate']:,.0f} | {r['p50']:.1f} | {r['p95']:.1f} |"
        )
    print(f"\nspeed-up: {rows[1]['rate'] / rows[0]['rate']:.1f}×")
    print_result("ledger_receipts", throughput_per_s=rows[1]["rate"], p50_ms=rows[1]["p50"],
                 p99_ms=rows[1]["p99"], unit="receipts/s",
                 note=f"set-based apply_receipts, batches of {args.batch} (latency per batch)",
                 p95_ms=rows[1]["p95"], before_per_s=rows[0]["rate"],
                 speedup=rows[1]["rate"] / rows[0]["rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20_000, help="messages per implementation")
    parser.add_argument("--batch", type=int, default=500, help="receipts per apply_receipts call")
    parser.add_argument("--segments", type=int, default=1, help="parts per message")
    parser.add_argument(
        "--unknown", type=float, default=0.0, help="extra receipts for unknown ids (fraction)"
    )
    parser.add_argument("--seed", type=int, default=1)
    add_quick(parser)
    asyncio.run(run(apply_quick(parser, parser.parse_args(), count=2000)))


if __name__ == "__main__":
    main()
