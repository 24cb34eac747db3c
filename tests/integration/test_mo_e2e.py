"""Inbound MO end to end: SMSC simulator -> TCP -> gateway bind -> MoReceiver -> Postgres.

The gateway does not construct a MoReceiver itself yet; the test plugs one (on the gateway's
own pool) into ``Sender.set_mo_handler``, the hook Sender.on_deliver calls for every deliver_sm
that is not a receipt -- the same wiring the service will do. Receipts stay on the ledger path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.mo import ESME_ROK, ESME_RX_T_APPN, MoReceiver
from gateway.smpp import codec
from gateway.smpp.codec import Pdu
from gateway.smpp.encoding import encode_message, normalise
from gateway.store.inbound import InboundMessage, InboundStore
from tests.integration.conftest import MakeStack, Stack

SHORT_CODE = "8079"
LONG_VI = normalise(
    "Chào tổng đài, tôi là chủ thuê bao này. Tháng này tôi bị trừ 50.000đ cho dịch vụ "
    "nhạc chờ mà tôi không hề đăng ký. Đề nghị kiểm tra, hủy dịch vụ và hoàn lại tiền "
    "cho tôi. Xin cảm ơn và chúc một ngày tốt lành 🌸"
)
GSM_TEXT = "Gia: 100€ [QC] - DK {MAX100} gui 1234 ~ cam on"
_raw_sequence = 0x7F000000  # far above the simulator's own sequence numbers


@dataclass
class Wired:
    st: Stack
    rx: MoReceiver
    store: InboundStore
    statuses: list[int] = field(default_factory=list)  # deliver_sm_resp status of each MO
    links: list[str] = field(default_factory=list)  # link name each MO came on

    async def messages(self, source: str) -> list[InboundMessage]:
        assert self.st.gw.pool is not None
        rows = await self.st.gw.pool.fetch(
            "SELECT id FROM inbound_messages WHERE source = $1 ORDER BY created_at, id", source)
        found = [await self.store.get(row["id"]) for row in rows]
        return [m for m in found if m is not None]

    async def wait_messages(self, source: str, n: int, timeout: float = 10) -> list[
            InboundMessage]:
        await _until(lambda: self._has(source, n), timeout)
        return await self.messages(source)

    async def _has(self, source: str, n: int) -> bool:
        return len(await self.messages(source)) >= n

    async def wait_handled(self, n: int, timeout: float = 10) -> None:
        async def done() -> bool:
            return len(self.statuses) >= n
        await _until(done, timeout)


async def _until(pred: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def wired(make_stack: MakeStack) -> Wired:
    st = await make_stack()
    gw = st.gw
    assert gw.pool is not None and gw.sender is not None
    store = InboundStore(gw.pool)
    w = Wired(st=st, rx=MoReceiver(store), store=store)

    async def on_mo(pdu: Pdu, link: str) -> int:
        status = await w.rx.on_mo(pdu, link=link)
        w.links.append(link)
        w.statuses.append(status)
        return status

    gw.sender.set_mo_handler(on_mo)
    return w


def _deliver_sm(source: str, short_message: bytes, *, data_coding: int,
                esm_class: int = 0x40, **tlvs: Any) -> bytes:
    global _raw_sequence
    _raw_sequence += 1
    return codec.encode("deliver_sm", sequence=_raw_sequence, source_addr=source,
                        source_addr_ton=1, source_addr_npi=1, destination_addr=SHORT_CODE,
                        esm_class=esm_class, data_coding=data_coding,
                        short_message=short_message, **tlvs)


def _udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes((0x05, 0x00, 0x03, ref, total, seq))


def _source(n: int) -> str:
    return f"8491{time.time_ns() % 10_000_000:07d}{n}"


async def test_long_vietnamese_and_gsm7_mo_land_with_exact_text(wired: Wired) -> None:
    sim = wired.st.sim
    vi_src, gsm_src, sar_src = _source(1), _source(2), _source(3)
    vi_parts = await sim.inject_mo(source=vi_src, destination=SHORT_CODE, text=LONG_VI,
                                   udh_parts=True)
    gsm_parts = await sim.inject_mo(source=gsm_src, destination=SHORT_CODE, text=GSM_TEXT)
    sar_parts = await sim.inject_mo(source=sar_src, destination=SHORT_CODE, text=LONG_VI,
                                    udh_parts=False)
    assert vi_parts == sar_parts == 4 and gsm_parts == 1

    (vi,) = await wired.wait_messages(vi_src, 1)
    assert vi.text == LONG_VI and vi.complete
    assert (vi.data_coding, vi.parts_expected, vi.parts_received) == (8, 4, 4)
    assert vi.destination == SHORT_CODE and vi.link in wired.st.gw.links
    assert set(wired.links) == {vi.link}
    (gsm,) = await wired.wait_messages(gsm_src, 1)
    assert gsm.text == GSM_TEXT and gsm.complete and gsm.data_coding == 0
    (sar,) = await wired.wait_messages(sar_src, 1)
    assert sar.text == LONG_VI and sar.complete

    await wired.wait_handled(9)
    assert wired.statuses == [ESME_ROK] * 9
    await _until(lambda: _acked(wired, 9), 5)  # every part acknowledged with ESME_ROK
    unhandled = {m.id for m in await wired.store.list_unhandled(100)}
    assert {vi.id, gsm.id, sar.id} <= unhandled


async def _acked(wired: Wired, n: int) -> bool:
    return wired.st.sim.mo_acked >= n


def _split_emoji_parts(ref: int) -> tuple[str, list[bytes]]:
    """Three UCS-2 parts whose first boundary cuts an emoji's surrogate pair in two."""
    text = "A" * 66 + "😀" + " Đã nhận được hàng, cảm ơn shop nhiều! " * 3
    raw = text.encode("utf-16-be", errors="surrogatepass")
    chunks = [raw[i:i + 134] for i in range(0, len(raw), 134)]
    assert len(chunks) == 3 and 0xD800 <= int.from_bytes(chunks[0][-2:]) < 0xDC00
    return text, [_udh8(ref, 3, seq) + chunk for seq, chunk in enumerate(chunks, start=1)]


