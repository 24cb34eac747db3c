"""Subscriber store, file import, HTTP import/lookup and the CLI against a real Postgres.

Tests that count rows use a database of their own (``fresh_pg_dsn``); the others use unique
numbers in the run's shared database.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import openpyxl
import pytest
from aiohttp.test_utils import TestClient, TestServer

import gateway
from gateway.config import SendingConfig
from gateway.http import subscribers as subscribers_http
from gateway.http.app import create_app
from gateway.intake import Intake
from gateway.store.apikeys import ApiKeyStore
from gateway.store.messages import MessageStore
from gateway.store.subscribers import Subscriber, SubscriberStore
from gateway.subscribers_import import ImportFileError, import_file
from gateway.templating import TemplateRenderer

SAMPLE = gateway.PROJECT_ROOT.parent / "shared" / "data" / "subscribers.csv"
SCOPE = "subscribers:write"
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture
async def fresh_pool(fresh_pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_pg_dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def store(fresh_pool: asyncpg.Pool) -> SubscriberStore:
    return SubscriberStore(fresh_pool)


def _numbers(n: int) -> list[str]:
    """n fresh national-form numbers in the 096 range, unique per call."""
    base = 960000000 + (uuid.uuid4().int % 9000) * 1000
    return [f"0{base + i}" for i in range(n)]


def _e164(national: str) -> str:
    return "84" + national[1:]


def _csv(tmp_path: Path, text: str, name: str = "subs.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the sample file ------------------------------------------------------------------------


async def test_sample_file_imports_500_subscribers(store: SubscriberStore) -> None:
    report = await import_file(SAMPLE, store)
    assert (report.format, report.rows, report.imported, report.inserted) == ("csv", 500, 500,
                                                                              500)
    assert report.updated == report.duplicates_in_file == report.rejected_total == 0
    assert report.columns == ("msisdn", "full_name", "date_of_birth", "tier", "points",
                              "khong_dau")
    assert await store.count() == 500
    lan = await store.get("84892677732")  # first row: 0892677732,Võ Thu Lan,1983-01-19,...
    assert lan is not None
    assert (lan.full_name, lan.date_of_birth, lan.tier, lan.points, lan.khong_dau,
            lan.status) == ("Võ Thu Lan", date(1983, 1, 19), "Thân thiết", 1961, False,
                            "active")
    assert await store.born_on(2, 29, limit=1000), "the sample has subscribers born on 29/02"


async def test_importing_the_same_file_again_updates(store: SubscriberStore) -> None:
    await import_file(SAMPLE, store)
    before = await store.get("84892677732")
    again = await import_file(SAMPLE, store)
    assert (again.imported, again.inserted, again.updated) == (500, 0, 500)
    assert await store.count() == 500
    after = await store.get("84892677732")
    assert before is not None and after is not None
    assert after.created_at == before.created_at
    assert after.updated_at is not None and before.updated_at is not None
    assert after.updated_at > before.updated_at


# --- bad rows, duplicates, columns ----------------------------------------------------------


async def test_bad_rows_are_reported_and_good_rows_go_in(store: SubscriberStore,
                                                         tmp_path: Path) -> None:
    a, b, c, d, e, f = _numbers(6)
    path = _csv(tmp_path, (
        "msisdn,full_name,date_of_birth,tier,points,khong_dau\n"  # 1
        f"{a},Nguyễn Văn An,1990-05-17,Vàng,100,False\n"  # 2
        "09012,Số Ngắn,1990-05-17,Vàng,100,False\n"  # 3: bad number
        f"{b},Trần Thị Bích,31/02/1990,Bạc,5,True\n"  # 4: bad date
        f"{c},Lê Văn Cường,1985-01-01,Gold,5,False\n"  # 5: unknown tier
        "\n"  # 6: blank
        f"{d},Phạm Thị Dung,02/03/1970,kim cuong,1.250,có\n"  # 7: good (dd/mm, accents off)
        f"{e},Hoàng Văn Em,1999-09-09,Titan,-3,False\n"  # 8: negative points
        f"{f},Vũ Thị Phương,1999-09-09,Titan,3,maybe\n"  # 9: bad boolean
    ))
    report = await import_file(path, store)
    assert (report.rows, report.imported, report.rejected_total) == (7, 2, 5)
    got = [(r.line, r.column, r.value) for r in report.rejected]
    assert got == [(3, "msisdn", "09012"), (4, "date_of_birth", "31/02/1990"),
                   (5, "tier", "Gold"), (8, "points", "-3"), (9, "khong_dau", "maybe")]
    reasons = [r.reason for r in report.rejected]
    assert reasons[0] == "too short"  # as gateway.numbers says it
    assert "no such date" in reasons[1]
    assert "Thân thiết, Bạc, Titan, Vàng, Kim cương" in reasons[2]
    assert "negative" in reasons[3]
    dung = await store.get(_e164(d))
    assert dung is not None
    assert (dung.tier, dung.points, dung.khong_dau, dung.date_of_birth) == (
        "Kim cương", 1250, True, date(1970, 3, 2))
    assert await store.get(_e164(b)) is None
    assert await store.count() == 2


async def test_duplicates_in_the_file_later_row_wins(store: SubscriberStore,
                                                     tmp_path: Path) -> None:
    a, b, c = _numbers(3)
    plus = "+84 " + a[1:4] + " " + a[4:]
    path = _csv(tmp_path, (
        "msisdn,full_name,points\n"
        f"{a},First,1\n{b},Bee,2\n{plus},Second,3\n{c},Cee,4\n{_e164(b)},Bee again,5\n"
        f"{a},Third,6\n"
    ))
    # batches of 2 put some duplicates in the same batch and some in a later one
    report = await import_file(path, store, batch_size=2)
    assert (report.rows, report.imported, report.inserted, report.updated,
            report.duplicates_in_file) == (6, 3, 3, 0, 3)
    first = await store.get(_e164(a))
    bee = await store.get(_e164(b))
    assert first is not None and bee is not None
    assert (first.full_name, first.points, bee.full_name) == ("Third", 6, "Bee again")
    assert await store.count() == 3


async def test_absent_columns_are_kept_and_attributes_merged(store: SubscriberStore,
                                                            tmp_path: Path) -> None:
    (a,) = _numbers(1)
    first = _csv(tmp_path, f"msisdn,full_name,tier,points,goi_cuoc\n{a},An,Vàng,10,MAX90\n",
                 "first.csv")
    second = _csv(tmp_path, f"so_dien_thoai,segment,quan\n{a},sinh_vien,Ba Đình\n",
                  "second.csv")
    await import_file(first, store)
    report = await import_file(second, store)
    assert (report.updated, report.columns, report.attributes) == (
        1, ("msisdn", "segment"), ("quan",))
    sub = await store.get(_e164(a))
    assert sub is not None
    assert (sub.full_name, sub.tier, sub.points, sub.segment) == ("An", "Vàng", 10, "sinh_vien")
    assert sub.attributes == {"goi_cuoc": "MAX90", "quan": "Ba Đình"}


async def test_xlsx_with_an_excel_date_cell(store: SubscriberStore, tmp_path: Path) -> None:
    a, b, c = _numbers(3)
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Số điện thoại", "Họ tên", "Ngày sinh", "Hạng", "Điểm", "Không dấu"])
    ws.append([a, "Nguyễn Thị Mai", datetime(1992, 10, 20), "Vàng", 12500, True])
    ws.append([int(b), "Trần Văn Bình", "15/08/1980", "bac", 300.0, "không"])  # number cell
    ws.append([c, "Lỗi Ngày", "yesterday", "Titan", 1, False])  # row 4: bad date
    ws.cell(row=2, column=3).number_format = "dd/mm/yyyy"
    path = tmp_path / "subs.xlsx"
    wb.save(path)
    report = await import_file(path, store)
    assert (report.format, report.rows, report.imported, report.rejected_total) == (
        "xlsx", 3, 2, 1)
    assert [(r.line, r.column, r.value) for r in report.rejected] == [
        (4, "date_of_birth", "yesterday")]
    mai = await store.get(_e164(a))
    binh = await store.get(_e164(b))
    assert mai is not None and binh is not None
    assert (mai.date_of_birth, mai.tier, mai.points, mai.khong_dau) == (
        date(1992, 10, 20), "Vàng", 12500, True)
    assert (binh.date_of_birth, binh.tier, binh.points, binh.khong_dau) == (
        date(1980, 8, 15), "Bạc", 300, False)


# --- unusable files -------------------------------------------------------------------------


async def test_non_utf8_file_is_refused_and_nothing_imported(store: SubscriberStore,
                                                             tmp_path: Path) -> None:
    good = "".join(f"{n},Nguyen Van A\n" for n in _numbers(1500))  # more than one batch
    path = tmp_path / "cp1258.csv"
    path.write_bytes(b"msisdn,full_name\n" + good.encode() + b"0961234567,Nguy\xean V\xe3n\n")
    with pytest.raises(ImportFileError) as caught:
        await import_file(path, store)
    assert "not UTF-8" in caught.value.reason and "line 1502" in caught.value.reason
    assert "save it as CSV UTF-8" in caught.value.reason
    assert await store.count() == 0


async def test_file_without_a_number_column_is_refused(store: SubscriberStore,
                                                       tmp_path: Path) -> None:
    path = _csv(tmp_path, "ho_ten,ngay_sinh\nNguyễn Văn A,1990-01-01\n")
    with pytest.raises(ImportFileError, match="no phone number column"):
        await import_file(path, store)
    assert await store.count() == 0


# --- a large file ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_50000_rows_import_in_batches(store: SubscriberStore, tmp_path: Path) -> None:
    tiers = ("Thân thiết", "Bạc", "Titan", "Vàng", "Kim cương")
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as fh:
        fh.write("msisdn,full_name,date_of_birth,tier,points,khong_dau,ma_kh\n")
        for i in range(50_000):
            fh.write(f"09{i:08d},Khách hàng {i},{1950 + i % 50}-{1 + i % 12:02d}-"
                     f"{1 + i % 28:02d},{tiers[i % 5]},{i},{i % 2 == 0},KH{i}\n")
    started = time.perf_counter()
    report = await import_file(path, store)
    took = time.perf_counter() - started
    print(f"\n50,000-row CSV: imported in {took:.2f} s ({50_000 / took:,.0f} rows/s)")
    assert (report.rows, report.imported, report.rejected_total) == (50_000, 50_000, 0)
    assert await store.count() == 50_000
    started = time.perf_counter()
    again = await import_file(path, store)
    print(f"50,000-row CSV re-imported (all updates) in {time.perf_counter() - started:.2f} s")
    assert (again.inserted, again.updated) == (0, 50_000)


# --- store queries --------------------------------------------------------------------------


async def test_born_on_pages_through_active_subscribers(store: SubscriberStore) -> None:
    numbers = [_e164(n) for n in _numbers(7)]
    rows = [Subscriber(msisdn=m, full_name=f"S{i}", date_of_birth=date(1980 + i, 5, 17))
            for i, m in enumerate(numbers[:5])]
    rows.append(Subscriber(msisdn=numbers[5], date_of_birth=date(1990, 5, 18)))
    rows.append(Subscriber(msisdn=numbers[6], date_of_birth=date(1991, 5, 17),
                           status="suspended"))
    assert await store.upsert_many(rows) == 7
    pages: list[list[str]] = []
    after = ""
    while page := await store.born_on(5, 17, limit=2, after_msisdn=after):
        pages.append([s.msisdn for s in page])
        after = page[-1].msisdn
    assert pages == [numbers[0:2], numbers[2:4], numbers[4:5]]
    assert await store.set_status(numbers[6], "active")
    assert numbers[6] in [s.msisdn for s in await store.born_on(5, 17)]
    assert not await store.set_status("84999999999", "active")
    with pytest.raises(ValueError, match="active or suspended"):
        await store.set_status(numbers[0], "deleted")


async def test_in_segment_by_tier_and_segment(store: SubscriberStore) -> None:
    a, b, c, d = (_e164(n) for n in _numbers(4))
    await store.upsert_many([
        Subscriber(msisdn=a, tier="Vàng", segment="sinh_vien"),
        Subscriber(msisdn=b, tier="Kim cương", segment="doanh_nghiep"),
        Subscriber(msisdn=c, tier="Bạc", segment="sinh_vien"),
        Subscriber(msisdn=d, tier="Vàng", segment="sinh_vien", status="suspended"),
    ])
    gold = await store.in_segment(tiers=["vang", "KIM CUONG"])
    assert [s.msisdn for s in gold] == [a, b]
    students = await store.in_segment(segment="sinh_vien")
    assert [s.msisdn for s in students] == [a, c]
    assert [s.msisdn for s in await store.in_segment(after_msisdn=a, limit=1)] == [b]
    assert [s.msisdn for s in await store.in_segment(tiers=["Bạc"], segment="sinh_vien")] == [c]
    with pytest.raises(ValueError, match="unknown tier 'Gold'"):
        await store.in_segment(tiers=["Gold"])


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class Api:
    client: TestClient[Any, Any]
    apikeys: ApiKeyStore
    store: SubscriberStore
    key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def upload(self, data: Any, content_type: str | None = "text/csv",
                     key: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = self.auth(key)
        if content_type is not None:
            headers["Content-Type"] = content_type
        resp = await self.client.post("/v1/subscribers/import", data=data, headers=headers)
        return resp.status, await resp.json()


@pytest.fixture
async def api(fresh_pool: asyncpg.Pool) -> AsyncIterator[Api]:
    messages = MessageStore(fresh_pool)
    apikeys = ApiKeyStore(fresh_pool)
    store = SubscriberStore(fresh_pool)
    intake = Intake(store=messages, queue=None, renderer=TemplateRenderer(),
                    sending=SendingConfig())

    async def health() -> dict[str, Any]:
        return {}

    app = create_app(intake=intake, store=messages, apikeys=apikeys, health=health,
                     max_body_bytes=64 * 1024,  # the upload streams past this JSON limit
                     extensions=[functools.partial(subscribers_http.setup, store=store,
                                                   region="VN", max_upload_bytes=4_000_000)])
    _, key = await apikeys.create(f"subs-{uuid.uuid4().hex[:8]}", [SCOPE])
    async with TestClient(TestServer(app)) as client:
        yield Api(client, apikeys, store, key)


async def test_http_import_raw_csv_body(api: Api) -> None:
    status, body = await api.upload(SAMPLE.read_bytes())
    assert status == 200, body
    assert (body["rows"], body["imported"], body["inserted"], body["rejected_total"]) == (
        500, 500, 500, 0)
    assert body["rejected"] == [] and body["rejected_truncated"] is False
    assert await api.store.count() == 500


async def test_http_import_streams_a_body_larger_than_the_json_limit(api: Api) -> None:
    rows = "".join(f"09{i:08d},Khách hàng số {i}\n" for i in range(5_000))  # ~150 kB
    status, body = await api.upload(("msisdn,full_name\n" + rows).encode(),
                                    content_type=None)  # no type: application/octet-stream
    assert status == 200, body
    assert body["imported"] == 5_000


async def test_http_import_multipart_xlsx_and_rejected_rows(api: Api) -> None:
    a, b = _numbers(2)
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["phone", "name", "dob", "hang"])
    ws.append([a, "Mai", datetime(1992, 10, 20), "Vàng"])
    ws.append(["12345", "Bad", None, None])
    ws.append([b, "Bình", None, "Platinum"])
    buf = io.BytesIO()
    wb.save(buf)
    form = aiohttp.FormData()
    form.add_field("note", "list of October")
    form.add_field("file", buf.getvalue(), filename="subs.xlsx", content_type=XLSX_MIME)
    status, body = await api.upload(form, content_type=None)
    assert status == 200, body
    assert (body["format"], body["imported"], body["rejected_total"]) == ("xlsx", 1, 2)
    assert [(r["line"], r["column"], r["value"]) for r in body["rejected"]] == [
        (3, "msisdn", "12345"), (4, "tier", "Platinum")]
    assert all(r["reason"] for r in body["rejected"])


async def test_http_import_multipart_csv(api: Api) -> None:
    (a,) = _numbers(1)
    form = aiohttp.FormData()
    form.add_field("file", f"msisdn,ho_ten\n{a},An\n".encode(), filename="a.csv",
                   content_type="text/csv")
    status, body = await api.upload(form, content_type=None)
    assert status == 200 and body["imported"] == 1


async def test_http_import_caps_the_rejected_list(api: Api) -> None:
    rows = "".join(f"0901{i:03d},bad\n" for i in range(1_200))
    status, body = await api.upload(("msisdn,full_name\n" + rows).encode())
    assert status == 200
    assert body["rejected_total"] == 1_200
    assert len(body["rejected"]) == 1_000 and body["rejected_truncated"] is True
    assert body["rejected"][0]["line"] == 2


async def test_http_import_unusable_files_are_422(api: Api) -> None:
    status, body = await api.upload("msisdn,ho_ten\n0961234567,Nguy\xean\n".encode("cp1252"))
    assert status == 422
    assert body["error"]["field"] == "file"
    assert "not UTF-8" in body["error"]["reason"]
    status, body = await api.upload(b"ho_ten\nAn\n")
    assert status == 422 and "no phone number column" in body["error"]["reason"]
    status, body = await api.upload(b"")
    assert status == 422 and "empty" in body["error"]["reason"]
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="x.csv")
    status, body = await api.upload(form, content_type=None)
    assert status == 400 and "'file' field" in body["error"]["reason"]
    status, body = await api.upload(b'{"msisdn": 1}', content_type="application/json")
    assert status == 415 and "text/csv" in body["error"]["reason"]
    assert await api.store.count() == 0


async def test_http_import_too_large_is_413(api: Api) -> None:
    status, body = await api.upload(b"msisdn\n" + b"0961234567\n" * 400_000)
    assert status == 413 and "split it" in body["error"]["reason"]
    assert await api.store.count() == 0


async def test_http_import_needs_a_key_with_the_scope(api: Api) -> None:
    resp = await api.client.post("/v1/subscribers/import", data=b"msisdn\n0961234567\n",
                                 headers={"Content-Type": "text/csv"})
    assert resp.status == 401
    assert (await resp.json())["error"]["field"] == "Authorization"
    _, other = await api.apikeys.create(f"send-{uuid.uuid4().hex[:8]}", ["messages:send"])
    status, body = await api.upload(b"msisdn\n0961234567\n", key=other)
    assert status == 403 and SCOPE in body["error"]["reason"]
    resp = await api.client.get("/v1/subscribers/0961234567", headers=api.auth(other))
    assert resp.status == 403
    assert await api.store.count() == 0


async def test_http_get_subscriber_in_any_number_format(api: Api) -> None:
    await api.upload(SAMPLE.read_bytes())
    for written in ("0892677732", "84892677732", "+84892677732", "0892 677 732",
                    "0892.677.732"):
        resp = await api.client.get(f"/v1/subscribers/{written}", headers=api.auth())
        assert resp.status == 200, written
        body = await resp.json()
        assert body["msisdn"] == "84892677732"
        assert (body["full_name"], body["date_of_birth"], body["tier"], body["points"]) == (
            "Võ Thu Lan", "1983-01-19", "Thân thiết", 1961)
    resp = await api.client.get("/v1/subscribers/0961234567", headers=api.auth())
    assert resp.status == 404 and (await resp.json())["error"]["field"] == "msisdn"
    resp = await api.client.get("/v1/subscribers/12345", headers=api.auth())
    assert resp.status == 422
    assert "not a usable phone number" in (await resp.json())["error"]["reason"]


# --- CLI ------------------------------------------------------------------------------------


def _run_cli(*argv: str) -> int:
    from gateway.cli_subscribers import add_parser

    parser = argparse.ArgumentParser(prog="smsgw")
    parser.add_argument("--config")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval("SELECT count(*) FROM subscribers")
        return value
    finally:
        await conn.close()


def test_cli_import(fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SMSGW_DATABASE_DSN", fresh_pg_dsn)
    assert _run_cli("subscribers", "import", str(SAMPLE)) == 0
    out = capsys.readouterr().out
    assert "500 rows read (csv); 500 imported (500 new, 0 updated)" in out
    assert asyncio.run(_count(fresh_pg_dsn)) == 500

    bad = _csv(tmp_path, "msisdn,tier\n0961234567,Vàng\n09012,Bạc\n0961234568,Gold\n"
                         "0961234569,Silver\n")
    assert _run_cli("subscribers", "import", str(bad), "--limit-errors", "2") == 0
    out = capsys.readouterr().out
    assert "1 imported" in out and "3 rejected" in out
    assert "first 2 of 3" in out
    assert "line 3: msisdn '09012': too short" in out
    assert "line 4: tier 'Gold': unknown tier" in out
    assert "line 5" not in out

    unusable = _csv(tmp_path, "ho_ten\nAn\n", "noname.csv")
    assert _run_cli("subscribers", "import", str(unusable)) == 1
    err = capsys.readouterr().err
    assert "no phone number column" in err and "nothing was imported" in err
    assert _run_cli("subscribers", "import", str(tmp_path / "missing.csv")) == 1
    assert "cannot read the file" in capsys.readouterr().err
    assert asyncio.run(_count(fresh_pg_dsn)) == 501
