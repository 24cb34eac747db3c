"""Campaign upload rows → Postgres COPY text, one part of the file at a time.

Pure work on one file, no event loop: :class:`PartParser` reads one byte range of a CSV (or
the whole of an XLSX), and turns each row into a message line in COPY text format. Each row's
number is normalised, its columns become the template's variables, the message is rendered,
labelled ([QC] … refusal) when it is advertising, and measured (encoding, segments).

A small file is parsed by one part in a thread of the gateway; a large CSV is cut at record
boundaries (:func:`split_csv`) into one part per CPU, each parsed by a worker process
(``python -m gateway.campaign_parse``, see :func:`worker_main`) that streams its COPY text
back through a pipe. Either way Postgres receives the rows while the rest is still being read,
and the gateway process only forwards bytes.

A number given twice is sent once, to the **last** row that has it; within a part the earlier
rows are reported here, across parts by :func:`merge_tails`. Rows that cannot be used are
reported with their line, value and reason while the good rows go on.
"""

from __future__ import annotations

import csv
import io
import operator
import pickle
import re
import struct
import sys
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

from gateway.domain import MAX_SEGMENTS, Encoding, MessageClass, Priority
from gateway.masking import mask_msisdn
from gateway.numbers import _SEPARATORS, VN_MOBILE_PREFIXES
from gateway.smpp.encoding import khong_dau as strip_diacritics
from gateway.smpp.encoding import quick_count
from gateway.store.campaigns import MESSAGE_COLUMNS, UploadTail
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
    csv_dialect,
    detect_format,
    header_key,
    parse_msisdn,
)
from gateway.templating import TemplateError, TemplateRenderer, tidy_text

#: a row's line must fit in 27 bits of its packed record (see PartParser)
_MAX_LINE = 1 << 27
#: COPY text handed over at a time (bytes, about)
BLOCK_BYTES = 1 << 20


class UploadError(Exception):
    """The upload cannot be used at all; nothing was created. ``field`` names the form field."""

    def __init__(self, reason: str, *, field: str = "file",
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.details = dict(details or {})

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the worker pipe
        return (_upload_error, (self.reason, self.field, self.details))


def _upload_error(reason: str, field_: str, details: dict[str, Any]) -> UploadError:
    return UploadError(reason, field=field_, details=details)


@dataclass(frozen=True, slots=True, kw_only=True)
class RowSpec:
    """How each row becomes a message (plain data: it is sent to the worker processes)."""

    campaign_id: UUID
    message_class: MessageClass
    sender: str
    advertiser: str
    template: str | None  # a template's name ...
    text: str | None = None  # ... or the message's own Jinja source
    templates_dir: Path
    template_defaults: Mapping[str, Any] = field(default_factory=dict)
    refusal: str
    khong_dau: bool = False
    api_key_id: int | None = None
    region: str = "VN"
    msisdn_column: str | None = None  # header name; None = recognised by name
    mapping: Mapping[str, str] = field(default_factory=dict)  # variable → column header
    encoding: str = "utf-8"  # of a CSV file: utf-8 or cp1258
    samples: int = 5
    needs: frozenset[str] = frozenset()  # variables the message needs from the columns

    def render_function(self) -> Callable[[Mapping[str, Any]], str]:
        renderer = TemplateRenderer(self.templates_dir, defaults=self.template_defaults)
        return renderer.row_function(name=self.template, source=self.text)


@dataclass(frozen=True, slots=True)
class Layout:
    """What the header said, and the upload's id prefix; the same for every part."""

    fmt: str  # "csv" | "xlsx"
    codec: str  # Python codec of a CSV
    delimiter: str
    header_line: int  # rows up to this line are not data (blank lines, sep=, the header)
    number_col: int
    variables: tuple[tuple[str, int], ...]  # (variable, column index)
    id_high: int  # UUIDv7 high 64 bits (time + random) of this upload's message ids
    id_random: int  # 30 random bits of the low half


@dataclass(frozen=True, slots=True)
class Part:
    index: int
    start: int  # byte offset of its first record
    end: int  # byte offset after its last record
    first_line: int  # physical line number at ``start``


@dataclass
class PartTail:
    """What one part knows once it is read. ``keys``/``first``/``last``: every number of the
    part with the line of its first row and its last row (``line << 32 | id``, the low 32 bits
    of the message id; to find repeats across parts). ``by_encoding``: messages and segments
    per encoding of the rows kept (repeats within the part taken off)."""

    index: int
    rows: int
    by_encoding: dict[str, list[int]]
    duplicate_ids: list[int]  # low 32 bits of the ids of rows repeated later in the part
    rejects: list[tuple[int, str, str, str]]
    samples: list[dict[str, Any]]
    keys: array[int]
    first: array[int]
    last: array[int]


def _uncount(by_encoding: dict[str, list[int]], packed: int) -> None:
    """Take a row (as packed in ``PartParser._packed``) off the counts per encoding."""
    counted = by_encoding["ucs2" if packed >> 36 & 1 else "gsm7"]
    counted[0] -= 1
    counted[1] -= packed >> 32 & 0xF


def message_id(layout: Layout, low32: int) -> UUID:
    """The id a part gave a message: time-ordered UUIDv7 (the upload's high half, then the
    variant, 30 random bits of the upload, 4 bits of part and 28 of the row's sequence)."""
    return UUID(int=(layout.id_high << 64) | (0x8 << 60) | (layout.id_random << 32) | low32)


#: Encodings a CSV upload may be in (Excel's "CSV UTF-8", or old Vietnamese Windows text).
CSV_ENCODINGS = {"utf-8": "utf-8-sig", "utf8": "utf-8-sig", "cp1258": "cp1258",
                 "windows-1258": "cp1258"}
_CP1258_HINT = "; if it is Vietnamese from an old Windows program, send encoding=cp1258"


def csv_codec(encoding: str) -> str:
    codec = CSV_ENCODINGS.get(encoding.strip().lower())
    if codec is None:
        raise UploadError(f"unknown encoding {encoding[:40]!r}; use utf-8 or cp1258",
                          field="encoding")
    return codec


def table_rows(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, Sequence[object]]]:
    """Every row of a CSV or XLSX with its line number (the file checked first)."""
    fmt = file_format(path)
    if fmt == "xlsx":
        return _xlsx_rows(path)
    codec = csv_codec(encoding)
    _check_csv_text(path, codec)
    return _csv_rows(path, codec)


