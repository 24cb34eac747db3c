"""Survey replies (classify_reply), the reply window, answer checks, and the MO hook."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from gateway.intake import IntakeError
from gateway.mo import ESME_ROK, MoReceiver
from gateway.smpp import codec
from gateway.store.inbound import InboundMessage
from gateway.surveys import (
    check_answers,
    classify_reply,
    fold,
    in_reply_window,
    reply_deadline,
)

FIVE = ("1", "2", "3", "4", "5")


@pytest.mark.parametrize(("text", "expected"), [
    ("5", ("5", None)),
    (" 5", ("5", None)),
    (" 5 \n", ("5", None)),
    ("５", ("5", None)),  # full-width digit (NFKC)
    ("5.", ("5", None)),
    ("5!", ("5", None)),
    ("\"5\"", ("5", None)),
    ("5 rat hai long", ("5", "rat hai long")),
    ("5 - rất   hài lòng", ("5", "rất hài lòng")),
    ("5,nhan vien nhiet tinh", ("5", "nhan vien nhiet tinh")),
    ("hai long", (None, "hai long")),
    ("Rất   hài lòng", (None, "Rất hài lòng")),
    ("6", (None, "6")),
    ("55", (None, "55")),
    ("5k", (None, "5k")),
    ("0", (None, "0")),
    ("", (None, None)),
    ("   ", (None, None)),
])
def test_classify_reply_digits(text: str, expected: tuple[str | None, str | None]) -> None:
    assert classify_reply(text, FIVE) == expected


def test_classify_reply_words_ignore_case_and_diacritics() -> None:
    answers = ("Có", "Không")
    assert classify_reply("co", answers) == ("Có", None)
    assert classify_reply("KHÔNG", answers) == ("Không", None)
    assert classify_reply("khong, cam on", answers) == ("Không", "cam on")
    assert classify_reply("có lẽ", answers) == ("Có", "lẽ")  # lexical: "maybe" reads as Có
    assert classify_reply("coi lai", answers) == (None, "coi lai")


def test_classify_reply_prefers_the_longest_answer() -> None:
    assert classify_reply("10", [str(i) for i in range(1, 11)]) == ("10", None)
    assert classify_reply("rat tot lam", ("Tot", "Rat tot")) == ("Rat tot", "lam")
    assert classify_reply("1 0", [str(i) for i in range(1, 11)]) == ("1", "0")


def test_fold() -> None:
    assert fold("  Rất   hài lòng ") == "RAT HAI LONG"
    assert fold("Đồng ý") == "DONG Y"
    assert fold("５") == "5"


def test_reply_window_bounds() -> None:
    sent = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    assert reply_deadline(sent, 3600) == sent + timedelta(hours=1)
    assert in_reply_window(sent, 3600, sent)
    assert in_reply_window(sent, 3600, sent + timedelta(minutes=30))
    assert in_reply_window(sent, 3600, sent + timedelta(hours=1))
    assert not in_reply_window(sent, 3600, sent + timedelta(hours=1, seconds=1))
    assert not in_reply_window(sent, 3600, sent - timedelta(seconds=1))


def test_check_answers() -> None:
    assert check_answers([" 1", "2 "]) == ("1", "2")
    assert check_answers(["Rất  tốt", "Tốt"]) == ("Rất tốt", "Tốt")
    for bad in ([], ["1", ""], ["Có", "co"], ["x" * 51], [str(i) for i in range(21)]):
        with pytest.raises(IntakeError) as err:
            check_answers(bad)
        assert err.value.field == "answers"


# --- the MoReceiver on_message hook ---------------------------------------------------------


class HookStore:
    """Just enough of InboundStore: every part completes a message."""

    def __init__(self) -> None:
        self.messages: dict[UUID, InboundMessage] = {}
        self.flushed: list[UUID] = []

    async def store_part(self, part: Any, *, earlier_keys: Any = ()) -> tuple[bool, UUID]:
        mid = uuid4()
        now = datetime.now(UTC)
        self.messages[mid] = InboundMessage(
            id=mid, link="l", source=part.source, destination=part.destination,
            text=part.payload.decode(), data_coding=0, parts_expected=1, parts_received=1,
            complete=True, received_at=now, completed_at=now, created_at=now,
            handled_at=None, keyword=None)
        return True, mid

    async def flush_incomplete(self, older_than_s: float) -> list[UUID]:
        return self.flushed

    async def get(self, message_id: UUID) -> InboundMessage | None:
        return self.messages.get(message_id)


def _mo(text: bytes) -> codec.Pdu:
    return codec.decode(codec.encode(
        "deliver_sm", sequence=1, source_addr="84901234567", source_addr_ton=1,
        source_addr_npi=1, destination_addr="8079", esm_class=0, data_coding=0,
        short_message=text))


async def test_on_message_gets_the_stored_message_and_errors_do_not_change_the_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    store = HookStore()
    seen: list[InboundMessage] = []

    async def hook(message: InboundMessage) -> None:
        seen.append(message)
        if message.text == "boom":
            raise RuntimeError("hook bug")

    rx = MoReceiver(store, on_message=hook)  # type: ignore[arg-type]
    assert await rx.on_mo(_mo(b"5"), "l") == ESME_ROK
    with caplog.at_level(logging.ERROR, logger="smsgw.mo"):
        assert await rx.on_mo(_mo(b"boom"), "l") == ESME_ROK
        await rx.wait_hooks()
    assert [m.text for m in seen] == ["5", "boom"]
    assert "on_message hook failed" in caplog.text


async def test_a_slow_hook_does_not_delay_the_answer() -> None:
    store = HookStore()
    release = asyncio.Event()

    async def hook(message: InboundMessage) -> None:
        await release.wait()

    rx = MoReceiver(store, on_message=hook)  # type: ignore[arg-type]
    assert await asyncio.wait_for(rx.on_mo(_mo(b"4"), "l"), 1) == ESME_ROK
    release.set()
    await asyncio.wait_for(rx.wait_hooks(), 1)


async def test_sweep_calls_the_hook_for_flushed_messages() -> None:
    store = HookStore()
    await store.store_part(_FakePart())
    store.flushed = list(store.messages)
    seen: list[UUID] = []

    async def hook(message: InboundMessage) -> None:
        seen.append(message.id)

    rx = MoReceiver(store)  # type: ignore[arg-type]
    assert await rx.sweep(0) == store.flushed and seen == []  # no hook: unchanged
    rx.on_message = hook
    assert await rx.sweep(0) == store.flushed
    assert seen == store.flushed


class _FakePart:
    source = "84901234567"
    destination = "8079"
    payload = b"3 tam duoc"
