"""InboundStore against the real Postgres (fixtures in tests/conftest.py).

Every test uses its own subscriber number, so tests share one database and may run in any
order; flush_incomplete sees other tests' open groups too, so its results are filtered.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from uuid import UUID

import asyncpg

from gateway.mo import MoPart, part_from_pdu
from gateway.smpp.codec import Pdu
from gateway.smpp.encoding import encode_message, normalise
from gateway.store.inbound import InboundStore

LINK = "default"
SHORT_CODE = "8079"
BUCKET = 4_000_000

LONG_VI = normalise(
    "Tôi đã nạp thẻ 100.000đ lúc 9 giờ sáng nhưng tài khoản chính chưa được cộng tiền. "
    "Mã thẻ là 1234 5678 9012. Nhờ tổng đài kiểm tra và phản hồi sớm giúp tôi. Cảm ơn! 😊"
)


def _source() -> str:
    return "849" + str(uuid.uuid4().int)[:8]


def _pdu(short_message: bytes, *, source: str, esm_class: int = 0, data_coding: int = 0,
         **tlvs: Any) -> Pdu:
    params = {"source_addr": source, "destination_addr": SHORT_CODE, "esm_class": esm_class,
              "data_coding": data_coding, "short_message": short_message, **tlvs}
    return Pdu(command="deliver_sm", sequence=1, params=params, command_id=5)


def _parts(text: str, *, source: str, ref: int, bucket: int = BUCKET) -> list[MoPart]:
    enc = encode_message(text, ref=ref)
    return [part_from_pdu(_pdu(p, source=source, esm_class=enc.esm_class,
                               data_coding=enc.data_coding), link=LINK, bucket=bucket)
            for p in enc.parts]


async def _messages_from(pool: asyncpg.Pool, source: str) -> list[UUID]:
    rows = await pool.fetch("SELECT id FROM inbound_messages WHERE source = $1 ORDER BY id",
                            source)
    return [row["id"] for row in rows]


async def test_single_part_is_stored_and_completed(pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    source = _source()
    (part,) = _parts("Gia: 100€ [QC]", source=source, ref=0)
    stored, mid = await store.store_part(part)
    assert stored and mid is not None
    msg = await store.get(mid)
    assert msg is not None
    assert (msg.link, msg.source, msg.destination) == (LINK, source, SHORT_CODE)
    assert msg.text == "Gia: 100€ [QC]"
    assert (msg.data_coding, msg.parts_expected, msg.parts_received) == (0, 1, 1)
    assert msg.complete and msg.completed_at is not None
    assert msg.received_at <= msg.created_at
    assert msg.handled_at is None and msg.keyword is None
    row = await pg_pool.fetchrow("SELECT * FROM inbound_parts WHERE dedupe_key = $1",
                                 part.dedupe_key)
    assert row is not None and row["message_id"] == mid  # parts are kept, linked
    assert row["ref"] is None and bytes(row["payload"]) == part.payload


async def test_three_parts_out_of_order_make_one_message_on_the_last(
        pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    source = _source()
    parts = _parts(LONG_VI, source=source, ref=300)  # 16-bit reference
    assert [p.seq for p in parts] == [1, 2, 3]
    assert await store.store_part(parts[2]) == (True, None)
    assert await store.store_part(parts[0]) == (True, None)
    stored, mid = await store.store_part(parts[1])
    assert stored and mid is not None
    msg = await store.get(mid)
    assert msg is not None
    assert msg.text == LONG_VI and msg.complete
    assert (msg.data_coding, msg.parts_expected, msg.parts_received) == (8, 3, 3)
    assert await _messages_from(pg_pool, source) == [mid]


async def test_the_same_part_twice_is_stored_once(pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    source = _source()
    parts = _parts(LONG_VI, source=source, ref=17)
    assert await store.store_part(parts[0]) == (True, None)
    assert await store.store_part(parts[0]) == (False, None)
    assert await store.store_part(parts[1]) == (True, None)
    stored, mid = await store.store_part(parts[2])
    assert stored and mid is not None
    # a late redelivery of a part of the assembled message is still a duplicate
    assert await store.store_part(parts[1]) == (False, None)
    # so is one in the next dedupe window, found through the previous window's key
    later = _parts(LONG_VI, source=source, ref=17, bucket=BUCKET + 1)[1]
    assert await store.store_part(later, earlier_keys=(parts[1].dedupe_key,)) == (False, None)
    count = await pg_pool.fetchval("SELECT count(*) FROM inbound_parts WHERE source = $1",
                                   source)
    assert count == 3
    assert await _messages_from(pg_pool, source) == [mid]
    await store.flush_incomplete(0)  # the redeliveries opened no group to flush
    assert await _messages_from(pg_pool, source) == [mid]


async def test_single_part_redelivered_once_but_resent_later_is_new(
        pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    source = _source()
    (first,) = _parts("KT", source=source, ref=0)
    assert (await store.store_part(first))[1] is not None
    assert await store.store_part(first) == (False, None)
    (later,) = _parts("KT", source=source, ref=0, bucket=BUCKET + 2)
    assert (await store.store_part(later))[1] is not None
    assert len(await _messages_from(pg_pool, source)) == 2


async def test_a_reused_reference_starts_a_new_group(pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    source = _source()
    other = "Xin chào! " + LONG_VI  # part 1 must differ: else it is a redelivery of part 1
    one = _parts(LONG_VI, source=source, ref=99)
    two = _parts(other, source=source, ref=99)
    ids = []
    for part in [*one, *two]:
        stored, mid = await store.store_part(part)
        assert stored
        if mid is not None:
            ids.append(mid)
    assert len(ids) == 2
    texts = [m.text for m in [await store.get(i) for i in ids] if m is not None]
    assert texts == [LONG_VI, other]


async def test_parts_of_one_group_concurrently_make_exactly_one_message(
        pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    for ref in range(20):
        source = _source()
        parts = _parts(LONG_VI, source=source, ref=ref)
        results = await asyncio.gather(*(store.store_part(p) for p in reversed(parts)))
        assert all(stored for stored, _ in results)
        made = [mid for _, mid in results if mid is not None]
        assert len(made) == 1, results
        assert await _messages_from(pg_pool, source) == made
        msg = await store.get(made[0])
        assert msg is not None and msg.text == LONG_VI and msg.complete


async def test_the_same_part_concurrently_is_stored_once(pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    source = _source()
    (part,) = _parts("DK MAX100", source=source, ref=0)
    results = await asyncio.gather(*(store.store_part(part) for _ in range(4)))
    assert sorted(stored for stored, _ in results) == [False, False, False, True]
    assert len(await _messages_from(pg_pool, source)) == 1


async def test_flush_incomplete_makes_one_incomplete_message_even_concurrently(
        pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    source = _source()
    parts = _parts(LONG_VI, source=source, ref=200)
    await store.store_part(parts[2])
    await store.store_part(parts[0])
    await store.flush_incomplete(3600)
    assert await _messages_from(pg_pool, source) == []  # too young to flush

    first, second = await asyncio.gather(store.flush_incomplete(0), store.flush_incomplete(0))
    mine = await _messages_from(pg_pool, source)
    assert len(mine) == 1
    assert [*first, *second].count(mine[0]) == 1
    msg = await store.get(mine[0])
    assert msg is not None
    assert not msg.complete and msg.completed_at is None
    assert (msg.parts_expected, msg.parts_received) == (3, 2)
    first_text = normalise(LONG_VI)[:67]  # UCS-2 parts of 67 code units (no astral before)
    assert msg.text.startswith(first_text) and msg.text.endswith("Cảm ơn! 😊")
    assert len(msg.text) < len(LONG_VI)

    again = await store.flush_incomplete(0)
    assert mine[0] not in again
    assert await _messages_from(pg_pool, source) == mine
    open_parts = await pg_pool.fetchval(
        "SELECT count(*) FROM inbound_parts WHERE source = $1 AND message_id IS NULL", source)
    assert open_parts == 0


async def test_flush_racing_the_last_part_still_makes_one_message(
        pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    for ref in range(10):
        source = _source()
        parts = _parts(LONG_VI, source=source, ref=ref)
        await store.store_part(parts[0])
        await store.store_part(parts[1])
        (stored, completed), _ = await asyncio.gather(store.store_part(parts[2]),
                                                      store.flush_incomplete(0))
        assert stored
        mine = await _messages_from(pg_pool, source)
        if completed is not None:  # the last part won: one complete message
            assert mine == [completed]
        else:  # the sweeper won: parts 1-2 flushed, part 3 opened a new group
            assert len(mine) == 1
            assert await store.flush_incomplete(0)
            assert len(await _messages_from(pg_pool, source)) == 2


async def test_get_list_unhandled_and_mark_handled(pg_pool: asyncpg.Pool) -> None:
    store = InboundStore(pg_pool)
    assert await store.get(uuid.uuid4()) is None
    assert not await store.mark_handled(uuid.uuid4(), "DK")
    source = _source()
    ids = []
    for text in ("DK MAX100", "HUY MAX100", "xin chào"):
        (part,) = _parts(text, source=source, ref=0)
        _, mid = await store.store_part(part)
        assert mid is not None
        ids.append(mid)
    unhandled = [m for m in await store.list_unhandled(10_000) if m.source == source]
    assert [m.id for m in unhandled] == ids  # oldest first
    assert [m.text for m in unhandled] == ["DK MAX100", "HUY MAX100", "xin chào"]
    assert len(await store.list_unhandled(1)) == 1

    assert await store.mark_handled(ids[0], "DK")
    assert not await store.mark_handled(ids[0], "HUY")  # handled once
    assert await store.mark_handled(ids[2], None)  # no keyword matched
    handled = await store.get(ids[0])
    assert handled is not None and handled.keyword == "DK" and handled.handled_at is not None
    nothing = await store.get(ids[2])
    assert nothing is not None and nothing.keyword is None and nothing.handled_at is not None
    left = [m.id for m in await store.list_unhandled(10_000) if m.source == source]
    assert left == [ids[1]]
