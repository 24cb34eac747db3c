"""Parsing of subscriber files: header mapping, cell values, line numbers. No database."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import openpyxl
import pytest

from gateway.store.subscribers import Subscriber, canonical_tier
from gateway.subscribers_import import (
    ImportFileError,
    RowError,
    _BadValue,
    header_key,
    map_header,
    open_rows,
    parse_bool,
    parse_date,
    parse_msisdn,
    parse_points,
    parse_row,
    parse_status,
    parse_tier,
)

# --- header ---------------------------------------------------------------------------------


def test_header_key_folds_case_accents_and_separators() -> None:
    assert header_key(" Số điện thoại ") == "so_dien_thoai"
    assert header_key("Ngày-Sinh") == "ngay_sinh"
    assert header_key("\ufeffmsisdn") == "msisdn"
    assert header_key(None) == ""


def test_english_header() -> None:
    h = map_header(["msisdn", "full_name", "date_of_birth", "tier", "points", "khong_dau"])
    assert dict(h.fields) == {"msisdn": 0, "full_name": 1, "date_of_birth": 2, "tier": 3,
                              "points": 4, "khong_dau": 5}
    assert h.extras == ()
    assert h.columns == ("msisdn", "full_name", "date_of_birth", "tier", "points", "khong_dau")


def test_vietnamese_header_and_unknown_columns_become_attributes() -> None:
    h = map_header(["Số điện thoại", "Họ tên", "Ngày sinh", "Hạng", "Điểm", "uu_dai_vnd", "",
                    "Trạng thái"])
    assert dict(h.fields) == {"msisdn": 0, "full_name": 1, "date_of_birth": 2, "tier": 3,
                              "points": 4, "status": 7}
    assert h.extras == ((5, "uu_dai_vnd"),)
    assert h.columns[-1] == "attributes"


@pytest.mark.parametrize("name", ["phone", "so_dien_thoai", "SDT", "MSISDN"])
def test_number_column_aliases(name: str) -> None:
    assert map_header(["x", name]).fields["msisdn"] == 1


def test_missing_number_column_is_a_file_error() -> None:
    with pytest.raises(ImportFileError, match=r"no phone number column.*'ho_ten'"):
        map_header(["ho_ten", "ngay_sinh"])


def test_data_instead_of_a_header_is_explained() -> None:
    with pytest.raises(ImportFileError, match="looks like data"):
        map_header(["0901234567", "Nguyễn Văn A"])


def test_two_number_columns_are_a_file_error() -> None:
    with pytest.raises(ImportFileError, match="both give the msisdn"):
        map_header(["phone", "msisdn"])
    with pytest.raises(ImportFileError, match="appears twice"):
        map_header(["msisdn", "note", "Note"])


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("1990-05-17", date(1990, 5, 17)),
    ("1990-5-7", date(1990, 5, 7)),
    ("17/05/1990", date(1990, 5, 17)),
    ("7/5/1990", date(1990, 5, 7)),
    ("17-05-1990", date(1990, 5, 17)),
    ("17.05.1990", date(1990, 5, 17)),
    ("1990-05-17 00:00:00", date(1990, 5, 17)),
    ("2000-02-29", date(2000, 2, 29)),
    (datetime(1990, 5, 17), date(1990, 5, 17)),  # an Excel date cell
    (date(1990, 5, 17), date(1990, 5, 17)),
    ("", None),
    ("  ", None),
    (None, None),
])
def test_dates(raw: object, expected: date | None) -> None:
    assert parse_date(raw) == expected


@pytest.mark.parametrize(("raw", "reason"), [
    ("31/02/1990", "no such date"),
    ("05/17/1990", "no such date"),  # month/day/year is not accepted
    ("2001-02-29", "no such date"),
    ("17 May 1990", "not a date"),
    ("1890-01-01", "before 1900"),
    ("2999-01-01", "in the future"),
    (32647, "not a date"),  # an Excel serial in a cell not formatted as a date
])
def test_bad_dates(raw: object, reason: str) -> None:
    with pytest.raises(_BadValue, match=reason):
        parse_date(raw)


@pytest.mark.parametrize("raw", ["True", "true", "1", "yes", "Yes", "có", "Có", "CO", "x", 1,
                                 True])
def test_true_values(raw: object) -> None:
    assert parse_bool(raw) is True


@pytest.mark.parametrize("raw", ["False", "0", "no", "không", "Khong", "", None, 0, False])
def test_false_values(raw: object) -> None:
    assert parse_bool(raw) is False


def test_bad_boolean() -> None:
    with pytest.raises(_BadValue, match="có/không"):
        parse_bool("maybe")


@pytest.mark.parametrize(("raw", "tier"), [
    ("Vàng", "Vàng"), ("vang", "Vàng"), ("VÀNG", "Vàng"), ("kim cuong", "Kim cương"),
    ("KimCương", "Kim cương"), ("thân thiết", "Thân thiết"), (" Bạc ", "Bạc"), ("titan", "Titan"),
    ("", ""),
])
def test_tiers_are_accent_and_case_insensitive(raw: str, tier: str) -> None:
    assert parse_tier(raw) == tier


def test_unknown_tier_lists_the_tiers() -> None:
    with pytest.raises(_BadValue) as caught:
        parse_tier("Gold")
    assert str(caught.value) == ("unknown tier; the tiers are Thân thiết, Bạc, Titan, Vàng, "
                                 "Kim cương")
    assert canonical_tier("Gold") is None


@pytest.mark.parametrize(("raw", "points"), [
    ("1961", 1961), ("12.500", 12500), ("12,500", 12500), ("1.250.000", 1250000), (" 7 ", 7),
    ("", 0), (None, 0), (12500, 12500), (12500.0, 12500),
])
def test_points(raw: object, points: int) -> None:
    assert parse_points(raw) == points


@pytest.mark.parametrize(("raw", "reason"), [
    ("-5", "negative"), (-5, "negative"), ("12.5", "whole number"), (1.5, "whole number"),
    ("abc", "whole number"), ("99999999999", "too many"), (True, "yes/no"),
])
def test_bad_points(raw: object, reason: str) -> None:
    with pytest.raises(_BadValue, match=reason):
        parse_points(raw)


@pytest.mark.parametrize(("raw", "status"), [
    ("", "active"), ("active", "active"), ("Suspended", "suspended"), ("hoạt động", "active"),
    ("Tạm ngưng", "suspended"),
])
def test_status(raw: str, status: str) -> None:
    assert parse_status(raw) == status


def test_bad_status() -> None:
    with pytest.raises(_BadValue, match="use active or suspended"):
        parse_status("deleted")


def test_numbers_any_usual_form_and_excel_number_cells() -> None:
    for raw in ("0892677732", "+84 892 677 732", "84892677732", "0892.677.732", 892677732,
                892677732.0):
        assert parse_msisdn(raw) == "84892677732"
    with pytest.raises(_BadValue, match=r"^too short$"):
        parse_msisdn("09012")
    with pytest.raises(_BadValue, match=r"^foreign number"):
        parse_msisdn("+1 650 253 0000")


# --- rows -----------------------------------------------------------------------------------


def test_parse_row_good_and_bad() -> None:
    h = map_header(["msisdn", "ho_ten", "ngay_sinh", "hang", "diem", "khong_dau", "ghi_chu"])
    sub = parse_row(h, 2, ["0892677732", " Võ Thu Lan ", "19/01/1983", "thân thiết", "1.961",
                           "có", "VIP"])
    assert sub == Subscriber(msisdn="84892677732", full_name="Võ Thu Lan",
                             date_of_birth=date(1983, 1, 19), tier="Thân thiết", points=1961,
                             khong_dau=True, attributes={"ghi_chu": "VIP"})
    short = parse_row(h, 3, ["0892677732"])  # missing cells are empty
    assert isinstance(short, Subscriber) and short.attributes == {} and short.points == 0
    bad = parse_row(h, 4, ["0892677732", "A", "1983-13-01", "", "", "", ""])
    assert isinstance(bad, RowError) and "no such date" in bad.reason
    assert bad == RowError(4, "1983-13-01", bad.reason, "date_of_birth")
    bad_number = parse_row(h, 5, ["09012", "A"])
    assert bad_number == RowError(5, "09012", "too short", "msisdn")


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _errors(path: Path) -> list[tuple[int, str]]:
    with open_rows(path) as rows:
        return [(item.line, item.column) for item in rows if isinstance(item, RowError)]


def test_csv_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", (
        "\ufeffmsisdn,full_name,date_of_birth,tier\n"  # line 1 (with a BOM)
        "0892677732,Võ Thu Lan,1983-01-19,Bạc\n"  # 2
        "\n"  # 3: blank, skipped
        "09012,Short,1983-01-19,Bạc\n"  # 4: bad number
        '0965039324,"Lê Kim\nViệt",1963-01-02,Vàng\n'  # 5-6: a quoted line break
        "0888776850,Vũ Thị Tâm,26/04/1967,Gold\n"  # 7: unknown tier
        ",,,\n"  # 8: empty cells, skipped
        "0834613053,Dương Kim Nga,2003-02-30,Vàng\n"  # 9: bad date
    ))
    assert _errors(path) == [(4, "msisdn"), (5, "full_name"), (7, "tier"), (9, "date_of_birth")]
    with open_rows(path) as rows:
        items = rows.take(100)
        assert rows.rows_read == 5 and len(items) == 5
        assert rows.header.line == 1 and rows.format == "csv"


def test_csv_semicolon_delimiter(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "so_dien_thoai;ho_ten\n0892677732;Võ Thu Lan\n")
    with open_rows(path) as rows:
        assert rows.take(10) == [Subscriber(msisdn="84892677732", full_name="Võ Thu Lan")]


def test_take_streams_in_chunks(tmp_path: Path) -> None:
    lines = "".join(f"0901{i:06d}\n" for i in range(25))
    path = _write(tmp_path / "s.csv", "msisdn\n" + lines)
    with open_rows(path) as rows:
        sizes = [len(rows.take(10)) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]


def test_not_utf8_is_a_file_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"  # "Nguyên Văn A" in Windows-1258, as Excel saves "CSV"
    path.write_bytes(b"msisdn,ho_ten\n0892677732,Nguy\xean V\xe3n A\n")
    with pytest.raises(ImportFileError, match=r"not UTF-8 .*line 2.*save it as CSV UTF-8"):
        open_rows(path)


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest", "old Excel .xls"),
    ("msisdn\n".encode("utf-16"), "UTF-16"),
    (b"PK\x03\x04not really a zip", "not a readable Excel workbook"),
    (b"\n\n  \n", "no header row"),
    (b"name,dob\nA,1990-01-01\n", "no phone number column"),
])
def test_unusable_files(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=reason):
        open_rows(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read the file"):
        open_rows(tmp_path / "nope.csv")


def test_xlsx_rows_use_sheet_row_numbers_and_excel_cells(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append([])  # row 1 empty: the header is on row 2
    ws.append(["Số điện thoại", "Họ tên", "Ngày sinh", "Điểm", "khong_dau", "Ghi chú"])
    ws.append([892677732, "Võ Thu Lan", datetime(1983, 1, 19), 1961, True, 3.5])  # row 3
    ws.append(["09012", "Bad", None, None, None, None])  # row 4
    ws.append([])  # row 5
    ws.append(["0965039324", "Lê Kim Việt", "02/01/1963", -1, False, None])  # row 6
    path = tmp_path / "s.xlsx"
    wb.save(path)
    with open_rows(path) as rows:
        assert rows.format == "xlsx" and rows.header.line == 2
        items = rows.take(10)
    assert items[0] == Subscriber(msisdn="84892677732", full_name="Võ Thu Lan",
                                  date_of_birth=date(1983, 1, 19), points=1961,
                                  khong_dau=True, attributes={"Ghi chú": 3.5})
    assert [(e.line, e.column) for e in items if isinstance(e, RowError)] == [
        (4, "msisdn"), (6, "points")]


def test_fast_path_for_plain_numbers_agrees_with_normalise_msisdn() -> None:
    from gateway.numbers import VN_MOBILE_PREFIXES, InvalidNumber, normalise_msisdn
    from gateway.subscribers_import import _plain_vn_mobile

    prefixes = sorted(VN_MOBILE_PREFIXES | {"20", "24", "28", "10", "19", "80", "95"})
    for prefix in prefixes:
        for tail in ("0000000", "1234567", "9999999"):
            for written in (f"0{prefix}{tail}", f"84{prefix}{tail}", f"+84{prefix}{tail}"):
                fast = _plain_vn_mobile(written)
                try:
                    slow: str | None = normalise_msisdn(written)
                except InvalidNumber:
                    slow = None
                if fast is not None:  # the fast path may decline, never disagree
                    assert fast == slow, written
                elif prefix in VN_MOBILE_PREFIXES:
                    raise AssertionError(f"{written}: the fast path should take it")
    for other in ("090123456", "09012345678", "0901 234 567", "+8490123456", "0O01234567"):
        assert _plain_vn_mobile(other) is None


def test_excel_sep_hint_line_is_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "sep=;\nmsisdn;ho_ten;hang\n0892677732;An;Gold\n")
    with open_rows(path) as rows:
        assert rows.header.line == 2
        items = rows.take(10)
    assert len(items) == 1 and isinstance(items[0], RowError)
    assert (items[0].line, items[0].column, items[0].value) == (3, "tier", "Gold")
