"""Import of subscriber lists (CSV UTF-8 or XLSX) into the ``subscribers`` table.

The file is streamed: rows are read, checked and upserted in batches (1,000 by default), never
held whole in memory. Good rows go in; each bad row is reported as :class:`RowError` with its
line (CSV: the physical line where the record starts, the header being line 1; XLSX: the
sheet's row number), the offending value and the reason. A file that cannot be used at all
(empty, not UTF-8, old ``.xls``, no phone number column...) raises :class:`ImportFileError`
before anything is written.

Columns are recognised by name, case- and accent-insensitively, in English or Vietnamese
(:data:`FIELD_ALIASES`: ``so_dien_thoai``, ``Họ tên``, ``Ngày sinh``...). Columns of other
names are kept per subscriber in ``attributes``. Only the columns present in the file are
overwritten on subscribers already stored; an empty cell in a present column means the
default (no date of birth, no tier, 0 points, ``active``, not ``khong_dau``).

A number given twice in one file is imported once: the later row wins, and
``duplicates_in_file`` counts the earlier rows it replaced. Keeping track of the numbers seen
costs about 70 bytes per distinct number (70 MB for a million), not the rows themselves.

Parsing (:func:`map_header`, the ``parse_*`` functions, :func:`open_rows`) is pure and
synchronous; :func:`import_file` runs it in a worker thread batch by batch so a large file does
not block the event loop of the HTTP server.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import functools
import itertools
import logging
import math
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, TextIO

from gateway.numbers import VN_MOBILE_PREFIXES, InvalidNumber, normalise_msisdn
from gateway.smpp.encoding import khong_dau, normalise
from gateway.store.subscribers import STATUSES, TIERS, Subscriber, SubscriberStore, canonical_tier

log = logging.getLogger("smsgw.subscribers_import")

__all__ = [
    "FIELD_ALIASES",
    "Header",
    "ImportFileError",
    "ImportReport",
    "RowError",
    "RowsFile",
    "import_file",
    "map_header",
    "open_rows",
    "parse_bool",
    "parse_date",
    "parse_points",
    "parse_row",
    "parse_status",
    "parse_tier",
]

BATCH_SIZE = 1_000
MAX_ERRORS_KEPT = 1_000
MAX_TEXT_CHARS = 200  # full_name, segment
MAX_POINTS = 2_147_483_647  # the column is a Postgres integer
MAX_VALUE_SHOWN = 100  # characters of a bad value repeated in its RowError

FileFormat = Literal["csv", "xlsx"]

#: Subscriber field → the column names that mean it (compared after :func:`header_key`).
FIELD_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "msisdn": ("msisdn", "so_dien_thoai", "sdt", "so_dt", "dien_thoai", "phone",
               "phone_number", "mobile", "so_thue_bao", "thue_bao"),
    "full_name": ("full_name", "fullname", "ho_ten", "ho_va_ten", "name", "ten_khach_hang"),
    "date_of_birth": ("date_of_birth", "ngay_sinh", "dob", "birthday", "birth_date"),
    "tier": ("tier", "hang", "hang_hoi_vien", "hang_thanh_vien"),
    "points": ("points", "diem", "diem_thuong", "so_diem"),
    "segment": ("segment", "phan_khuc", "nhom"),
    "status": ("status", "trang_thai"),
    "khong_dau": ("khong_dau", "khongdau", "no_diacritics"),
})
_ALIAS_TO_FIELD = {alias: name for name, aliases in FIELD_ALIASES.items() for alias in aliases}

_TRUE = frozenset({"true", "1", "yes", "y", "co", "x"})
_FALSE = frozenset({"false", "0", "no", "n", "khong"})
_STATUS_ALIASES = {
    "active": "active", "hoat_dong": "active", "dang_hoat_dong": "active",
    "suspended": "suspended", "tam_ngung": "suspended", "tam_khoa": "suspended",
    "khoa": "suspended",
}

_canonical_tier = functools.lru_cache(maxsize=512)(canonical_tier)
_NON_WORD = re.compile(r"[^0-9a-z]+")
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_ISO_MIDNIGHT = re.compile(r"(\d{4}-\d{2}-\d{2})[T ]00:00(:00(\.0+)?)?")
_DMY_DATE = re.compile(r"(\d{1,2})([/.\-])(\d{1,2})\2(\d{4})")
_SEP_LINE = re.compile(r"sep=([,;\t|])", re.IGNORECASE)
_PLAIN_VN_MOBILE = re.compile(r"(?:0|\+?84)([1-9]\d{8})")
_PLAIN_INT = re.compile(r"-?\d+")
_GROUPED_INT = re.compile(r"-?\d{1,3}(?:([.,])\d{3})(?:\1\d{3})*")

_XLSX_MAGIC = b"PK\x03\x04"
_XLS_MAGIC = b"\xd0\xcf\x11\xe0"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_SAVE_AS = "save it from Excel as 'CSV UTF-8 (Comma delimited)' or as .xlsx"


class ImportFileError(Exception):
    """The file as a whole cannot be imported (nothing was written); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BadValue(ValueError):
    """One cell cannot be used; the message is the reason."""


