"""Campaign uploads: a CSV or XLSX list of recipients → held messages, streamed.

The file is read once, row by row, in a worker thread (the HTTP server keeps serving): each
row's number is normalised, its columns become the template's variables, the message is
rendered, labelled ([QC] … refusal) when it is advertising, and measured (encoding,
segments). Rows go to Postgres through COPY in chunks while the rest is still being read, so
a million-row file never sits in memory: what is kept is one integer per distinct number (to
find repeats) and the rejected rows.

A number given twice is sent once, to the **last** row that has it (the marketing team's
later line is the corrected one); the earlier rows are reported as duplicates. Rows that
cannot be used are reported with their line, value and reason while the good rows go on.
A file that cannot be used at all raises :class:`UploadError` before anything is written.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from gateway.domain import Encoding, MessageClass, Priority
from gateway.intake import MAX_SEGMENTS
from gateway.masking import mask_msisdn
from gateway.numbers import _SEPARATORS, VN_MOBILE_PREFIXES
from gateway.smpp.encoding import khong_dau as strip_diacritics
from gateway.smpp.encoding import quick_count
from gateway.store.campaigns import UploadTail
from gateway.subscribers_import import (
    _PLAIN_VN_MOBILE,
    FIELD_ALIASES,
    ImportFileError,
    _BadValue,
    _csv_rows,
    _is_blank,
    _shown,
    _text,
    _xlsx_rows,
    check_text,
    detect_format,
    header_key,
    parse_msisdn,
)
from gateway.templating import TemplateError, tidy_text

log = logging.getLogger("smsgw.campaign_ingest")

CHUNK = 5000
_SAVE_AS = "save it from Excel as 'CSV UTF-8 (Comma delimited)' or as .xlsx"


class UploadError(Exception):
    """The upload cannot be used at all; nothing was created. ``field`` names the form field."""

    def __init__(self, reason: str, *, field: str = "file",
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.details = dict(details or {})


@dataclass(frozen=True, slots=True, kw_only=True)
class RowSpec:
    """How each row becomes a message."""

    campaign_id: UUID
    message_class: MessageClass
    sender: str
    advertiser: str
    template: str | None
    render: Callable[[Mapping[str, Any]], str]  # TemplateRenderer.row_function(...)
    refusal: str
    khong_dau: bool = False
    api_key_id: int | None = None
    region: str = "VN"
    msisdn_column: str | None = None  # header name; None = recognised by name
    mapping: Mapping[str, str] = field(default_factory=dict)  # variable → column header
    encoding: str = "utf-8"  # of a CSV file: utf-8 or cp1258
    samples: int = 5
    needs: frozenset[str] = frozenset()  # variables the message needs from the columns


@dataclass
class _State:
    rows: int = 0
    seen: dict[int, int] = field(default_factory=dict)  # number → line of its latest row
    duplicate_lines: list[int] = field(default_factory=list)
    rejects: list[tuple[int, str, str, str]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


#: Encodings a CSV upload may be in (Excel's "CSV UTF-8", or old Vietnamese Windows text).
CSV_ENCODINGS = {"utf-8": "utf-8-sig", "utf8": "utf-8-sig", "cp1258": "cp1258",
                 "windows-1258": "cp1258"}
_CP1258_HINT = "; if it is Vietnamese from an old Windows program, send encoding=cp1258"


def table_rows(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, Sequence[object]]]:
    try:
        fmt = detect_format(path)
    except ImportFileError as exc:
        raise UploadError(exc.reason) from None
    if fmt == "xlsx":
        return _xlsx_rows(path)
    codec = CSV_ENCODINGS.get(encoding.strip().lower())
    if codec is None:
        raise UploadError(f"unknown encoding {encoding[:40]!r}; use utf-8 or cp1258",
                          field="encoding")
    try:
        check_text(path, codec, hint=_CP1258_HINT if codec == "utf-8-sig" else "")
    except ImportFileError as exc:
        raise UploadError(exc.reason) from None
    return _csv_rows(path, codec)


def fast_msisdn(raw: object) -> str | None:
    """:func:`parse_msisdn`'s answer (region VN) for a CSV cell holding a Vietnamese mobile
    number written plainly (``0901234567``, ``84…``, ``+84…``) or with separators
    (``0901 234 567``, ``0901.234.567``, ``+84 90-123-4567``); None for anything else (ask
    parse_msisdn). parse_msisdn removes the same separators before the same test, but only
    after trying the much slower phonenumbers parse: this is most of a large upload's cost."""
    if type(raw) is not str:
        return None
    found = _PLAIN_VN_MOBILE.fullmatch(raw) or _PLAIN_VN_MOBILE.fullmatch(
        _SEPARATORS.sub("", raw))
    if found is None or found[1][:2] not in VN_MOBILE_PREFIXES or not found[1].isascii():
        return None
    return "84" + found[1]


