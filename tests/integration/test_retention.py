"""Retention: old message bodies and MO text blanked, rows kept (gateway/store/retention.py).

Each test has a fresh database (the purge looks at every row), real stores to make the rows,
and moves their creation time into the past with SQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from gateway.domain import Encoding, MessageClass, MessageStatus
from gateway.mo import MoPart, part_from_pdu
from gateway.smpp.codec import Pdu
from gateway.smpp.encoding import encode_message
from gateway.store.inbound import InboundStore
from gateway.store.messages import MessageStore, NewMessage
from gateway.store.retention import RetentionStore, retention_loop

S = MessageStatus
DAYS = 30
TERMINAL = (S.DELIVERED, S.UNDELIVERED, S.EXPIRED, S.REJECTED, S.FAILED, S.CANCELLED)
LONG_MO = ("Tôi đã nạp thẻ 100.000đ lúc 9 giờ sáng nhưng tài khoản chính chưa được cộng tiền. "
           "Nhờ tổng đài kiểm tra và phản hồi sớm giúp tôi. Cảm ơn!")

_COUNTS = """
SELECT status, class, created_at::date AS day, count(*) AS n, sum(segments) AS segments
FROM messages GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


@pytest.fixture
async def pool(fresh_pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_pg_dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def _msisdn() -> str:
    return "849" + str(uuid.uuid4().int)[:8]


async def _messages(pool: asyncpg.Pool, count: int, *, status: MessageStatus, age_days: float,
                    message_class: MessageClass = MessageClass.CARE) -> list[UUID]:
    """``count`` messages made by MessageStore, then set to ``status``, ``age_days`` old."""
    news = [NewMessage(msisdn=_msisdn(), sender="CSKH", body=f"Hoa don thang 11: {i}50.000d",
                       encoding=Encoding.GSM7, segments=1 + i % 2,
                       message_class=message_class) for i in range(count)]
    ids = await MessageStore(pool).create_many(news)
    await pool.execute(
        "UPDATE messages SET status = $2, created_at = now() - make_interval(secs => $3) "
        "WHERE id = ANY($1::uuid[])", ids, status.value, age_days * 86400)
    return ids


async def _bodies(pool: asyncpg.Pool, ids: list[UUID]) -> list[tuple[str, bool]]:
    rows = await pool.fetch("SELECT body, body_purged_at IS NOT NULL AS purged FROM messages "
                            "WHERE id = ANY($1::uuid[])", ids)
    assert len(rows) == len(ids)
    return [(row["body"], row["purged"]) for row in rows]


def _mo_parts(text: str, *, source: str, ref: int) -> list[MoPart]:
    enc = encode_message(text, ref=ref)
    return [part_from_pdu(Pdu(command="deliver_sm", sequence=1, command_id=5, params={
        "source_addr": source, "destination_addr": "8079", "esm_class": enc.esm_class,
        "data_coding": enc.data_coding, "short_message": p}), link="default", bucket=4_000_000)
        for p in enc.parts]


async def _mo(pool: asyncpg.Pool, text: str, *, age_days: float, ref: int = 0) -> UUID:
    """One MO stored part by part by InboundStore, received ``age_days`` ago."""
    store = InboundStore(pool)
    mid = None
    for part in _mo_parts(text, source=_msisdn(), ref=ref):
        _, mid = await store.store_part(part)
    assert mid is not None
    await pool.execute("UPDATE inbound_messages SET created_at = now() - make_interval("
                       "secs => $2) WHERE id = $1", mid, age_days * 86400)
    return mid


async def test_old_terminal_bodies_are_blanked_in_batches_and_the_rest_kept(
        pool: asyncpg.Pool) -> None:
    old = [mid for status in TERMINAL
           for mid in await _messages(pool, 4, status=status, age_days=DAYS + 5)]
    old += await _messages(pool, 3, status=S.DELIVERED, age_days=DAYS + 400,
                           message_class=MessageClass.ADVERTISING)
    pending = [mid for status in (S.HELD, S.QUEUED, S.SUBMITTING, S.SUBMITTED)
               for mid in await _messages(pool, 2, status=status, age_days=DAYS + 5)]
    recent = await _messages(pool, 5, status=S.DELIVERED, age_days=DAYS - 0.5)
    fresh = await _messages(pool, 3, status=S.FAILED, age_days=0)
    counts = [dict(row) for row in await pool.fetch(_COUNTS)]
    events = await pool.fetchval("SELECT count(*) FROM message_events")

    store = RetentionStore(pool)
    assert await store.purge_bodies(DAYS, batch=4) == len(old) == 27

    assert await _bodies(pool, old) == [("", True)] * len(old)
    for kept in (pending, recent, fresh):
        assert all(body.startswith("Hoa don") and not purged
                   for body, purged in await _bodies(pool, kept))
    # one statement (one transaction, one now()) per batch of at most 4: 27 rows → 7 batches
    batches = await pool.fetchval("SELECT count(DISTINCT body_purged_at) FROM messages")
    assert batches == 7
    # the rows stay: counts by status, class and day, and the event log, are unchanged
    assert [dict(row) for row in await pool.fetch(_COUNTS)] == counts
    assert await pool.fetchval("SELECT count(*) FROM message_events") == events
    record = await MessageStore(pool).get(old[0])
    assert record is not None and record.body == "" and record.status is S.DELIVERED

    assert await store.purge_bodies(DAYS) == 0  # a second run finds nothing
    with pytest.raises(ValueError, match="at least 1"):
        await store.purge_bodies(0)


async def test_old_mo_text_and_part_payloads_are_blanked(pool: asyncpg.Pool) -> None:
    single_old = await _mo(pool, "KT CUOC", age_days=DAYS + 1)
    long_old = await _mo(pool, LONG_MO, age_days=DAYS + 90, ref=42)
    recent = await _mo(pool, "DOI DIA CHI 12 Nguyen Trai", age_days=DAYS - 1)
    # an open group (one part of three, waiting for the others) is never touched
    source = _msisdn()
    waiting = _mo_parts(LONG_MO, source=source, ref=7)[0]
    assert await InboundStore(pool).store_part(waiting) == (True, None)
    await pool.execute("UPDATE inbound_parts SET received_at = now() - interval '400 days' "
                       "WHERE message_id IS NULL")

    store = RetentionStore(pool)
    assert await store.purge_mo_text(DAYS, batch=1) == 2

    rows = {row["id"]: row for row in await pool.fetch(
        "SELECT id, text, text_purged_at, complete, parts_received FROM inbound_messages")}
    for mid in (single_old, long_old):
        assert rows[mid]["text"] == "" and rows[mid]["text_purged_at"] is not None
    assert rows[long_old]["complete"] and rows[long_old]["parts_received"] == 3
    assert rows[recent]["text"] == "DOI DIA CHI 12 Nguyen Trai"
    assert rows[recent]["text_purged_at"] is None
    payloads = await pool.fetch("SELECT message_id, payload FROM inbound_parts")
    assert len(payloads) == 1 + 3 + 1 + 1  # the parts are kept
    for row in payloads:
        purged = row["message_id"] in (single_old, long_old)
        assert (bytes(row["payload"]) == b"") == purged
    # the kept dedupe key still recognises a redelivery of a purged part
    again = _mo_parts(LONG_MO, source=source, ref=7)[0]
    assert await InboundStore(pool).store_part(again) == (False, None)

    assert await store.purge_mo_text(DAYS) == 0


async def test_retention_loop_purges_until_stopped(pool: asyncpg.Pool) -> None:
    old = await _messages(pool, 3, status=S.DELIVERED, age_days=DAYS + 1)
    mo = await _mo(pool, "TC", age_days=DAYS + 1)
    store = RetentionStore(pool)
    stop = asyncio.Event()
    task = asyncio.create_task(retention_loop(store, days=DAYS, interval_s=60, stop=stop))
    for _ in range(100):
        if await pool.fetchval("SELECT text_purged_at IS NOT NULL FROM inbound_messages "
                               "WHERE id = $1", mo):
            break
        await asyncio.sleep(0.05)
    assert await _bodies(pool, old) == [("", True)] * 3
    stop.set()
    await asyncio.wait_for(task, timeout=2)  # wakes from its interval at once
    # days 0: retention off, returns without touching anything
    await asyncio.wait_for(retention_loop(store, days=0, interval_s=60, stop=asyncio.Event()),
                           timeout=1)


def _smsgw(*args: str, dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "SMSGW_DATABASE_DSN": dsn, **env})