def file_format(path: Path) -> str:
    try:
        return detect_format(path)
    except ImportFileError as exc:
        raise UploadError(exc.reason) from None


def _check_csv_text(path: Path, codec: str) -> None:
    try:
        check_text(path, codec, hint=_CP1258_HINT if codec == "utf-8-sig" else "")
    except ImportFileError as exc:
        raise UploadError(exc.reason) from None


# --------------------------------------------------------------------------- one row


def fast_msisdn(raw: object) -> str | None:
    """:func:`parse_msisdn`'s answer (region VN) for a CSV cell holding a Vietnamese mobile
    number written plainly (``0901234567``, ``84…``, ``+84…``) or with separators
    (``0901 234 567``, ``0901.234.567``, ``+84 90-123-4567``); None for anything else (ask
    parse_msisdn). parse_msisdn removes the same separators before the same test, but only
    after trying the much slower phonenumbers parse: this is most of a large upload's cost."""
    if type(raw) is not str:
        return None
    # digits once the ASCII separators are gone (most cells): no regex
    digits = raw if raw.isdigit() else raw.translate(_ASCII_SEPARATORS)
    plus = digits[:1] == "+"
    if plus:
        digits = digits[1:]
    if digits.isascii() and digits.isdigit():
        n = len(digits)
        if n == 10 and digits[0] == "0" and not plus:
            sub = digits[1:]
        elif n == 11 and digits.startswith("84"):
            sub = digits[2:]
        else:
            return None
        return None if sub[0] == "0" or sub[:2] not in VN_MOBILE_PREFIXES else "84" + sub
    found = _PLAIN_VN_MOBILE.fullmatch(raw) or _PLAIN_VN_MOBILE.fullmatch(
        _SEPARATORS.sub("", raw))
    if found is None or found[1][:2] not in VN_MOBILE_PREFIXES or not found[1].isascii():
        return None
    return "84" + found[1]