def _folded(text: str) -> str:
    return strip_diacritics(text).lower().rstrip(" .!")


def folded_endswith(body: str, folded_end: str) -> bool:
    """``_folded(body).endswith(folded_end)`` (label_advertising's test), folding only the end
    of a long body. Exact: stripping diacritics (NFD, marks dropped, NFC) of ``x + y`` is that
    of ``x`` then that of ``y`` when ``y`` starts with an ASCII character (a starter nothing
    composes with or reorders across), and lower() maps each character on its own except a
    capital sigma."""
    if not folded_end:
        return True
    last = len(body) - 1
    while last >= 0 and body[last] in " .!":
        last -= 1
    if last >= 0 and body[last].isascii() and body[last].lower() != folded_end[-1]:
        return False  # the usual case: folded, the body ends in another character
    start = len(body) - len(folded_end) - 8
    while start > 0 and not body[start].isascii():
        start -= 1
    if start > 0:
        tail = strip_diacritics(body[start:])
        if "\u03a3" not in tail:
            tail = tail.lower().rstrip(" .!")
            if len(tail) >= len(folded_end):
                return tail.endswith(folded_end)
    return _folded(body).endswith(folded_end)


def labelled(text: str, refusal: str, folded_refusal: str) -> str:
    """:func:`gateway.intake.label_advertising` with the refusal's folded form computed once
    (``folded_refusal = _folded(refusal.strip())``) and the body's end folded only."""
    body = text.strip()
    if not body.upper().startswith(("[QC]", "[AD]")):
        body = f"[QC] {body}"
    refusal = refusal.strip()
    if refusal and not folded_endswith(body, folded_refusal):
        body = f"{body.rstrip()} {refusal}" if body.endswith((".", "!", "?")) \
            else f"{body.rstrip()}. {refusal}"
    return body


def _header(cells: Sequence[object], spec: RowSpec, line: int
            ) -> tuple[int, list[tuple[str, int]]]:
    """(index of the number column, [(variable name, column index)])."""
    keys = [header_key(c) for c in cells]
    names = [_text(c) for c in cells]
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key and key in seen:
            raise UploadError(f"column {names[i]!r} appears twice (columns {seen[key] + 1} and "
                              f"{i + 1} of line {line}); keep one")
        if key:
            seen[key] = i
    found = ", ".join(repr(n) for n in names if n) or "none"
    if spec.msisdn_column:
        want = header_key(spec.msisdn_column)
        if want not in seen:
            raise UploadError(f"msisdn_column {spec.msisdn_column!r} is not in the header "
                              f"(line {line}; columns found: {found})", field="msisdn_column")
        number_col = seen[want]
    else:
        hits = [seen[a] for a in FIELD_ALIASES["msisdn"] if a in seen]
        if not hits:
            joined = "".join(names)
            odd = next((d for d in ("|", ":", "/", "#") if d in joined), None)
            hint = (f"the columns seem separated by {odd!r}: use ',' ';' or a tab"
                    if odd else "name the number column one of "
                    f"{', '.join(FIELD_ALIASES['msisdn'][:4])} or send msisdn_column")
            raise UploadError(f"no phone number column in the header (line {line}; columns "
                              f"found: {found}); {hint}")
        number_col = hits[0]
    variables = [(k, i) for i, k in enumerate(keys) if k]
    for var, column in spec.mapping.items():
        key = header_key(column)
        if key not in seen:
            raise UploadError(f"mapping: column {column!r} (for {var!r}) is not in the header "
                              f"(columns found: {found})", field="mapping")
        variables.append((var, seen[key]))
    missing = sorted(spec.needs - {var for var, _ in variables})
    if missing:
        names_ = ", ".join(f"{{{{ {m} }}}}" for m in missing)
        raise UploadError(f"the message uses {names_} but the file has no such column "
                          f"(line {line}; columns found: {found}); add the column, or map one "
                          'to it with mapping {"variable": "column"}', field="file")
    return number_col, variables


