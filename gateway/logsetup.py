"""Logging for every ``smsgw`` process: text or JSON lines on stderr, phone numbers masked.

``configure_logging(level, fmt)`` installs one stderr handler on the root logger:

* ``text``: ``2026-05-01 08:00:00,123 INFO    smsgw.intake: message … queued`` (as before);
* ``json``: one object per line -- ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``message``,
  ``exc_info`` (the traceback text) when there is one, and any ``extra={…}`` fields.

Either way the handler carries :class:`MaskNumbersFilter`: a Vietnamese mobile number that
slipped into a record at INFO or above (``84901234567``, ``+84901234567``, ``0901234567``)
is written masked (``84901***567``). Code should still mask what it logs
(:func:`gateway.masking.mask_msisdn`); this is the net under it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.masking import mask_msisdn

#: Values of ``log.format``.
FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# A whole Vietnamese mobile number: 84 (optionally +84) or 0, then 9 digits starting with a
# mobile range's first digit (03x, 05x, 07x, 08x, 09x). Not inside a longer word or number,
# so UUIDs, hex SMSC ids and longer decimal ids are left alone.
MOBILE_NUMBER_RE = re.compile(r"(?<!\w)(\+?)((?:84|0)[35789][0-9]{8})(?!\w)")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_PLAIN_RECORD = vars(logging.LogRecord("", 0, "", 0, "", None, None))
_RECORD_ATTRS = frozenset(_PLAIN_RECORD) | {"message", "asctime", "taskName"}

# Marks the handler configure_logging installed, so a second call replaces it.
_OURS = "_smsgw_handler"


def _mask_match(match: re.Match[str]) -> str:
    return match.group(1) + mask_msisdn(match.group(2))


def mask_numbers(text: str) -> str:
    """``text`` with every whole Vietnamese mobile number masked (``84901***567``)."""
    return MOBILE_NUMBER_RE.sub(_mask_match, text)


class MaskNumbersFilter(logging.Filter):
    """Masks mobile numbers in records at ``min_level`` and above; never drops a record.

    Cheap: one regular-expression scan of the formatted message; the record is only changed
    when a number was found (then ``msg`` holds the masked text and ``args`` is cleared).
    A traceback, stack and string ``extra`` fields are scanned too.
    """

    def __init__(self, min_level: int = logging.INFO) -> None:
        super().__init__()
        self.min_level = min_level
        self._exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: leave the record to the handler's handleError
            return True
        masked, found = MOBILE_NUMBER_RE.subn(_mask_match, message)
        if found:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_numbers(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_numbers(record.stack_info)
        if len(record.__dict__) > len(_PLAIN_RECORD):  # perhaps extra= fields
            for key in record.__dict__.keys() - _RECORD_ATTRS:
                value = record.__dict__[key]
                if isinstance(value, str):
                    record.__dict__[key] = mask_numbers(value)
        return True


def _utc_iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                out[f"extra_{key}" if key in out else key] = value
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str = "text", *,
                      stream: TextIO | None = None) -> logging.Handler:
    """Log to ``stream`` (default stderr) at ``level`` in ``fmt`` ("text" or "json").

    Replaces the handler an earlier call installed and leaves other handlers alone. An
    unknown level name means INFO (as before); an unknown format is a ValueError.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log.format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(MaskNumbersFilter())
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping().get(level.upper(), logging.INFO))
    logging.getLogger("arq").setLevel(logging.WARNING)
    logging.getLogger("arq.connections").setLevel(logging.ERROR)  # we report Redis ourselves
    return handler
