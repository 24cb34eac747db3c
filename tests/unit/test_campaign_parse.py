"""Cutting a campaign CSV into parts, and parts parsed apart giving what one part gives."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import PROJECT_ROOT
from gateway.campaign_parse import (
    Layout,
    PartParser,
    RowSpec,
    copy_text,
    merge_tails,
    part_rows,
    read_layout,
    split_csv,
)
from gateway.domain import MessageClass
from gateway.store.campaigns import MESSAGE_COLUMNS

# cells that stress the quote rules: quoted newlines and delimiters, doubled quotes, a
# quote inside an unquoted field, a field that is only quotes
CELL = st.one_of(
    st.sampled_from(["", "a", "x,y", 'say "hi"', "two\nlines", "cr\r\nlf", '"', '""', "5\" tv",
                     "a;b", "tab\there", " lead", "Nguyễn Văn An"]),
    st.text(alphabet='ab,;"\n\r\t ', max_size=6))


def _layout(delimiter: str = ",", header_line: int = 1) -> Layout:
    return Layout(fmt="csv", codec="utf-8-sig", delimiter=delimiter, header_line=header_line,
                  number_col=0, variables=(("ten", 1),), id_high=1 << 62, id_random=7)


def _write(tmp: Path, text: str, name: str = "list.csv") -> Path:
    path = tmp / name
    path.write_bytes(text.encode("utf-8"))
    return path


def _reference_rows(path: Path) -> list[tuple[int, list[str]]]:
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        out, done = [], 0
        for record in reader:
            out.append((done + 1, record))
            done = reader.line_num
    return out[1:]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(CELL, min_size=1, max_size=4), min_size=1, max_size=40),
       parts=st.integers(2, 6), crlf=st.booleans(), unquoted_stray=st.booleans())
def test_parts_read_exactly_the_rows_of_the_whole_file(
        tmp_path: Path, rows: list[list[str]], parts: int, crlf: bool,
        unquoted_stray: bool) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(["so_dien_thoai", "ten"])
    for row in rows:
        if unquoted_stray:  # what a hand-written export does: a bare quote mid-field
            buf.write(",".join(c.replace("\n", " ").replace("\r", " ").replace(",", " ")
                               for c in row) + ("\r\n" if crlf else "\n"))
        else:
            writer.writerow(row)
    path = _write(tmp_path, buf.getvalue())
    layout = _layout()
    cut = split_csv(path, layout, parts, min_bytes=1)
    assert cut[0].start == 0 and cut[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in itertools.pairwise(cut))
    got = [r for part in cut for r in part_rows(path, layout, part)]
    assert got == _reference_rows(path)


def test_a_large_file_is_cut_near_equal_parts_at_record_starts(tmp_path: Path) -> None:
    lines = ["so_dien_thoai,ten"] + [f'090{i:07d},"Tên\n{i}, ""q"""' for i in range(5000)]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    cut = split_csv(path, _layout(), 4, min_bytes=1)
    assert len(cut) == 4
    size = path.stat().st_size
    for part in cut:
        assert abs((part.end - part.start) - size / 4) < 200
    assert [r for p in cut for r in part_rows(path, _layout(), p)] == _reference_rows(path)


def test_small_files_xlsx_and_old_mac_line_ends_stay_whole(tmp_path: Path) -> None:
    path = _write(tmp_path, "so_dien_thoai,ten\r" + "0901234567,a\r" * 1000)
    assert len(split_csv(path, _layout(), 4, min_bytes=1)) == 1  # lone CRs: not cut
    small = _write(tmp_path, "so_dien_thoai,ten\n0901234567,a\n", "small.csv")
    assert len(split_csv(small, _layout(), 4, min_bytes=1 << 20)) == 1


def _spec(**kw: object) -> RowSpec:
    args: dict[str, object] = dict(
        campaign_id=uuid.uuid4(), message_class=MessageClass.ADVERTISING, sender="KM",
        advertiser="KM", template=None, text="Chào {{ ten }}, ưu đãi {{ tien | vnd }}",
        templates_dir=PROJECT_ROOT / "templates_sms", refusal="Tu choi QC soan TC gui 1234")
    args.update(kw)
    return RowSpec(**args)  # type: ignore[arg-type]


def _fields(block: bytes) -> list[list[str]]:
    return [line.split("\t") for line in block.decode().splitlines()]


def test_parts_give_what_one_part_gives(tmp_path: Path) -> None:
    """Repeats inside a part and across parts, bad numbers, a blank line: the merged tail and
    the COPY lines (ids aside) are those of reading the file as one part."""
    rows = ["so dien thoai,ten,tien", ""]
    for i in range(3000):
        number = f"090{i % 2400:07d}" if i % 7 else "12345"  # repeats and bad numbers
        rows.append(f"{number},Khách {i},{i * 1000}")
    path = _write(tmp_path, "\n".join(rows) + "\n")
    spec = _spec()
    layout = read_layout(path, spec, id_high=0x0123456789AB7CDE, id_random=3)
    assert layout.header_line == 1

    def run(parts: int) -> tuple[list[list[str]], object]:
        cut = split_csv(path, layout, parts, min_bytes=1)
        assert len(cut) == parts
        lines, tails = [], []
        for part in cut:
            parser = PartParser(path, spec, layout, part)
            for block in parser.blocks():
                lines += _fields(block)
            tails.append(parser.tail())
        return lines, merge_tails(tails, layout, samples=3)

    one_lines, one = run(1)
    many_lines, many = run(3)
    assert one.rows == many.rows == 3000  # type: ignore[attr-defined]
    assert len(one.duplicate_ids) == len(many.duplicate_ids) > 0  # type: ignore[attr-defined]
    assert sorted(one.rejects) == sorted(many.rejects)  # type: ignore[attr-defined]
    assert one.samples == many.samples  # type: ignore[attr-defined]
    kept = len(many_lines) - len(many.duplicate_ids)  # type: ignore[attr-defined]
    assert one.by_encoding == many.by_encoding == {  # type: ignore[attr-defined]
        "gsm7": (0, 0), "ucs2": (kept, kept)}
    assert sorted(r[1:] for r in one_lines) == sorted(r[1:] for r in many_lines)
    ids = [r[0] for r in many_lines]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    # the last row of a repeated number is the one kept: the ids to delete are exactly the
    # rows of each number but its last
    line_at = MESSAGE_COLUMNS.index("campaign_line")
    number_at = MESSAGE_COLUMNS.index("msisdn")
    last: dict[str, int] = {}
    for r in many_lines:
        last[r[number_at]] = max(last.get(r[number_at], 0), int(r[line_at]))
    doomed = {uuid.UUID(r[0]) for r in many_lines if int(r[line_at]) != last[r[number_at]]}
    assert set(many.duplicate_ids) == doomed  # type: ignore[attr-defined]
    assert {r[0] for r in many.rejects if r[2] == "duplicate"} == {  # type: ignore[attr-defined]
        int(r[line_at]) for r in many_lines if uuid.UUID(r[0]) in doomed}


def test_copy_text_escapes_what_copy_reads_specially() -> None:
    assert copy_text("plain ưu đãi") == "plain ưu đãi"
    assert copy_text("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