#: what _SEPARATORS removes, in ASCII (other white space goes the regex way)
_ASCII_SEPARATORS = str.maketrans("", "", " .-()/\t\n\r\f\v")


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
    if body[:4].upper() not in ("[QC]", "[AD]"):  # as body.upper().startswith(...)
        body = f"[QC] {body}"
    refusal = refusal.strip()
    if refusal and not folded_endswith(body, folded_refusal):
        body = f"{body.rstrip()} {refusal}" if body.endswith((".", "!", "?")) \
            else f"{body.rstrip()}. {refusal}"
    return body


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_SPECIAL_SEARCH = _COPY_SPECIAL.search
_ENCODING_VALUE = {e: e.value for e in Encoding}


def copy_text(value: str) -> str:
    """A value as a field of COPY's text format."""
    if _COPY_SPECIAL.search(value) is None:
        return value
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


# --------------------------------------------------------------------------- the header


def header_layout(cells: Sequence[object], spec: RowSpec, line: int
                  ) -> tuple[int, tuple[tuple[str, int], ...]]:
    """(index of the number column, ((variable name, column index), …))."""
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
    return number_col, tuple(variables)


def read_layout(path: Path, spec: RowSpec, *, id_high: int, id_random: int) -> Layout:
    """Check the file and its header (:class:`UploadError` if unusable)."""
    fmt = file_format(path)
    codec, delimiter = "", ","
    if fmt == "csv":
        codec = csv_codec(spec.encoding)
        _check_csv_text(path, codec)
        with path.open("r", encoding=codec, newline="") as fh:
            delimiter, _ = csv_dialect(fh)
    rows = _csv_rows(path, codec) if fmt == "csv" else _xlsx_rows(path)  # text checked above
    try:
        for line, cells in rows:
            if not _is_blank(cells):
                number_col, variables = header_layout(cells, spec, line)
                return Layout(fmt=fmt, codec=codec, delimiter=delimiter, header_line=line,
                              number_col=number_col, variables=variables, id_high=id_high,
                              id_random=id_random)
    except ImportFileError as exc:
        raise UploadError(exc.reason) from None
    except csv.Error as exc:
        raise UploadError(f"CSV unreadable: {exc}") from None
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    raise UploadError("the file is empty")


# --------------------------------------------------------------------------- cutting a CSV


def split_csv(path: Path, layout: Layout, parts: int, *, min_bytes: int = 1 << 20
              ) -> list[Part]:
    """Cut a CSV into up to ``parts`` byte ranges, each starting where a record starts: after
    a line end that is outside any quoted field (as the csv module reads quotes: a ``"``
    opens a quoted field only at the start of a field, ``""`` inside one is a quote, the next
    ``"`` closes it). Parts are at least ``min_bytes`` long. A file with old Mac line ends
    (a lone CR) is not cut."""
    size = path.stat().st_size
    whole = [Part(0, 0, size, 1)]
    if layout.fmt != "csv" or parts <= 1 or size < 2 * min_bytes:
        return whole
    parts = min(parts, size // min_bytes)
    data = path.read_bytes()  # freed on return; parts are read again by their workers
    if data.count(b"\r") != data.count(b"\r\n"):
        return whole
    delimiter = layout.delimiter.encode("ascii")
    cuts: list[Part] = []
    start, quoted, pos, line = 0, False, 0, 1  # quote state at ``pos``, line at ``start``
    for i in range(1, parts):
        target = size * i // parts
        if target <= start:
            continue
        quoted, pos = _quote_state(data, pos, target, quoted, delimiter)
        cut = _record_end(data, pos, quoted, delimiter)  # pos: target, or a quote before it
        if cut is None or cut >= size:
            break
        cuts.append(Part(len(cuts), start, cut, line))
        line += data.count(b"\n", start, cut)
        quoted, pos = _quote_state(data, pos, cut, quoted, delimiter)
        start = cut
    cuts.append(Part(len(cuts), start, size, line))
    return cuts


def _quote_state(data: bytes, pos: int, end: int, quoted: bool, delimiter: bytes
                 ) -> tuple[bool, int]:
    """Whether ``end`` is inside a quoted field, knowing the state at ``pos`` (≤ end)."""
    find = data.find
    while True:
        q = find(b'"', pos, end)
        if q < 0:
            return quoted, end
        if quoted:
            if data[q + 1:q + 2] == b'"':  # an escaped quote
                if q + 1 >= end:
                    return quoted, q  # the pair straddles ``end``: decide it later
                pos = q + 2
                continue
            quoted, pos = False, q + 1
        else:
            before = data[q - 1:q] if q else b"\n"
            if before in (b"\n", b"\r", delimiter):
                quoted = True
            pos = q + 1


def _record_end(data: bytes, at: int, quoted: bool, delimiter: bytes) -> int | None:
    """Offset just after the first line end at or after ``at`` outside a quoted field
    (``quoted``: the state at ``at``)."""
    pos = at
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None
        quoted, _ = _quote_state(data, pos, nl, quoted, delimiter)
        if not quoted:
            return nl + 1
        pos = nl + 1


class _Range(io.RawIOBase):
    """``length`` bytes of a binary file from where it stands."""

    def __init__(self, fh: BinaryIO, length: int) -> None:
        self._fh = fh
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)
        n = self._fh.readinto(view[:min(len(view), self._left)])  # type: ignore[attr-defined]
        self._left -= n or 0
        return n or 0