@dataclass(frozen=True, slots=True)
class RowError:
    line: int  # CSV line where the record starts (header = 1) / XLSX row number
    value: str  # the offending cell, as written (cut to 100 characters)
    reason: str
    column: str = ""  # subscriber field ("msisdn", "tier"...) or the file's column name

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "value": self.value,
                "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Header:
    """Where each subscriber field is in a row; ``extras`` become ``attributes``."""

    fields: Mapping[str, int]  # field name → column index
    extras: tuple[tuple[int, str], ...] = ()  # (column index, attribute name)
    line: int = 1

    @property
    def columns(self) -> tuple[str, ...]:
        """The subscriber columns this file sets (for the upsert)."""
        names = [n for n in FIELD_ALIASES if n in self.fields]
        if self.extras:
            names.append("attributes")
        return tuple(names)


@dataclass(frozen=True, slots=True)
class ImportReport:
    format: FileFormat
    rows: int  # data rows read (header and blank rows excluded)
    imported: int  # distinct numbers written (inserted + updated)
    inserted: int  # numbers new to the database
    updated: int  # numbers that were already there
    duplicates_in_file: int  # rows replaced by a later row with the same number
    rejected_total: int
    rejected: tuple[RowError, ...]  # the first ``max_errors`` of them, in file order
    columns: tuple[str, ...]  # subscriber columns found in the file
    attributes: tuple[str, ...]  # other columns, kept in ``attributes``
    seconds: float = 0.0

    def as_dict(self, *, max_rejected: int | None = None) -> dict[str, Any]:
        shown = self.rejected if max_rejected is None else self.rejected[:max_rejected]
        return {
            "format": self.format,
            "rows": self.rows,
            "imported": self.imported,
            "inserted": self.inserted,
            "updated": self.updated,
            "duplicates_in_file": self.duplicates_in_file,
            "rejected_total": self.rejected_total,
            "rejected": [e.as_dict() for e in shown],
            "rejected_truncated": len(shown) < self.rejected_total,
            "columns": list(self.columns),
            "attributes": list(self.attributes),
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- header


def header_key(value: object) -> str:
    """``" Số điện thoại "`` → ``"so_dien_thoai"``: what column names are compared as."""
    text = khong_dau(normalise(_text(value))).casefold()
    return _NON_WORD.sub("_", text).strip("_")


def _looks_like_number(cells: Sequence[object]) -> bool:
    for cell in cells:
        try:
            normalise_msisdn(_text(cell))
        except InvalidNumber:
            continue
        return True
    return False


def map_header(cells: Sequence[object], *, line: int = 1) -> Header:
    """Map a header row; :class:`ImportFileError` if there is no (or a doubled) number column.

    Columns with an empty name are ignored.
    """
    fields: dict[str, int] = {}
    extras: list[tuple[int, str]] = []
    names: dict[str, int] = {}  # key → first column index, to find doubles
    for index, cell in enumerate(cells):
        key = header_key(cell)
        if not key:
            continue
        if key in names:
            raise ImportFileError(
                f"column {_text(cell)!r} appears twice (columns {names[key] + 1} and "
                f"{index + 1} of line {line}); keep one")
        names[key] = index
        name = _ALIAS_TO_FIELD.get(key)
        if name is None:
            extras.append((index, _text(cell)))
        elif name in fields:
            raise ImportFileError(
                f"columns {fields[name] + 1} and {index + 1} of line {line} both give the "
                f"{name} ({_text(cells[fields[name]])!r}, {_text(cell)!r}); keep one")
        else:
            fields[name] = index
    if "msisdn" not in fields:
        found = ", ".join(repr(_text(c)) for c in cells if _text(c)) or "none"
        hint = ("the first row looks like data, not column names: add a header row"
                if _looks_like_number(cells) else
                f"name the number column one of {', '.join(FIELD_ALIASES['msisdn'][:4])}")
        raise ImportFileError(f"no phone number column in the header (line {line}; columns "
                              f"found: {found}); {hint}")
    return Header(fields=MappingProxyType(fields), extras=tuple(extras), line=line)


# --------------------------------------------------------------------------- values


def _text(value: object) -> str:
    """A cell as text: None → "", whole floats without ".0", dates as ISO, NFC, stripped."""
    if type(value) is str:  # every CSV cell: the fast path
        return normalise(value).strip()
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime) and value.time() == time(0):
        return value.date().isoformat()
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    return normalise(str(value)).strip()


