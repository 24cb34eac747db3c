"""Delivery receipt parsing / formatting and SMSC message-id matching."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import MessageStatus
from gateway.smpp import receipts
from gateway.smpp.receipts import (
    MESSAGE_STATE_TLV,
    Receipt,
    ReceiptState,
    canonical_id,
    format_receipt_text,
    id_candidates,
    message_status_for,
    parse_receipt,
)

STANDARD = (
    b"id:0A1B2C sub:001 dlvrd:001 submit date:2410011200 done date:2410011201"
    b" stat:DELIVRD err:000 text:Chuc mung sinh nhat"
)


# --------------------------------------------------------------------------- states


def test_state_values_are_smpp_names() -> None:
    assert {s.value for s in ReceiptState} == {
        "DELIVRD",
        "EXPIRED",
        "DELETED",
        "UNDELIV",
        "ACCEPTD",
        "UNKNOWN",
        "REJECTD",
        "ENROUTE",
    }


@pytest.mark.parametrize(
    ("value", "state"),
    [
        (1, ReceiptState.ENROUTE),
        (2, ReceiptState.DELIVRD),
        (3, ReceiptState.EXPIRED),
        (4, ReceiptState.DELETED),
        (5, ReceiptState.UNDELIV),
        (6, ReceiptState.ACCEPTD),
        (7, ReceiptState.UNKNOWN),
        (8, ReceiptState.REJECTD),
    ],
)
def test_message_state_tlv_mapping(value: int, state: ReceiptState) -> None:
    assert MESSAGE_STATE_TLV[value] is state
    receipt = parse_receipt(b"", receipted_message_id="abc", message_state=value)
    assert receipt is not None
    assert receipt.state is state
    assert receipt.source == "tlv"


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (ReceiptState.DELIVRD, MessageStatus.DELIVERED),
        (ReceiptState.EXPIRED, MessageStatus.EXPIRED),
        (ReceiptState.UNDELIV, MessageStatus.UNDELIVERED),
        (ReceiptState.DELETED, MessageStatus.UNDELIVERED),
        (ReceiptState.REJECTD, MessageStatus.UNDELIVERED),
        (ReceiptState.UNKNOWN, MessageStatus.UNDELIVERED),
        (ReceiptState.ENROUTE, None),
        (ReceiptState.ACCEPTD, None),
    ],
)
def test_message_status_for(state: ReceiptState, status: MessageStatus | None) -> None:
    assert message_status_for(state) == status


# --------------------------------------------------------------------------- parsing


def test_standard_text_receipt() -> None:
    assert parse_receipt(STANDARD) == Receipt(
        message_id="0A1B2C",
        state=ReceiptState.DELIVRD,
        error="000",
        submit_date="2410011200",
        done_date="2410011201",
        text="Chuc mung sinh nhat",
        source="text",
    )


def test_tlv_wins_over_text() -> None:
    receipt = parse_receipt(STANDARD, receipted_message_id=b"FFFF\x00", message_state=5)
    assert receipt is not None
    assert receipt.message_id == "FFFF"
    assert receipt.state is ReceiptState.UNDELIV
    assert receipt.source == "tlv"
    # the rest still comes from the text
    assert receipt.error == "000"
    assert receipt.done_date == "2410011201"


def test_mixed_sources() -> None:
    only_id = parse_receipt(STANDARD, receipted_message_id="  77  ")
    assert only_id is not None
    assert only_id.message_id == "77"
    assert only_id.state is ReceiptState.DELIVRD
    assert only_id.source == "tlv+text"
    only_state = parse_receipt(STANDARD, message_state=3)
    assert only_state is not None
    assert only_state.message_id == "0A1B2C"
    assert only_state.state is ReceiptState.EXPIRED
    assert only_state.source == "tlv+text"


def test_invalid_message_state_tlv_falls_back_to_text() -> None:
    receipt = parse_receipt(STANDARD, message_state=0)
    assert receipt is not None
    assert receipt.state is ReceiptState.DELIVRD
    assert receipt.source == "text"


def test_capitalised_keys() -> None:
    data = (
        b"Id:12345 Sub:001 Dlvrd:001 Submit Date:2410011200 Done Date:2410011201"
        b" Stat:UNDELIV Err:034 Text:Hello"
    )
    receipt = parse_receipt(data)
    assert receipt is not None
    assert receipt.message_id == "12345"
    assert receipt.state is ReceiptState.UNDELIV
    assert receipt.error == "034"
    assert receipt.submit_date == "2410011200"
    assert receipt.done_date == "2410011201"
    assert receipt.text == "Hello"


def test_missing_sub_dlvrd_and_extra_spaces() -> None:
    data = b"id: abc123   submit date: 2410011200  done date:2410011201  stat: EXPIRED  err:001"
    receipt = parse_receipt(data)
    assert receipt is not None
    assert receipt.message_id == "abc123"
    assert receipt.state is ReceiptState.EXPIRED
    assert receipt.submit_date == "2410011200"
    assert receipt.done_date == "2410011201"
    assert receipt.error == "001"
    assert receipt.text is None


def test_text_field_keeps_colons_and_keywords() -> None:
    data = b"id:9 stat:DELIVRD err:000 text:Ma OTP: 1234 stat:REJECTD id:1"
    receipt = parse_receipt(data)
    assert receipt is not None
    assert receipt.message_id == "9"
    assert receipt.state is ReceiptState.DELIVRD
    assert receipt.text == "Ma OTP: 1234 stat:REJECTD id:1"


def test_unknown_stat_is_unknown() -> None:
    receipt = parse_receipt(b"id:1 stat:WHATEVER err:000")
    assert receipt is not None
    assert receipt.state is ReceiptState.UNKNOWN


def test_long_state_names_and_lowercase() -> None:
    for word, state in [
        ("delivered", ReceiptState.DELIVRD),
        ("Undeliverable", ReceiptState.UNDELIV),
        ("rejectd", ReceiptState.REJECTD),
    ]:
        receipt = parse_receipt(f"id:1 stat:{word}".encode())
        assert receipt is not None
        assert receipt.state is state


def test_id_without_state_is_unknown() -> None:
    receipt = parse_receipt(b"id:42 err:000")
    assert receipt is not None
    assert receipt.state is ReceiptState.UNKNOWN


@pytest.mark.parametrize(
    "data",
    [b"", b"hello there", b"\x00\xff\xfe garbage: 1", b"valid:1 identity:2", b"id: stat: err:"],
)
def test_garbage_is_none(data: bytes) -> None:
    assert parse_receipt(data) is None


def test_non_latin1_bytes_never_raise() -> None:
    receipt = parse_receipt(bytes(range(256)) + b" id:5 stat:DELIVRD")
    assert receipt is not None
    assert receipt.message_id == "5"


def test_trailing_nul_is_ignored() -> None:
    receipt = parse_receipt(b"id:5 stat:DELIVRD err:000 text:ok\x00")
    assert receipt is not None
    assert receipt.text == "ok"


# --------------------------------------------------------------------------- formatting


def test_format_receipt_text_layout() -> None:
    data = format_receipt_text(
        message_id="abc",
        state=ReceiptState.DELIVRD,
        submit_date=datetime(2024, 10, 1, 12, 0),
        done_date=datetime(2024, 10, 1, 12, 5, 59),
        text="Chúc mừng sinh nhật bạn, chúc vui!",
    )
    assert data == (
        b"id:abc sub:001 dlvrd:001 submit date:2410011200 done date:2410011205"
        b" stat:DELIVRD err:000 text:Ch\xfac m?ng sinh nh?t "
    )


def test_format_delivered_count_defaults() -> None:
    data = format_receipt_text(
        message_id="1",
        state=ReceiptState.UNDELIV,
        submit_date=datetime(2024, 1, 2, 3, 4),
        done_date=datetime(2024, 1, 2, 3, 5),
        err="034",
        submitted=2,
    )
    assert b"sub:002 dlvrd:000 " in data
    assert b"err:034" in data


def test_format_parse_round_trip() -> None:
    for state in ReceiptState:
        data = format_receipt_text(
            message_id="7F3A9C",
            state=state,
            submit_date=datetime(2025, 12, 31, 23, 59),
            done_date=datetime(2026, 1, 1, 0, 1),
            err="000",
            text="Ma: 1234 text:x",
        )
        receipt = parse_receipt(data)
        assert receipt == Receipt(
            message_id="7F3A9C",
            state=state,
            error="000",
            submit_date="2512312359",
            done_date="2601010001",
            text="Ma: 1234 text:x",
            source="text",
        )


# --------------------------------------------------------------------------- message ids


def test_canonical_id() -> None:
    assert canonical_id("  0001A2B ") == "1a2b"
    assert canonical_id(b"0001A2B\x00") == "1a2b"
    assert canonical_id("0") == "0"
    assert canonical_id("0000") == "0"
    assert canonical_id("") == ""
    assert canonical_id("abc-DEF") == "abc-def"


def test_id_candidates() -> None:
    assert id_candidates("0001A2B") == ("1a2b", "6699")
    candidates = id_candidates("12345")
    assert candidates[0] == "12345"
    assert "3039" in candidates
    assert candidates == ("12345", "3039", "74565")
    assert id_candidates(b"ff\x00") == ("ff", "255")
    assert id_candidates("0") == ("0",)  # hex and decimal forms coincide
    assert id_candidates("10") == ("10", "a", "16")
    assert id_candidates("msg-1") == ("msg-1",)
    assert id_candidates("   ") == ()


def test_id_candidates_match_across_representations() -> None:
    stored_hex = canonical_id("00000000A1B2C3D4")
    receipt_decimal = str(0xA1B2C3D4)
    assert stored_hex in id_candidates(receipt_decimal)
    stored_decimal = canonical_id(str(0xA1B2C3D4))
    assert stored_decimal in id_candidates("A1B2C3D4")


def test_id_candidates_huge_ids_do_not_raise() -> None:
    assert id_candidates("9" * 5000) == ("9" * 5000,)


_VALUE = st.text(alphabet="0123456789abcdefABCDEF-_x:. ", min_size=0, max_size=12)


@settings(max_examples=1500, deadline=None)
@given(values=st.lists(_VALUE, min_size=7, max_size=7),
       tail=st.one_of(st.none(), st.text(max_size=30)), text_key=st.sampled_from(["text", "Text"]))
def test_standard_layout_fast_path_reads_as_the_general_parser(
        values: list[str], tail: str | None, text_key: str) -> None:
    keys = ("id", "sub", "dlvrd", "submit date", "done date", "stat", "err")
    text = " ".join(f"{k}:{v}" for k, v in zip(keys, values, strict=True))
    if tail is not None:
        text += f" {text_key}:{tail}"
    assert receipts._parse_text(text) == receipts._parse_text_general(text)
