"""Log output: text and JSON lines, and the net that masks phone numbers (gateway/logsetup.py)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.logsetup import MaskNumbersFilter, configure_logging, mask_numbers

Setup = Callable[..., io.StringIO]


@pytest.fixture
def setup_logging() -> Iterator[Setup]:
    """configure_logging onto a buffer; the root logger is put back afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    installed: list[logging.Handler] = []

    def setup(level: str = "INFO", fmt: str = "text") -> io.StringIO:
        buf = io.StringIO()
        installed.append(configure_logging(level, fmt, stream=buf))
        return buf

    yield setup
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)
    assert root.handlers == handlers


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_extra(setup_logging: Setup) -> None:
    buf = setup_logging("INFO", "json")
    log = logging.getLogger("smsgw.test.json")
    before = datetime.now(UTC)
    log.info("message %s queued (%d part(s))", "6f1c3d2e-7a9b-4c1d-8e2f-0a1b2c3d4e5f", 2,
             extra={"link": "viettel-1", "segments": 2, "ts": "mine"})
    log.warning("two\nlines and Tiếng Việt")
    log.debug("not at INFO")
    first, second = _lines(buf)
    assert first["level"] == "INFO" and first["logger"] == "smsgw.test.json"
    assert first["message"] == "message 6f1c3d2e-7a9b-4c1d-8e2f-0a1b2c3d4e5f queued (2 part(s))"
    assert first["link"] == "viettel-1" and first["segments"] == 2
    assert first["extra_ts"] == "mine"  # an extra field never replaces a standard one
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    ts = datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= ts <= datetime.now(UTC)
    assert second["level"] == "WARNING" and second["message"] == "two\nlines and Tiếng Việt"
    assert "exc_info" not in first and "exc_info" not in second


def test_json_line_carries_the_traceback(setup_logging: Setup) -> None:
    buf = setup_logging("INFO", "json")
    try:
        raise RuntimeError("Key (msisdn)=(84901234567) already exists")
    except RuntimeError:
        logging.getLogger("smsgw.test.exc").exception("insert failed")
    (line,) = _lines(buf)
    assert line["level"] == "ERROR" and line["message"] == "insert failed"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: Key (msisdn)=(84901***567) already exists" in line["exc_info"]
    assert "84901234567" not in buf.getvalue()


def test_text_format_is_unchanged(setup_logging: Setup) -> None:
    buf = setup_logging("warning", "text")
    log = logging.getLogger("smsgw.test.text")
    log.info("below the level")
    log.warning("link %s down", "default")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING smsgw\.test\.text: "
                        r"link default down\n", buf.getvalue())


def test_numbers_are_masked_at_info_and_above_in_both_formats(setup_logging: Setup) -> None:
    for fmt in ("text", "json"):
        buf = setup_logging("DEBUG", fmt)
        log = logging.getLogger(f"smsgw.test.mask.{fmt}")
        log.info("reply to %s", "84901234567")
        log.error("from +84912345678 and 0987654321", extra={"to": "84331234567"})
        log.debug("debug keeps %s", "84901234567")
        out = buf.getvalue()
        assert "reply to 84901***567" in out
        assert "from +84912***678 and 09876***321" in out
        assert "debug keeps 84901234567" in out
        if fmt == "json":  # the text format does not show extra fields
            assert _lines(buf)[1]["to"] == "84331***567"


@pytest.mark.parametrize(("text", "masked"), [
    ("84901234567", "84901***567"),
    ("to=84901234567;", "to=84901***567;"),
    ("+84 gọi +84981234567.", "+84 gọi +84981***567."),
    ("SĐT 0359876543, 0701234567", "SĐT 03598***543, 07012***567"),
    # not a whole Vietnamese mobile number: left alone
    ("6f1c3d2e-7a9b-4c1d-8e2f-084901234567", "6f1c3d2e-7a9b-4c1d-8e2f-084901234567"),
    ("smsc id 184901234567 / 8490123456789", "smsc id 184901234567 / 8490123456789"),
    ("a84901234567 84201234567 0201234567", "a84901234567 84201234567 0201234567"),
    ("already 84901***567", "already 84901***567"),
    ("1250000 VND, 3 parts", "1250000 VND, 3 parts"),
])
def test_mask_numbers(text: str, masked: str) -> None:
    assert mask_numbers(text) == masked


def test_filter_leaves_records_without_numbers_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "queued %s (%d)", ("care", 3),
                               None)
    assert MaskNumbersFilter().filter(record)
    assert record.msg == "queued %s (%d)" and record.args == ("care", 3)
    broken = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert MaskNumbersFilter().filter(broken)  # the handler reports it, not the caller


def test_configure_twice_replaces_the_handler_and_refuses_unknown_formats(
        setup_logging: Setup) -> None:
    first = setup_logging("INFO", "text")
    second = setup_logging("INFO", "json")
    logging.getLogger("smsgw.test.twice").info("once")
    assert first.getvalue() == "" and _lines(second)[0]["message"] == "once"
    with pytest.raises(ValueError, match=r"log\.format"):
        configure_logging("INFO", "xml")