def _shown(value: object) -> str:
    text = _text(value)
    return text if len(text) <= MAX_VALUE_SHOWN else text[: MAX_VALUE_SHOWN - 1] + "…"


@functools.lru_cache(maxsize=512)
def _folded(text: str) -> str:
    """Accents off, case-folded, separators as ``_`` (short cells: yes/no, status)."""
    return _NON_WORD.sub("_", khong_dau(text).casefold()).strip("_")


def _plain_vn_mobile(text: str) -> str | None:
    """``0901234567`` / ``84901234567`` / ``+84901234567`` with a Vietnamese mobile prefix →
    E.164 digits, as :func:`normalise_msisdn` answers for them but some 50 times faster (it
    is most of the cost of a large import); None for anything else."""
    found = _PLAIN_VN_MOBILE.fullmatch(text)
    if found is None or found[1][:2] not in VN_MOBILE_PREFIXES:
        return None
    return "84" + found[1]


def parse_msisdn(value: object, *, region: str = "VN") -> str:
    """Any usual way of writing a number (also an Excel number cell) → E.164 digits."""
    if isinstance(value, bool):
        raise _BadValue("a yes/no value, not a phone number")
    text = _text(value)
    if region == "VN":
        fast = _plain_vn_mobile(text)
        if fast is not None:
            return fast
    try:
        return normalise_msisdn(text, region=region)
    except InvalidNumber as exc:
        raise _BadValue(exc.reason) from None


def _checked_date(year: int, month: int, day: int, written: str) -> date:
    try:
        when = date(year, month, day)
    except ValueError:
        raise _BadValue(f"no such date {written!r} (day {day}, month {month}, year {year}); "
                        "write yyyy-mm-dd or dd/mm/yyyy") from None
    if year < 1900:
        raise _BadValue(f"year {year} is before 1900")
    if when > date.today():
        raise _BadValue("date of birth is in the future")
    return when


def parse_date(value: object) -> date | None:
    """``1990-05-17``, ``17/05/1990`` (also ``17-05-1990``, ``17.05.1990``), an Excel date
    cell; empty → None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        return _checked_date(value.year, value.month, value.day, _text(value))
    if isinstance(value, date):
        return _checked_date(value.year, value.month, value.day, value.isoformat())
    if not isinstance(value, str):
        raise _BadValue("a number, not a date: write yyyy-mm-dd or dd/mm/yyyy, or format the "
                        "Excel cell as a date")
    text = value.strip()
    midnight = _ISO_MIDNIGHT.fullmatch(text)
    if midnight:
        text = midnight.group(1)
    iso = _ISO_DATE.fullmatch(text)
    if iso:
        return _checked_date(int(iso[1]), int(iso[2]), int(iso[3]), text)
    dmy = _DMY_DATE.fullmatch(text)
    if dmy:
        return _checked_date(int(dmy[4]), int(dmy[3]), int(dmy[1]), text)
    raise _BadValue("not a date: write yyyy-mm-dd (1990-05-17) or dd/mm/yyyy (17/05/1990)")


def parse_bool(value: object) -> bool:
    """True/False, 1/0, yes/no, có/không (any case, with or without accents); empty → False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    folded = _folded(_text(value))
    if not folded or folded in _FALSE:
        return False
    if folded in _TRUE:
        return True
    raise _BadValue("not a yes/no value: write True/False, 1/0, yes/no or có/không")


