"""MO parsing, dedupe keys and assembly (pure), and MoReceiver against a fake store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from gateway.mo import (
    ESME_ROK,
    ESME_RX_T_APPN,
    MoPart,
    MoReceiver,
    assemble,
    part_from_pdu,
    time_bucket,
)
from gateway.sender import MoHandler
from gateway.smpp import codec
from gateway.smpp.encoding import encode_message, normalise
from gateway.store.inbound import InboundStore

LINK = "viettel"
SOURCE = "84901234567"
SHORT_CODE = "8079"
BUCKET = 2_900_000


def _pdu(short_message: bytes = b"", *, sequence: int = 1, esm_class: int = 0,
         data_coding: int = 0, source: str = SOURCE, **tlvs: Any) -> codec.Pdu:
    """A deliver_sm as the gateway sees it: encoded, then decoded by the real codec."""
    frame = codec.encode("deliver_sm", sequence=sequence, source_addr=source,
                         source_addr_ton=1, source_addr_npi=1, destination_addr=SHORT_CODE,
                         esm_class=esm_class, data_coding=data_coding,
                         short_message=short_message, **tlvs)
    return codec.decode(frame)


def _udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes((0x05, 0x00, 0x03, ref, total, seq))


def _parts_of(pdus: Sequence[codec.Pdu], bucket: int = BUCKET) -> list[MoPart]:
    return [part_from_pdu(p, link=LINK, bucket=bucket) for p in pdus]


def _multipart(text: str, *, ref: int, force_ucs2: bool = False) -> list[codec.Pdu]:
    enc = encode_message(text, ref=ref, force_ucs2=force_ucs2)
    return [_pdu(p, sequence=i, esm_class=enc.esm_class, data_coding=enc.data_coding)
            for i, p in enumerate(enc.parts, start=1)]


LONG_VI = normalise(
    "Kính gửi Quý khách, tôi muốn hỏi về hoá đơn cước tháng này vì số tiền cao hơn "
    "bình thường rất nhiều. Xin vui lòng kiểm tra giúp tôi và gọi lại số này. Cảm ơn 🙏"
)
LONG_GSM = ("Toi muon dang ky goi cuoc MAX100 cho thue bao nay, xin cho biet gia {100}€ "
            "va thoi han su dung [30 ngay]. Neu co khuyen mai ~ xin bao lai qua tin nhan. "
            "Cam on nhieu | hen gap lai ^^")


# --------------------------------------------------------------------------- single parts


def test_gsm7_single_with_extension_characters() -> None:
    enc = encode_message("Gia: 100€ [QC]", ref=0)
    assert enc.data_coding == 0 and len(enc.parts) == 1
    part = part_from_pdu(_pdu(enc.parts[0]), link=LINK, bucket=BUCKET)
    assert (part.ref, part.total, part.seq) == (None, 1, 1)
    assert (part.link, part.source, part.destination) == (LINK, SOURCE, SHORT_CODE)
    assert part.payload == enc.parts[0]
    assert assemble([part]) == ("Gia: 100€ [QC]", True)


def test_latin1_data_coding_3() -> None:
    text = "Café crème, ñandú ¿sí?"
    part = part_from_pdu(_pdu(text.encode("latin-1"), data_coding=3), link=LINK, bucket=BUCKET)
    assert part.data_coding == 3
    assert assemble([part]) == (text, True)


def test_message_payload_tlv_wins_over_short_message() -> None:
    text = LONG_VI  # longer than any short_message could hold as UCS-2
    raw = text.encode("utf-16-be", errors="surrogatepass")
    assert len(raw) > 254
    part = part_from_pdu(_pdu(b"", data_coding=8, message_payload=raw), link=LINK,
                         bucket=BUCKET)
    assert (part.ref, part.total, part.seq) == (None, 1, 1)
    assert assemble([part]) == (text, True)


def test_message_payload_with_a_udh() -> None:
    body = "phần hai".encode("utf-16-be")
    part = part_from_pdu(_pdu(b"", esm_class=0x40, data_coding=8,
                              message_payload=_udh8(9, 2, 2) + body), link=LINK, bucket=BUCKET)
    assert (part.ref, part.total, part.seq, part.payload) == (9, 2, 2, body)


def test_udh_with_one_part_or_without_concatenation_is_a_single_part() -> None:
    one = part_from_pdu(_pdu(_udh8(4, 1, 1) + b"hi", esm_class=0x40), link=LINK, bucket=BUCKET)
    assert (one.ref, one.total, one.seq, one.payload) == (None, 1, 1, b"hi")
    # a port-addressing IE (0x05) only: header removed, no concatenation
    port = part_from_pdu(_pdu(bytes((6, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0)) + b"ok",
                              esm_class=0x40), link=LINK, bucket=BUCKET)
    assert (port.ref, port.total, port.payload) == (None, 1, b"ok")
    # a header whose length runs past the message: the whole message is text
    bad = part_from_pdu(_pdu(b"\x30abc", esm_class=0x40), link=LINK, bucket=BUCKET)
    assert (bad.total, bad.payload) == (1, b"\x30abc")


def test_nul_characters_are_replaced() -> None:
    part = part_from_pdu(_pdu("a\x00b".encode("utf-16-be"), data_coding=8), link=LINK,
                         bucket=BUCKET)
    assert assemble([part]) == ("a\ufffdb", True)


# --------------------------------------------------------------------------- concatenation


def test_udh_8bit_reference() -> None:
    parts = _parts_of(_multipart(LONG_GSM, ref=7))
    assert len(parts) == 2
    assert [(p.ref, p.total, p.seq) for p in parts] == [(7, 2, 1), (7, 2, 2)]
    assert all(p.data_coding == 0 for p in parts)
    assert assemble(parts) == (LONG_GSM, True)


def test_udh_16bit_reference() -> None:
    parts = _parts_of(_multipart(LONG_VI, ref=0x1234))
    assert len(parts) == 3
    assert [(p.ref, p.total, p.seq) for p in parts] == [(0x1234, 3, s) for s in (1, 2, 3)]
    assert all(p.data_coding == 8 for p in parts)
    assert assemble(parts) == (LONG_VI, True)


def test_sar_tlvs() -> None:
    enc = encode_message(LONG_VI, ref=1)
    payloads = [p[6:] for p in enc.parts]  # strip the 8-bit UDH: SAR carries it in TLVs
    pdus = [_pdu(p, sequence=10 + seq, data_coding=8, sar_msg_ref_num=513,
                 sar_total_segments=len(payloads), sar_segment_seqnum=seq)
            for seq, p in enumerate(payloads, start=1)]
    parts = _parts_of(pdus)
    assert [(p.ref, p.total, p.seq) for p in parts] == [(513, 3, 1), (513, 3, 2), (513, 3, 3)]
    assert assemble(parts) == (LONG_VI, True)


def test_sar_tlvs_out_of_range_make_a_single_part() -> None:
    part = part_from_pdu(_pdu(b"abc", sar_msg_ref_num=5, sar_total_segments=2,
                              sar_segment_seqnum=3), link=LINK, bucket=BUCKET)
    assert (part.ref, part.total, part.seq) == (None, 1, 1)


def test_out_of_order_assembly() -> None:
    parts = _parts_of(_multipart(LONG_VI, ref=42))
    shuffled = [parts[2], parts[0], parts[1]]
    assert assemble(shuffled) == (LONG_VI, True)
    assert assemble(list(reversed(parts))) == (LONG_VI, True)


def test_incomplete_assembly_missing_middle_part() -> None:
    parts = _parts_of(_multipart(LONG_VI, ref=43))
    first, middle, last = (assemble([p])[0] for p in parts)
    text, complete = assemble([parts[2], parts[0]])
    assert not complete
    assert text == first + last
    assert middle not in text


def test_duplicate_seq_counts_once() -> None:
    parts = _parts_of(_multipart(LONG_GSM, ref=8))
    assert assemble([parts[1], parts[0], parts[1]]) == (LONG_GSM, True)
    assert assemble([parts[1], parts[1]])[1] is False


def test_ucs2_surrogate_pair_split_across_two_parts() -> None:
    text = "Chúc mừng năm mới 🎉 nhé"
    raw = text.encode("utf-16-be", errors="surrogatepass")
    cut = raw.index("🎉".encode("utf-16-be", errors="surrogatepass")) + 2  # inside the pair
    pdus = [_pdu(_udh8(77, 2, 1) + raw[:cut], esm_class=0x40, data_coding=8),
            _pdu(_udh8(77, 2, 2) + raw[cut:], esm_class=0x40, data_coding=8, sequence=2)]
    parts = _parts_of(pdus)
    assert assemble(parts) == (text, True)
    assert assemble(list(reversed(parts))) == (text, True)
    # each half alone cannot show the emoji (and must not raise)
    assert "🎉" not in assemble([parts[0]])[0]


def test_gsm7_escape_split_across_two_parts() -> None:
    raw = encode_message("Gia 100€ nhe", ref=0).parts[0]
    cut = raw.index(0x1B) + 1  # the escape ends part 1, the € code starts part 2
    pdus = [_pdu(_udh8(3, 2, 1) + raw[:cut], esm_class=0x40),
            _pdu(_udh8(3, 2, 2) + raw[cut:], esm_class=0x40, sequence=2)]
    assert assemble(_parts_of(pdus)) == ("Gia 100€ nhe", True)


def test_mixed_data_codings_decode_each_run() -> None:
    a = part_from_pdu(_pdu(_udh8(5, 2, 1) + b"Hello ", esm_class=0x40), link=LINK,
                      bucket=BUCKET)
    b = part_from_pdu(_pdu(_udh8(5, 2, 2) + "bạn".encode("utf-16-be"), esm_class=0x40,
                           data_coding=8), link=LINK, bucket=BUCKET)
    assert assemble([b, a]) == ("Hello bạn", True)


def test_assemble_nothing() -> None:
    assert assemble([]) == ("", False)


# --------------------------------------------------------------------------- dedupe keys


def test_dedupe_key_equal_for_a_redelivery_with_another_sequence() -> None:
    enc = encode_message("KT", ref=0)
    first = part_from_pdu(_pdu(enc.parts[0], sequence=17), link=LINK, bucket=BUCKET)
    again = part_from_pdu(_pdu(enc.parts[0], sequence=9001), link=LINK, bucket=BUCKET)
    assert first == again
    assert len(first.dedupe_key) == 64


def test_dedupe_key_differs_by_time_bucket_and_content() -> None:
    pdu = _pdu(b"KT")
    key = part_from_pdu(pdu, link=LINK, bucket=BUCKET).dedupe_key
    assert part_from_pdu(pdu, link=LINK, bucket=BUCKET + 1).dedupe_key != key
    assert part_from_pdu(pdu, link="mobifone", bucket=BUCKET).dedupe_key != key
    assert part_from_pdu(_pdu(b"KT "), link=LINK, bucket=BUCKET).dedupe_key != key
    assert part_from_pdu(_pdu(b"KT", source="84901234568"), link=LINK,
                         bucket=BUCKET).dedupe_key != key
    assert part_from_pdu(_pdu(b"KT", data_coding=3), link=LINK,
                         bucket=BUCKET).dedupe_key != key
    parts = _parts_of(_multipart(LONG_GSM, ref=9))
    assert parts[0].dedupe_key != parts[1].dedupe_key
    other_ref = _parts_of(_multipart(LONG_GSM, ref=10))
    assert other_ref[0].dedupe_key != parts[0].dedupe_key


def test_time_bucket() -> None:
    assert time_bucket(0.0) == 0
    assert time_bucket(599.9) == 0 and time_bucket(600.0) == 1
    assert time_bucket(1234.0, 10) == 123
    with pytest.raises(ValueError):
        time_bucket(1.0, 0)


# --------------------------------------------------------------------------- MoReceiver


class FakeStore:
    """Stands in for InboundStore: records calls, or fails like the database would."""

    def __init__(self, *, fail: BaseException | None = None, delay: float = 0.0) -> None:
        self.fail = fail
        self.delay = delay
        self.keys: set[str] = set()
        self.calls: list[tuple[MoPart, tuple[str, ...]]] = []
        self.flushed: list[float] = []

    async def store_part(self, part: MoPart, *,
                         earlier_keys: Sequence[str] = ()) -> tuple[bool, UUID | None]:
        self.calls.append((part, tuple(earlier_keys)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if self.keys & {part.dedupe_key, *earlier_keys}:
            return False, None
        self.keys.add(part.dedupe_key)
        return True, uuid4() if part.total == 1 else None

    async def flush_incomplete(self, older_than_s: float) -> list[UUID]:
        self.flushed.append(older_than_s)
        return [uuid4()]


def _receiver(store: FakeStore, now: list[float], **kw: Any) -> MoReceiver:
    fake: InboundStore = store  # type: ignore[assignment]
    return MoReceiver(fake, bucket_s=600, clock=lambda: now[0], **kw)


async def test_receiver_acknowledges_after_storing_and_dedupes_across_a_window_edge(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="smsgw")
    store = FakeStore()
    now = [600.0 * BUCKET + 599.0]  # one second before the window ends
    rx = _receiver(store, now)
    text = "Toi can ho tro gap"
    pdu = _pdu(encode_message(text, ref=0).parts[0], sequence=5)
    assert await rx.on_mo(pdu, link=LINK) == ESME_ROK
    part, earlier = store.calls[0]
    assert part == part_from_pdu(pdu, link=LINK, bucket=BUCKET)
    assert earlier == (part_from_pdu(pdu, link=LINK, bucket=BUCKET - 1).dedupe_key,)
    now[0] += 30  # redelivered in the next window, with another sequence number
    assert await rx.on_mo(_pdu(pdu.get("short_message"), sequence=77), link=LINK) == ESME_ROK
    assert len(store.keys) == 1  # recognised through the previous window's key
    now[0] += 1200  # two windows later: the same text is a new message
    assert await rx.on_mo(pdu, link=LINK) == ESME_ROK
    assert len(store.keys) == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SOURCE not in logged and text not in logged
    assert "84901***567" in logged


@pytest.mark.parametrize("error", [
    # as the server sends it: str() of this one quotes the row in its DETAIL
    asyncpg.PostgresError.new({"C": "23514", "M": "new row violates check constraint",
                               "D": "Failing row contains (secret)."}),
    asyncpg.InterfaceError("pool is closing"),
    ConnectionRefusedError("refused"),
])
async def test_receiver_answers_temporary_error_when_the_database_fails(
        error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="smsgw")
    rx = _receiver(FakeStore(fail=error), [0.0])
    assert await rx.on_mo(_pdu(b"secret"), link=LINK) == ESME_RX_T_APPN == 0x64
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ESME_RX_T_APPN" in logged and "secret" not in logged and SOURCE not in logged
    if isinstance(error, asyncpg.PostgresError):
        assert "23514" in logged and "new row violates check constraint" in logged


async def test_receiver_answers_temporary_error_when_the_database_hangs() -> None:
    rx = _receiver(FakeStore(delay=5), [0.0], timeout_s=0.05)
    assert await rx.on_mo(_pdu(b"hello"), link=LINK) == ESME_RX_T_APPN


async def test_receiver_lets_our_own_bugs_propagate() -> None:
    rx = _receiver(FakeStore(fail=KeyError("bug")), [0.0])
    with pytest.raises(KeyError):  # EsmeClient answers ESME_RX_T_APPN and logs the traceback
        await rx.on_mo(_pdu(b"hello"), link=LINK)


async def test_on_mo_fits_the_sender_hook() -> None:
    store = FakeStore()
    handler: MoHandler = _receiver(store, [0.0]).on_mo  # what service.py passes to Sender
    assert await handler(_pdu(b"hello"), "mobifone") == ESME_ROK
    assert store.calls[0][0].link == "mobifone"


async def test_sweep_flushes_through_the_store() -> None:
    store = FakeStore()
    ids = await _receiver(store, [0.0]).sweep(0)
    assert len(ids) == 1 and store.flushed == [0]


def test_receiver_refuses_a_bad_bucket() -> None:
    with pytest.raises(ValueError):
        MoReceiver(FakeStore(), bucket_s=0)  # type: ignore[arg-type]