async def test_parts_in_reverse_order_make_one_complete_message(wired: Wired) -> None:
    source = _source(4)
    text, parts = _split_emoji_parts(ref=61)
    for part in reversed(parts):
        assert await wired.st.sim.send_raw(_deliver_sm(source, part, data_coding=8)) == 1
    (msg,) = await wired.wait_messages(source, 1)
    assert msg.text == text and msg.complete and msg.parts_received == 3
    await wired.wait_handled(3)
    assert wired.statuses == [ESME_ROK] * 3


async def test_the_same_pdu_twice_makes_one_message(wired: Wired) -> None:
    source = _source(5)
    single = encode_message("DK MAX100", ref=0).parts[0]
    multi = encode_message(LONG_VI, ref=88).parts
    frames = [_deliver_sm(source, single, data_coding=0, esm_class=0),
              *(_deliver_sm(source, p, data_coding=8) for p in multi)]
    for frame in frames:
        await wired.st.sim.send_raw(frame)
    await wired.wait_messages(source, 2)
    # the SMSC did not get our deliver_sm_resp: it delivers everything again, new sequences
    for frame in frames:
        again = frame[:12] + (int.from_bytes(frame[12:16]) + 0x100000).to_bytes(4) + frame[16:]
        assert codec.decode(again).sequence != codec.decode(frame).sequence
        await wired.st.sim.send_raw(again)
    await wired.wait_handled(2 * len(frames))
    assert wired.statuses == [ESME_ROK] * (2 * len(frames))
    messages = await wired.messages(source)
    assert sorted(m.text for m in messages) == sorted(["DK MAX100", LONG_VI])
    assert all(m.complete for m in messages)


async def test_an_incomplete_group_is_flushed_by_the_sweep(wired: Wired) -> None:
    source = _source(6)
    enc = encode_message(LONG_VI, ref=123)
    for seq in (1, 3):  # part 2 never comes
        await wired.st.sim.send_raw(_deliver_sm(source, enc.parts[seq - 1], data_coding=8))
    await wired.wait_handled(2)
    assert await wired.messages(source) == []
    ids = await wired.rx.sweep(0)
    (msg,) = await wired.messages(source)
    assert ids == [msg.id]
    assert not msg.complete and (msg.parts_expected, msg.parts_received) == (4, 2)
    first = enc.parts[0][6:].decode("utf-16-be")
    last = enc.parts[2][6:].decode("utf-16-be")
    assert msg.text == first + last
    assert await wired.rx.sweep(0) == []


async def test_database_failure_answers_temporary_error_and_the_redelivery_is_kept(
        wired: Wired) -> None:
    pool = wired.st.gw.pool
    assert pool is not None
    source = _source(7)
    frame = _deliver_sm(source, b"HUY MAX100", data_coding=0, esm_class=0)
    await pool.execute("ALTER TABLE inbound_parts RENAME TO inbound_parts_away")
    try:
        await wired.st.sim.send_raw(frame)
        await wired.wait_handled(1)
    finally:
        await pool.execute("ALTER TABLE inbound_parts_away RENAME TO inbound_parts")
    assert wired.statuses == [ESME_RX_T_APPN]
    assert await wired.messages(source) == []
    await wired.st.sim.send_raw(frame)  # the SMSC retries what we did not acknowledge
    (msg,) = await wired.wait_messages(source, 1)
    assert msg.text == "HUY MAX100" and wired.statuses == [ESME_RX_T_APPN, ESME_ROK]


async def test_receipts_still_reach_the_ledger(wired: Wired) -> None:
    sent = await wired.st.send(to="0901234567", text="Ma OTP cua ban la 123456")
    status = await wired.st.wait_terminal([sent["id"]])
    assert status[sent["id"]] == "delivered"
    assert wired.statuses == []  # the receipt did not go to the MO handler