def parse_tier(value: object) -> str:
    """A tier of :data:`TIERS`, matched case- and accent-insensitively; empty → ""."""
    text = _text(value)
    if not text:
        return ""
    tier = _canonical_tier(text)
    if tier is None:
        raise _BadValue(f"unknown tier; the tiers are {', '.join(TIERS)}")
    return tier


def parse_points(value: object) -> int:
    """A whole number ≥ 0 (``12500``, ``12.500``, ``12,500``, an Excel number); empty → 0."""
    if isinstance(value, bool):
        raise _BadValue("a yes/no value, not a number of points")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise _BadValue("not a whole number of points")
        value = int(value)
    if isinstance(value, int):
        points = value
    else:
        text = _text(value).replace(" ", "")
        if not text:
            return 0
        if _PLAIN_INT.fullmatch(text) is None and _GROUPED_INT.fullmatch(text) is None:
            raise _BadValue("not a whole number of points")
        points = int(text.replace(".", "").replace(",", ""))
    if points < 0:
        raise _BadValue("negative points; points are 0 or more")
    if points > MAX_POINTS:
        raise _BadValue(f"too many points (at most {MAX_POINTS})")
    return points


def parse_status(value: object) -> str:
    """``active`` / ``suspended`` (also ``hoạt động`` / ``tạm ngưng``); empty → active."""
    folded = _folded(_text(value))
    if not folded:
        return "active"
    status = _STATUS_ALIASES.get(folded)
    if status is None:
        raise _BadValue(f"unknown status; use {' or '.join(STATUSES)}")
    return status


def _parse_short_text(value: object) -> str:
    text = _text(value)
    if "\n" in text or "\r" in text:
        raise _BadValue("contains a line break: is a quote (\") left open? Everything up to "
                        "the next quote was read as this one value")
    if len(text) > MAX_TEXT_CHARS:
        raise _BadValue(f"longer than {MAX_TEXT_CHARS} characters")
    return text


_PARSERS: Mapping[str, Callable[[object], object]] = MappingProxyType({
    "full_name": _parse_short_text,
    "date_of_birth": parse_date,
    "tier": parse_tier,
    "points": parse_points,
    "segment": _parse_short_text,
    "status": parse_status,
    "khong_dau": parse_bool,
})


def _attribute(value: object) -> object:
    """A JSON-ready attribute value; None when the cell is empty."""
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _text(value) or None


def parse_row(header: Header, line: int, cells: Sequence[object], *,
              region: str = "VN") -> Subscriber | RowError:
    """One data row → a :class:`Subscriber`, or the :class:`RowError` of its first bad cell."""
    def cell(index: int) -> object:
        return cells[index] if index < len(cells) else None

    raw_number = cell(header.fields["msisdn"])
    try:
        msisdn = parse_msisdn(raw_number, region=region)
    except _BadValue as exc:
        return RowError(line, _shown(raw_number), str(exc), "msisdn")
    values: dict[str, Any] = {}
    for name, index in header.fields.items():
        if name == "msisdn":
            continue
        try:
            values[name] = _PARSERS[name](cell(index))
        except _BadValue as exc:
            return RowError(line, _shown(cell(index)), str(exc), name)
    attributes = {}
    for index, name in header.extras:
        value = _attribute(cell(index))
        if value is not None:
            attributes[name] = value
    return Subscriber(msisdn=msisdn, attributes=attributes, **values)


# --------------------------------------------------------------------------- files


def detect_format(path: Path) -> FileFormat:
    """``"xlsx"`` or ``"csv"`` from the file's first bytes (names and MIME types lie)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ImportFileError(f"cannot read the file: {exc.strerror or exc}") from exc
    if not head:
        raise ImportFileError("the file is empty")
    if head.startswith(_XLSX_MAGIC):
        return "xlsx"
    if head.startswith(_XLS_MAGIC):
        raise ImportFileError(f"old Excel .xls files are not supported; {_SAVE_AS}")
    if head.startswith(_UTF16_BOMS):
        raise ImportFileError(f"the file is UTF-16 ('Unicode text'), not UTF-8; {_SAVE_AS}")
    return "csv"


def check_text(path: Path, encoding: str = "utf-8", *, hint: str = "") -> None:
    """:class:`ImportFileError` naming the first line ``encoding`` cannot read (or that holds
    a NUL); ``hint`` is added to the reason. A good file is read in large blocks; the slower
    line-by-line reading only runs to name the line of a problem found."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                break
            if b"\x00" in block:
                break
        else:
            return
    _name_bad_line(path, encoding, hint)