async def test_cli_retention_purge(pool: asyncpg.Pool, fresh_pg_dsn: str) -> None:
    old = await _messages(pool, 5, status=S.UNDELIVERED, age_days=DAYS + 2)
    kept = await _messages(pool, 2, status=S.UNDELIVERED, age_days=DAYS - 2)
    await _mo(pool, "HUY QC", age_days=DAYS + 2)

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return _smsgw("retention", "purge", *args, dsn=fresh_pg_dsn, **env)

    out = await asyncio.to_thread(run, "--days", str(DAYS), SMSGW_LOG_FORMAT="json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"older than {DAYS} days: blanked 5 message bodies and 1 MO text"
    logged: list[dict[str, Any]] = [json.loads(line) for line in out.stderr.splitlines()]
    assert any(line["logger"] == "smsgw.store.retention" and line["level"] == "INFO"
               for line in logged), out.stderr
    assert await _bodies(pool, old) == [("", True)] * 5
    assert all(not purged for _, purged in await _bodies(pool, kept))

    again = await asyncio.to_thread(run, "--days", str(DAYS))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"older than {DAYS} days: blanked 0 message bodies and 0 MO texts")
    # without --days: retention.body_days, 180 by default; the 28-day-old rows stay
    default = await asyncio.to_thread(run)
    assert default.returncode == 0, default.stderr
    assert default.stdout.startswith("older than 180 days: blanked 0 ")
    assert all(not purged for _, purged in await _bodies(pool, kept))
    bad = await asyncio.to_thread(run, "--days", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr
    wrong = await asyncio.to_thread(run, SMSGW_LOG_FORMAT="xml")
    assert wrong.returncode == 2 and "log.format" in wrong.stderr