def part_rows(path: Path, layout: Layout, part: Part
              ) -> Iterator[tuple[int, Sequence[object]]]:
    """The data rows of one part with their line numbers."""
    header = layout.header_line
    if layout.fmt == "xlsx":
        for line, cells in _xlsx_rows(path):
            if line > header:
                yield line, cells
        return
    with path.open("rb") as raw:
        raw.seek(part.start)
        text = io.TextIOWrapper(io.BufferedReader(_Range(raw, part.end - part.start), 1 << 16),
                                encoding=layout.codec, newline="")
        reader = csv.reader(text, delimiter=layout.delimiter)
        done = part.first_line - 1  # physical lines consumed so far
        base = done
        try:
            for record in reader:
                if done >= header:
                    yield done + 1, record
                done = base + reader.line_num
        except csv.Error as exc:
            raise UploadError(f"CSV unreadable at line {done + 1}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise UploadError(f"the file is not {layout.codec} after line {done}: {exc}") \
                from None


# --------------------------------------------------------------------------- one part


class PartParser:
    """Turns the rows of one part into COPY text blocks (:meth:`blocks`), then :meth:`tail`."""

    def __init__(self, path: Path, spec: RowSpec, layout: Layout, part: Part) -> None:
        self._path = path
        self._spec = spec
        self._layout = layout
        self._part = part
        self._render = spec.render_function()
        self._number_col = layout.number_col
        self._vars = layout.variables
        self._csv = layout.fmt == "csv"
        self._widest = max((i for _, i in layout.variables), default=-1)
        self._vn = spec.region == "VN"
        self._advertising = spec.message_class is MessageClass.ADVERTISING
        self._refusal = spec.refusal
        self._folded_refusal = _folded(spec.refusal.strip())
        self._khong_dau = spec.khong_dau
        self._samples_wanted = spec.samples
        # the line's constant columns (MESSAGE_COLUMNS order), escaped once
        constants = {
            "sender": copy_text(spec.sender),
            "template": "\\N" if spec.template is None else copy_text(spec.template),
            "class": spec.message_class.value, "priority": str(Priority.BULK),
            "khong_dau": "t" if spec.khong_dau else "f", "status": "held",
            "campaign_id": str(spec.campaign_id), "advertiser": copy_text(spec.advertiser),
            "api_key_id": "\\N" if spec.api_key_id is None else str(spec.api_key_id)}
        per_row = ("id", "msisdn", "body", "encoding", "segments", "campaign_line")
        if MESSAGE_COLUMNS[:len(per_row)] != per_row \
                or set(MESSAGE_COLUMNS[len(per_row):]) != set(constants):
            raise RuntimeError(f"MESSAGE_COLUMNS changed: {MESSAGE_COLUMNS}")
        self._constants = "".join("\t" + constants[c] for c in MESSAGE_COLUMNS[len(per_row):])
        # every id of the upload: this text, then the row's low 32 bits as 8 hex digits
        full = str(message_id(layout, 0))
        self._id_prefix = full[:-8]
        if not 0 <= part.index < 16:
            raise ValueError("at most 16 parts")
        self._seq = part.index << 28  # the low 32 bits of the next id
        self.rows = 0
        # each row sent to COPY, in file order: its number, and line << 37 | UCS-2 << 36 |
        # segments << 32 | id (low 32 bits). 16 bytes a row: repeats are found at the end of
        # the part by sorting (a dict of every number would take four times the memory)
        self._keys = array("q")
        self._packed = array("Q")
        self._by_encoding = {"gsm7": [0, 0], "ucs2": [0, 0]}
        self._rejects: list[tuple[int, str, str, str]] = []
        self._samples: list[dict[str, Any]] = []

    def _reject(self, line: int, raw: object, reason: str) -> None:
        self._rejects.append((line, _shown(raw), "rejected", reason))

    def _variables(self, cells: Sequence[object]) -> dict[str, Any]:
        if self._csv and len(cells) > self._widest:  # text cells, all there: the usual row
            return {var: cells[i].strip() for var, i in self._vars}  # type: ignore[attr-defined]
        data: dict[str, Any] = {}
        n = len(cells)
        for var, i in self._vars:
            cell = cells[i] if i < n else ""
            data[var] = cell.strip() if type(cell) is str else _text(cell)
        return data

    def _line(self, line: int, cells: Sequence[object]) -> str | None:
        """One COPY line, or None (the row is rejected)."""
        raw = cells[self._number_col] if self._number_col < len(cells) else None
        msisdn = fast_msisdn(raw) if self._vn else None
        if msisdn is None:
            try:
                msisdn = parse_msisdn(raw, region=self._spec.region)
            except _BadValue as exc:
                self._reject(line, raw, str(exc))
                return None
        data = self._variables(cells)
        try:
            text = tidy_text(self._render(data))
        except TemplateError as exc:
            self._reject(line, raw, exc.reason)
            return None
        if self._khong_dau:
            text = strip_diacritics(text)
        if self._advertising and not (
                text.startswith("[QC] ") and text.endswith(self._refusal)):
            text = labelled(text, self._refusal, self._folded_refusal)
        if not text:
            self._reject(line, raw, "the message is empty")
            return None
        encoding, segments = quick_count(text)
        if segments > MAX_SEGMENTS:
            self._reject(line, raw, f"message too long: {segments} segments ({encoding}); "
                                    f"at most {MAX_SEGMENTS}")
            return None
        if line >= _MAX_LINE:
            raise UploadError(f"the file has more than {_MAX_LINE - 1:,} lines")
        seq = self._seq
        self._seq = seq + 1
        ucs2 = encoding is Encoding.UCS2
        self._keys.append(int(msisdn))
        self._packed.append((line << 37) | (ucs2 << 36) | (segments << 32) | seq)
        counted = self._by_encoding["ucs2" if ucs2 else "gsm7"]
        counted[0] += 1
        counted[1] += segments
        if len(self._samples) < self._samples_wanted:
            self._samples.append({"line": line, "msisdn": mask_msisdn(msisdn), "text": text,
                                  "encoding": encoding.value, "segments": segments,
                                  "chars": len(text)})
        if _COPY_SPECIAL_SEARCH(text) is not None:
            text = copy_text(text)
        return (f"{self._id_prefix}{seq:08x}\t{msisdn}\t{text}\t"
                f"{_ENCODING_VALUE[encoding]}\t{segments}\t{line}{self._constants}\n")

    def blocks(self) -> Iterator[bytes]:
        """COPY text (``MESSAGE_COLUMNS``), whole lines, about ``BLOCK_BYTES`` at a time."""
        lines: list[str] = []
        size = 0
        make = self._line
        try:
            for line, cells in part_rows(self._path, self._layout, self._part):
                first = cells[0] if cells else None
                # a first cell with text: not blank (the usual row; _is_blank is slower)
                if not (type(first) is str and first and not first.isspace()) \
                        and _is_blank(cells):
                    continue
                self.rows += 1
                text = make(line, cells)
                if text is not None:
                    lines.append(text)
                    size += len(text)
                    if size >= BLOCK_BYTES:
                        yield "".join(lines).encode("utf-8")
                        lines, size = [], 0
        except ImportFileError as exc:
            raise UploadError(exc.reason) from None
        if lines:
            yield "".join(lines).encode("utf-8")

    def tail(self) -> PartTail:
        """Once :meth:`blocks` is exhausted: every row of a number but its last is a repeat
        (reported against the number's next row); the numbers with their first and last
        rows, sorted by number."""
        keys, packed = self._keys, self._packed
        self._keys, self._packed = array("q"), array("Q")
        n = len(keys)
        # number << 27 | row index, sorted: a number's rows together, in file order
        order = sorted(map(operator.or_, map(operator.lshift, keys, repeat(27, n)), range(n)))
        del keys
        numbers, first, last = array("q"), array("q"), array("Q")
        duplicates: list[int] = []
        mask = (1 << 27) - 1
        prev_key = -1
        prev = 0
        for combined in order:
            key = combined >> 27
            row = packed[combined & mask]
            if key == prev_key:  # the number's previous row was not its last
                duplicates.append(prev & 0xFFFFFFFF)
                self._rejects.append((prev >> 37, str(key), "duplicate",
                                      f"same number as line {row >> 37}"))
                _uncount(self._by_encoding, prev)
                last[-1] = row
            else:
                numbers.append(key)
                first.append(row >> 37)
                last.append(row)
                prev_key = key
            prev = row
        return PartTail(
            index=self._part.index, rows=self.rows, by_encoding=self._by_encoding,
            duplicate_ids=duplicates, rejects=self._rejects, samples=self._samples,
            keys=numbers, first=first, last=last)


def merge_tails(tails: Sequence[PartTail], layout: Layout, samples: int) -> UploadTail:
    """One upload's tail from its parts' (in file order): a number in several parts keeps
    its last row; the last row of a part that has it is a duplicate of the first row of the
    next part that has it. Each part's numbers come sorted: they are walked side by side,
    without a set of every number."""
    tails = sorted(tails, key=lambda t: t.index)
    duplicates = [low for t in tails for low in t.duplicate_ids]
    by_encoding = {e: [sum(t.by_encoding[e][0] for t in tails),
                       sum(t.by_encoding[e][1] for t in tails)] for e in ("gsm7", "ucs2")}
    rejects = [r for t in tails for r in t.rejects]
    for p, part in enumerate(tails[:-1]):
        superseded = bytearray(len(part.keys))  # found in a nearer later part already
        for later in tails[p + 1:]:
            for i, j in _common(part.keys, later.keys):
                if superseded[i]:
                    continue
                superseded[i] = 1
                last = part.last[i]
                duplicates.append(last & 0xFFFFFFFF)
                _uncount(by_encoding, last)
                rejects.append((last >> 37, str(part.keys[i]), "duplicate",
                                f"same number as line {later.first[j]}"))
    all_samples = sorted((s for t in tails for s in t.samples), key=lambda s: s["line"])
    return UploadTail(duplicate_ids=[message_id(layout, low) for low in duplicates],
                      rejects=rejects, rows=sum(t.rows for t in tails),
                      by_encoding={e: (n, segs) for e, (n, segs) in by_encoding.items()},
                      samples=all_samples[:samples])


def _common(a: Sequence[int], b: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(i, j) with ``a[i] == b[j]``, both sorted and without repeats."""
    i = j = 0
    na, nb = len(a), len(b)
    while i < na and j < nb:
        x, y = a[i], b[j]
        if x < y:
            i += 1
        elif x > y:
            j += 1
        else:
            yield i, j
            i += 1
            j += 1


# --------------------------------------------------------------------------- worker process

#: frames a worker writes on its stdout: kind (1 byte), length (4 bytes, big-endian), payload
FRAME = struct.Struct(">cI")
DATA, TAIL, ERROR = b"D", b"T", b"E"


def worker_main() -> int:
    """``python -m gateway.campaign_parse``: read a pickled (path, spec, layout, part) from
    stdin (sent by the gateway that started this process, never by anyone else), write its
    COPY text, then its tail (or the UploadError) as frames on stdout."""
    job = pickle.loads(sys.stdin.buffer.read())
    out = sys.stdout.buffer
    path, spec, layout, part = job
    try:
        parser = PartParser(path, spec, layout, part)
        for block in parser.blocks():
            out.write(FRAME.pack(DATA, len(block)))
            out.write(block)
        payload = pickle.dumps(parser.tail(), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(FRAME.pack(TAIL, len(payload)))
        out.write(payload)
    except UploadError as exc:
        payload = pickle.dumps(exc)
        out.write(FRAME.pack(ERROR, len(payload)))
        out.write(payload)
    out.flush()
    return 0


if __name__ == "__main__":  # run as the module proper, so its records unpickle by name
    from gateway.campaign_parse import worker_main as _worker_main

    raise SystemExit(_worker_main())