def _name_bad_line(path: Path, encoding: str, hint: str) -> None:
    decoder = codecs.getincrementaldecoder(encoding)()
    shown = "UTF-8" if encoding.replace("-", "").lower().startswith("utf8") else encoding
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as exc:
                byte = raw[exc.start : exc.start + 1].hex()
                raise ImportFileError(
                    f"the file is not {shown} (byte 0x{byte} on line {number}, probably a "
                    f"Windows code page); save it as CSV UTF-8 ({_SAVE_AS}){hint}") from None
            if b"\x00" in raw:
                raise ImportFileError(f"line {number} holds a NUL byte: this is not a CSV "
                                      f"text file; {_SAVE_AS}")


def _delimiter(first_line: str) -> str:
    """``,`` unless the header line has more ``;`` or tabs (Excel in some locales)."""
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def csv_dialect(fh: TextIO) -> tuple[str, bool]:
    """(delimiter, whether the first non-blank line is Excel's ``sep=;`` hint) of a CSV text
    file opened with ``newline=""``; the file is left at its start."""
    first = fh.readline()
    while first and not first.strip():
        first = fh.readline()
    fh.seek(0)
    sep_line = _SEP_LINE.fullmatch(first.strip())
    return (sep_line[1], True) if sep_line else (_delimiter(first), False)


def _csv_rows(path: Path, encoding: str = "utf-8-sig") -> Iterator[tuple[int, list[str]]]:
    with path.open("r", encoding=encoding, newline="") as fh:
        delimiter, sep_line = csv_dialect(fh)
        reader = csv.reader(fh, delimiter=delimiter)
        done = 0  # physical lines consumed so far
        try:
            for record in reader:
                if sep_line and record:
                    sep_line = False  # skip the hint, keep counting its line
                else:
                    yield done + 1, record
                done = reader.line_num
        except csv.Error as exc:
            raise ImportFileError(f"CSV unreadable at line {done + 1}: {exc}") from exc


def _xlsx_rows(path: Path) -> Iterator[tuple[int, Sequence[object]]]:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    with path.open("rb") as fh:  # a file object: openpyxl would insist on a .xlsx name
        try:
            workbook = load_workbook(fh, read_only=True, data_only=True)
        except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError,
                ValueError) as exc:
            raise ImportFileError(f"not a readable Excel workbook (.xlsx): {exc}; "
                                  f"{_SAVE_AS}") from exc
        try:
            if not workbook.worksheets:
                raise ImportFileError("the workbook has no sheet")
            sheet = workbook.worksheets[0]
            sheet.reset_dimensions()  # some writers store wrong dimensions: read what is there
            yield from enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1)
        finally:
            workbook.close()


def _is_blank(cells: Sequence[object]) -> bool:
    return all(c is None or (c.isspace() or not c if type(c) is str else _text(c) == "")
               for c in cells)