class _Parser:
    """Reads the file in a thread and hands record chunks to the event loop."""

    def __init__(self, path: Path, spec: RowSpec) -> None:
        self._path = path
        self._spec = spec
        self.state = _State()
        rows = table_rows(path, spec.encoding)
        self._iter = iter(rows)
        header: tuple[int, Sequence[object]] | None = None
        for line, cells in self._iter:
            if not _is_blank(cells):
                header = (line, cells)
                break
        if header is None:
            raise UploadError("the file is empty" if header is None else "")
        self._number_col, self._vars = _header(header[1], spec, header[0])
        self._first_line = header[0]
        self._vn = spec.region == "VN"
        self._advertising = spec.message_class is MessageClass.ADVERTISING
        self._folded_refusal = _folded(spec.refusal.strip())
        # every row's constant columns, looked up once
        self._priority = Priority.BULK
        self._class = spec.message_class.value
        self._render = spec.render
        self._refusal = spec.refusal
        self._samples = spec.samples
        self._encodings = {e: e.value for e in Encoding}

    def _message(self, line: int, cells: Sequence[object]) -> tuple[Any, ...] | None:
        spec, state = self._spec, self.state
        raw = cells[self._number_col] if self._number_col < len(cells) else None
        msisdn = fast_msisdn(raw) if self._vn else None
        if msisdn is None:
            try:
                msisdn = parse_msisdn(raw, region=spec.region)
            except _BadValue as exc:
                state.rejects.append((line, _shown(raw), "rejected", str(exc)))
                return None
        data: dict[str, Any] = {}
        n = len(cells)
        for var, i in self._vars:
            cell = cells[i] if i < n else ""
            data[var] = cell.strip() if type(cell) is str else _text(cell)
        try:
            text = tidy_text(self._render(data))
        except TemplateError as exc:
            state.rejects.append((line, _shown(raw), "rejected", exc.reason))
            return None
        if spec.khong_dau:
            text = strip_diacritics(text)
        if self._advertising and not (
                text.startswith("[QC] ") and text.endswith(self._refusal)):
            text = labelled(text, self._refusal, self._folded_refusal)
        if not text:
            state.rejects.append((line, _shown(raw), "rejected", "the message is empty"))
            return None
        encoding, segments = quick_count(text)
        if segments > MAX_SEGMENTS:
            state.rejects.append((line, _shown(raw), "rejected",
                                  f"message too long: {segments} segments ({encoding}); "
                                  f"at most {MAX_SEGMENTS}"))
            return None
        key = int(msisdn)
        seen = state.seen
        earlier = seen.get(key)
        if earlier is not None:
            state.duplicate_lines.append(earlier)
            state.rejects.append((earlier, msisdn, "duplicate", f"same number as line {line}"))
        seen[key] = line
        if len(state.samples) < self._samples:
            state.samples.append({"line": line, "msisdn": mask_msisdn(msisdn), "text": text,
                                  "encoding": encoding.value, "segments": segments,
                                  "chars": len(text)})
        return (msisdn, spec.sender, text, spec.template, self._encodings[encoding], segments,
                self._class, self._priority, spec.khong_dau, "held", spec.campaign_id,
                line, spec.advertiser, spec.api_key_id)

    def chunks(self) -> Iterator[list[tuple[Any, ...]]]:
        chunk: list[tuple[Any, ...]] = []
        state = self.state
        try:
            for line, cells in self._iter:
                first = cells[0] if cells else None
                # a first cell with text: not blank (the usual row; _is_blank is slower)
                if not (type(first) is str and first and not first.isspace()) \
                        and _is_blank(cells):
                    continue
                state.rows += 1
                record = self._message(line, cells)
                if record is not None:
                    chunk.append(record)
                    if len(chunk) >= CHUNK:
                        yield chunk
                        chunk = []
        except ImportFileError as exc:
            raise UploadError(exc.reason) from None
        except csv.Error as exc:
            raise UploadError(f"CSV unreadable: {exc}") from None
        if chunk:
            yield chunk

    def tail(self) -> UploadTail:
        s = self.state
        return UploadTail(duplicate_lines=s.duplicate_lines, rejects=s.rejects, rows=s.rows,
                          samples=s.samples)


async def open_upload(path: Path, spec: RowSpec) -> _Parser:
    """Open and check the file's header (UploadError if unusable), off the event loop."""
    return await asyncio.to_thread(_Parser, path, spec)


async def stream_records(parser: _Parser, *, depth: int = 4
                         ) -> AsyncIterator[tuple[Any, ...]]:
    """The parser's records, produced by a thread ``depth`` chunks ahead of the consumer."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[tuple[Any, ...]] | BaseException | None] = asyncio.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in parser.chunks():
                if stop.is_set():
                    return
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
        except BaseException as exc:  # handed over to the consumer, raised there
            if not stop.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            for record in item:
                yield record
    finally:
        stop.set()
        while not queue.empty():
            queue.get_nowait()
        await worker


def parse_schedule(value: str, tz: Any) -> datetime | None:
    """ISO 8601; without an offset it is local time in ``tz``."""
    value = value.strip()
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UploadError(f"schedule_at {value!r} is not an ISO 8601 time "
                          "(e.g. 2026-12-01T09:00)", field="schedule_at") from None
    when = when if when.tzinfo is not None else when.replace(tzinfo=tz)
    try:
        when.astimezone(UTC)
    except OverflowError:
        raise UploadError(f"schedule_at {value!r} is out of range", field="schedule_at") from None
    return when