class RowsFile:
    """An opened subscriber file: its :class:`Header`, then parsed rows by :meth:`take`.

    Use as a context manager (an XLSX workbook stays open while rows are read).
    """

    def __init__(self, path: Path, fmt: FileFormat, *, region: str = "VN") -> None:
        self.path = path
        self.format: FileFormat = fmt
        self.region = region
        self.rows_read = 0
        self._raw: Iterator[tuple[int, Sequence[object]]] = (
            _xlsx_rows(path) if fmt == "xlsx" else _csv_rows(path))
        try:
            self.header = self._read_header()
        except BaseException:
            self.close()
            raise
        self._items = self._parsed()

    def _read_header(self) -> Header:
        for line, cells in self._raw:
            if not _is_blank(cells):
                return map_header(cells, line=line)
        raise ImportFileError("the file has no header row (no rows at all); the first row "
                              "must name the columns, e.g. msisdn,full_name,date_of_birth")

    def _parsed(self) -> Iterator[Subscriber | RowError]:
        for line, cells in self._raw:
            if _is_blank(cells):
                continue
            self.rows_read += 1
            yield parse_row(self.header, line, cells, region=self.region)

    def __iter__(self) -> Iterator[Subscriber | RowError]:
        return self._items

    def take(self, n: int) -> list[Subscriber | RowError]:
        """The next ``n`` parsed rows (fewer at the end of the file)."""
        return list(itertools.islice(self._items, n))

    def close(self) -> None:
        close = getattr(self._raw, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> RowsFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_rows(path: str | Path, *, region: str = "VN") -> RowsFile:
    """Check the file (type, encoding, header) and open it; :class:`ImportFileError` if it
    cannot be used. Reads only the header: call :meth:`RowsFile.take` for rows."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "csv":
        check_text(path)
    return RowsFile(path, fmt, region=region)


# --------------------------------------------------------------------------- import


@dataclass
class _Tally:
    """Counts of one import while it runs (frozen into :class:`ImportReport` at the end)."""

    max_errors: int
    inserted: int = 0
    updated: int = 0
    duplicates: int = 0
    rejected_total: int = 0
    rejected: list[RowError] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # numbers written by earlier batches
    pending: dict[str, Subscriber] = field(default_factory=dict)

    def add(self, item: Subscriber | RowError) -> None:
        if isinstance(item, RowError):
            self.rejected_total += 1
            if len(self.rejected) < self.max_errors:
                self.rejected.append(item)
            return
        if item.msisdn in self.pending or int(item.msisdn) in self.seen:
            self.duplicates += 1
            self.pending.pop(item.msisdn, None)  # the later row wins
        self.pending[item.msisdn] = item

    async def flush(self, store: SubscriberStore, columns: Sequence[str]) -> None:
        if not self.pending:
            return
        written = await store.upsert_detailed(list(self.pending.values()), columns=columns)
        for msisdn, inserted in written.items():
            number = int(msisdn)
            if number in self.seen:  # counted when an earlier batch wrote it
                continue
            if inserted:
                self.inserted += 1
            else:
                self.updated += 1
            self.seen.add(number)
        self.pending.clear()


async def import_file(path: str | Path, store: SubscriberStore, *, region: str = "VN",
                      batch_size: int = BATCH_SIZE,
                      max_errors: int = MAX_ERRORS_KEPT) -> ImportReport:
    """Import a CSV/XLSX subscriber file; :class:`ImportFileError` when it is unusable.

    Batches are committed as they go: if the database fails half way, the rows before stay
    imported and importing the same file again completes it (upserts are idempotent).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    rows_file = await asyncio.to_thread(open_rows, path, region=region)
    tally = _Tally(max_errors=max_errors)
    columns = rows_file.header.columns
    reading: asyncio.Future[list[Subscriber | RowError]] | None = None
    try:
        # The next batch is read and checked (in a thread) while this one is written.
        reading = asyncio.ensure_future(asyncio.to_thread(rows_file.take, batch_size))
        while reading is not None:
            chunk = await reading
            reading = None
            if len(chunk) == batch_size:
                reading = asyncio.ensure_future(asyncio.to_thread(rows_file.take, batch_size))
            for item in chunk:
                tally.add(item)
                if len(tally.pending) >= batch_size:
                    await tally.flush(store, columns)
        await tally.flush(store, columns)
    finally:
        if reading is not None:  # a failed write: let the reader finish before closing
            await asyncio.wait([reading])
        await asyncio.to_thread(rows_file.close)
    report = ImportReport(
        format=rows_file.format,
        rows=rows_file.rows_read,
        imported=tally.inserted + tally.updated,
        inserted=tally.inserted,
        updated=tally.updated,
        duplicates_in_file=tally.duplicates,
        rejected_total=tally.rejected_total,
        rejected=tuple(tally.rejected),
        columns=tuple(c for c in columns if c != "attributes"),
        attributes=tuple(name for _, name in rows_file.header.extras),
        seconds=loop.time() - started,
    )
    log.info("subscribers import (%s, %d rows): %d new, %d updated, %d duplicates in the "
             "file, %d rejected, in %.1f s", report.format, report.rows, report.inserted,
             report.updated, report.duplicates_in_file, report.rejected_total, report.seconds)
    return report
