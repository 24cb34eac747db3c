"""Campaigns end to end: upload → approve (another key) → start → the simulator → report."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.config import CampaignsConfig
from gateway.store.apikeys import ApiKeyStore
from gateway.store.consent import ConsentSource, ConsentStore
from tests.integration.conftest import MakeStack, Stack

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def at_local(hour: int, minute: int = 0) -> Callable[[], datetime]:
    """A clock fixed at today's hh:mm in Ho Chi Minh City."""
    today = datetime.now(HCM).date()
    fixed = datetime(today.year, today.month, today.day, hour, minute, tzinfo=HCM)
    return lambda: fixed.astimezone(UTC)


def to_cp1258(text: str) -> bytes:
    """Windows-1258 as old Vietnamese Windows programs write it: base letters (with their
    circumflex, breve or horn) precomposed, tone marks as separate combining characters."""
    tones = "\u0300\u0301\u0303\u0309\u0323"
    out = []
    for ch in text:
        decomposed = unicodedata.normalize("NFD", ch)
        marks = [m for m in decomposed[1:] if m in tones]
        base = unicodedata.normalize("NFC", decomposed[0] + "".join(
            m for m in decomposed[1:] if m not in tones))
        out.append(base + "".join(marks))
    return "".join(out).encode("cp1258")


class Api:
    def __init__(self, st: Stack, maker: str, checker: str) -> None:
        self.st = st
        self.maker = {"Authorization": f"Bearer {maker}"}
        self.checker = {"Authorization": f"Bearer {checker}"}

    async def upload(self, content: bytes, *, expect: int = 201, filename: str = "list.csv",
                     **fields: str) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", content, filename=filename, content_type="text/csv")
        defaults = {"name": "test", "class": "care", "text": "Chao {{ ho_ten }}"}
        for k, v in {**defaults, **fields}.items():
            form.add_field(k, v)
        async with self.st.http.post(f"{self.st.base}/v1/campaigns", data=form,
                                     headers=self.maker) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == expect, (resp.status, body)
            return body

    async def act(self, cid: str, action: str, *, as_checker: bool = False,
                  expect: int = 200) -> dict[str, Any]:
        async with self.st.http.post(f"{self.st.base}/v1/campaigns/{cid}/{action}",
                                     headers=self.checker if as_checker else self.maker) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == expect, (resp.status, body)
            return body

    async def get(self, cid: str) -> dict[str, Any]:
        async with self.st.http.get(f"{self.st.base}/v1/campaigns/{cid}",
                                    headers=self.maker) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    async def wait_status(self, cid: str, status: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        view = await self.get(cid)
        while view["status"] != status and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            view = await self.get(cid)
        assert view["status"] == status, view["progress"]
        return view

    async def report(self, cid: str, masked: bool = True) -> str:
        async with self.st.http.get(
                f"{self.st.base}/v1/campaigns/{cid}/report.csv?masked={int(masked)}",
                headers=self.maker) as resp:
            assert resp.status == 200
            return await resp.text()


async def make_api(make_stack: MakeStack, **kw: Any) -> Api:
    st = await make_stack(**kw)
    assert st.gw.pool is not None
    keys = ApiKeyStore(st.gw.pool)
    _, maker = await keys.create(f"maker-{uuid.uuid4().hex[:6]}",
                                 ("campaigns:write", "campaigns:approve"),
                                 rate_per_s=0)
    _, checker = await keys.create(f"checker-{uuid.uuid4().hex[:6]}",
                                   ("campaigns:approve", "campaigns:write"), rate_per_s=0)
    return Api(st, maker, checker)


def expected_numbers(outcome: str) -> set[str]:
    from gateway.subscribers_import import parse_msisdn

    lines = {line for line, v in expected_outcomes().items() if v == outcome}
    with (SHARED / "broadcast.csv").open(encoding="utf-8") as fh:
        return {parse_msisdn(row[0]) for n, row in enumerate(csv.reader(fh), start=1)
                if n in lines}


def expected_outcomes() -> dict[int, str]:
    with (SHARED / "broadcast.expected.csv").open(encoding="utf-8") as fh:
        return {int(r["line"]): r["expected"] for r in csv.DictReader(fh)}


async def test_shared_broadcast_list_runs_to_completion(make_stack: MakeStack) -> None:
    api = await make_api(make_stack)
    content = (SHARED / "broadcast.csv").read_bytes()
    view = await api.upload(content, text="Chào {{ ho_ten }}, hạng {{ hang }}: ưu đãi "
                                          "{{ uu_dai_vnd | vnd }}.")
    expected = expected_outcomes()
    up = view["upload"]
    assert up["accepted"] == sum(1 for v in expected.values() if v == "accepted")
    assert up["duplicates"] == sum(1 for v in expected.values() if v == "duplicate")
    assert up["rejected"] == sum(1 for v in expected.values() if v.startswith("rejected"))
    # Which row of a repeated number is kept: we keep the last one (the list's latest
    # word); the sample file keeps the original row, wherever it is. Same numbers either way.
    dup_expected = {line for line, v in expected.items() if v == "duplicate"}
    assert len({r["line"] for r in up["duplicate_rows"]}) == len(dup_expected)
    for row in up["rejected_rows"]:
        assert expected[row["line"]].startswith("rejected"), row
    assert view["status"] == "draft"
    assert view["samples"][0]["encoding"] == "ucs2" and view["samples"][0]["segments"] >= 1
    est = view["estimate"]
    assert est["messages"] == up["accepted"] and est["segments"] >= up["accepted"]
    assert est["by_encoding"]["ucs2"] == up["accepted"]
    assert est["window"] is None  # care: no advertising hours

    cid = view["id"]
    denied = await api.act(cid, "approve", expect=403)  # maker cannot approve
    assert "maker" in denied["error"]["reason"]
    await api.act(cid, "start", expect=409)  # not approved yet
    await api.act(cid, "approve", as_checker=True)
    await api.act(cid, "start")
    done = await api.wait_status(cid, "completed")
    assert done["progress"]["percent"] == 100.0
    assert not api.st.sim.duplicates()  # every accepted number reached the SMSC once
    report = await api.report(cid, masked=False)
    rows = [r for r in csv.reader(io.StringIO(report)) if r and r[0] != "summary"]
    header, data = rows[0], rows[1:]
    assert header[:3] == ["line", "msisdn", "status"]
    sent = [r for r in data if r[2] not in ("duplicate", "rejected", "suppressed")]
    assert len(sent) == up["accepted"]
    assert {r[1] for r in sent} == expected_numbers("accepted")
    assert all(r[2] == "delivered" for r in sent)
    masked = await api.report(cid, masked=True)
    assert "***" in masked


async def _upload_rows(api: Api, content: bytes, **fields: str) -> tuple[dict[str, Any],
                                                                        list[tuple[Any, ...]]]:
    view = await api.upload(content, **fields)
    assert api.st.gw.pool is not None
    rows = await api.st.gw.pool.fetch(
        "SELECT campaign_line, msisdn, body, encoding, segments, status, class FROM messages "
        "WHERE campaign_id = $1 ORDER BY campaign_line", uuid.UUID(view["id"]))
    return view, [tuple(r) for r in rows]


async def test_a_large_list_parsed_by_worker_processes_gives_what_one_thread_gives(
        make_stack: MakeStack) -> None:
    """parse_split_mb tiny: the shared list (and a tricky one) is cut into parts parsed by 3
    worker processes; the answer and every stored message equal the one-thread reading."""
    one = await make_api(make_stack)
    many = await make_api(make_stack, campaigns=CampaignsConfig(parse_workers=3,
                                                                parse_split_mb=0.0005))
    shared = (SHARED / "broadcast.csv").read_bytes()
    tricky_rows = ["so_dien_thoai,ho_ten,uu_dai_vnd"] + [
        f'09{i % 300:08d},"Khách\\{i}\t""{i}""\n(dòng 2)",{i}000' for i in range(900)]
    tricky = "\n".join(tricky_rows)
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("shared", shared, {}), ("tricky", tricky.encode(), {}),
        ("cp1258 with CRLF", to_cp1258(tricky.replace("\n(", "\r\n(").replace(
            "000\n", "000\r\n")), {"encoding": "cp1258"})]
    kept: dict[str, list[tuple[Any, ...]]] = {}
    for name, content, extra in cases:
        fields = {"text": "Chào {{ ho_ten }}, ưu đãi {{ uu_dai_vnd | vnd }}.", **extra}
        a, a_rows = await _upload_rows(one, content, **fields)
        b, b_rows = await _upload_rows(many, content, **fields)
        assert len(content) > 2 * 512  # cut into parts
        assert a["upload"] == b["upload"] and a["samples"] == b["samples"], name
        timeless = {"starts_at", "eta_at"}  # the estimate's times are from now
        assert {k: v for k, v in a["estimate"].items() if k not in timeless} == {
            k: v for k, v in b["estimate"].items() if k not in timeless}, name
        assert a_rows == b_rows and a_rows, name
        stored = {"gsm7": 0, "ucs2": 0}  # the counts the parsers kept equal the stored rows
        for row in a_rows:
            stored[row[3]] += 1
        assert b["estimate"]["by_encoding"] == stored, name
        assert b["estimate"]["segments"] == sum(row[4] for row in a_rows), name
        kept[name] = a_rows
        if name != "shared":
            assert a["upload"]["duplicates"] == 600
    # each number's last row is kept; COPY got the backslash and the newline intact
    assert kept["tricky"][0][2] == 'Chào Khách\\600 "600"\n(dòng 2), ưu đãi 600.000đ.'
    assert [r[2] for r in kept["cp1258 with CRLF"]] == [  # the same text, NFC, \r\n → \n
        r[2] for r in kept["tricky"]]


async def test_a_cancelled_upload_leaves_no_worker_and_nothing_created(
        make_stack: MakeStack, tmp_path: Path) -> None:
    """The upload's task cancelled while its worker processes stream (the gateway stopping,
    say): the workers are killed, the transaction rolled back."""
    import os

    from gateway.campaigns import UploadForm
    from gateway.domain import MessageClass

    st = await make_stack(campaigns=CampaignsConfig(parse_workers=2, parse_split_mb=0.01))
    assert st.gw.campaigns is not None and st.gw.pool is not None
    path = tmp_path / "big.csv"
    path.write_text("so_dien_thoai,ho_ten\n" + "".join(
        f"09{i % 10**8:08d},Khách {i}\n" for i in range(300_000)), encoding="utf-8")
    form = UploadForm(name="cancelled", message_class=MessageClass.CARE, sender="CSKH",
                      advertiser="", template=None, text="Chào {{ ho_ten }}", schedule_at=None,
                      msisdn_column=None, mapping={}, encoding="utf-8", khong_dau=False,
                      file_name=path.name)

    def children() -> list[str]:
        me, found = str(os.getpid()), []
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me and "python" in stat:
                found.append(pid)
        return found

    before = set(children())
    task = asyncio.create_task(st.gw.campaigns.upload(path, form, api_key_id=None))
    deadline = time.monotonic() + 20
    while len(set(children()) - before) < 2:  # both workers started
        assert time.monotonic() < deadline and not task.done(), "no parse workers seen"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # streaming
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(children()) - before == set()  # killed and reaped
    assert await st.gw.pool.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await st.gw.pool.fetchval(
        "SELECT count(*) FROM messages WHERE campaign_id IS NOT NULL") == 0


async def test_a_worker_process_that_fails_creates_nothing(make_stack: MakeStack) -> None:
    """A row the CSV reader refuses far into the file (a field over its size limit): 422
    naming it, and nothing half-created although earlier parts were already stored."""
    api = await make_api(make_stack, campaigns=CampaignsConfig(parse_workers=2,
                                                               parse_split_mb=0.01))
    rows = ["so_dien_thoai,ho_ten"] + [f"09{i:08d},An {i}" for i in range(2000)]
    rows.append("0912345678," + "x" * 200_000)
    body = await api.upload("\n".join(rows).encode(), expect=422)
    assert "line 2002" in body["error"]["reason"] and "field" in body["error"]["reason"]
    assert api.st.gw.pool is not None
    assert await api.st.gw.pool.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await api.st.gw.pool.fetchval(
        "SELECT count(*) FROM messages WHERE campaign_id IS NOT NULL") == 0


async def test_bad_files_answered_clearly_and_nothing_created(make_stack: MakeStack) -> None:
    api = await make_api(make_stack)
    assert api.st.gw.pool is not None
    cases: list[tuple[bytes, str]] = [
        (b"", "empty"),
        (b"so_dien_thoai|ho_ten\n0901234567|An\n", "separated by '|'"),
        (b"ten,tuoi\nAn,20\n", "no phone number column"),
        ("so_dien_thoai,ho_ten\n0901234567,Nguy\xean\n".encode("latin-1"), "cp1258"),
        (b"so_dien_thoai,ho_ten\n", "no rows below its header"),
        (b"so_dien_thoai,ho_ten\nabc,An\n12,Binh\n", "none of its 2 row(s)"),
        (b"so_dien_thoai,ten\n0912345678,An\n", "uses {{ ho_ten }} but the file has no"),
    ]
    for content, needle in cases:
        body = await api.upload(content, expect=422)
        assert needle in body["error"]["reason"], (needle, body)
    assert await api.st.gw.pool.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await api.st.gw.pool.fetchval(
        "SELECT count(*) FROM messages WHERE campaign_id IS NOT NULL") == 0


async def test_bom_semicolons_cp1258_and_bad_numbers(make_stack: MakeStack) -> None:
    api = await make_api(make_stack)
    rows = [f"09{i:08d};Khách {i}" for i in range(90)] + [f"12{i};Bad {i}" for i in range(10)]
    content = "\ufeffso_dien_thoai;ho_ten\n".encode() + "\n".join(rows).encode()
    view = await api.upload(content)
    assert view["upload"]["accepted"] == 90 and view["upload"]["rejected"] == 10
    assert all(r["reason"] for r in view["upload"]["rejected_rows"])
    cp = to_cp1258("so_dien_thoai,ho_ten\n0912345678,Nguyễn Thị Hà\n")
    body = await api.upload(cp, expect=422)
    assert "encoding=cp1258" in body["error"]["reason"]
    body = await api.upload(cp, expect=422, encoding="hex")
    assert body["error"]["field"] == "encoding"
    body = await api.upload(cp, expect=422, schedule_at="0001-01-01T00:00:00+23:59")
    assert body["error"]["field"] == "schedule_at"
    view = await api.upload(cp, encoding="cp1258")
    assert view["samples"][0]["text"] == "Chao Nguyễn Thị Hà"


async def test_advertising_labelled_suppressed_and_held_outside_hours(
        make_stack: MakeStack) -> None:
    api = await make_api(make_stack, clock=at_local(22, 30))
    st = api.st
    assert st.gw.pool is not None
    consent = ConsentStore(st.gw.pool)
    nums = [f"849{uuid.uuid4().int % 10**8:08d}" for _ in range(6)]
    await consent.add_dnc([nums[0]], source="test-dnc")
    await consent.refuse(nums[1], source=ConsentSource.API, source_ref="test",
                         at=datetime.now(UTC))
    content = ("so_dien_thoai,ho_ten\n" + "\n".join(f"{n},An" for n in nums)).encode()
    view = await api.upload(content, **{"class": "advertising", "text": "Uu dai cho {{ ho_ten }}"})
    assert view["upload"]["accepted"] == 4
    assert view["upload"]["suppressed"] == {"opted_out": 1, "dnc": 1}
    assert view["estimate"]["messages"] == 4  # the suppressed rows taken off the counts
    assert view["estimate"]["by_encoding"] == {"gsm7": 4, "ucs2": 0}
    assert {r["reason"] for r in view["upload"]["suppressed_rows"]} == {"opted out",
                                                                         "Do-Not-Call"}
    text = view["samples"][0]["text"]
    assert text.startswith("[QC] ") and text.endswith("Tu choi QC soan TC gui 1234")
    assert view["estimate"]["window"].startswith("07:00–22:00")
    starts = datetime.fromisoformat(view["estimate"]["starts_at"]).astimezone(HCM)
    assert (starts.hour, starts.minute) == (7, 0)
    cid = view["id"]
    await api.act(cid, "approve", as_checker=True)
    await api.act(cid, "start")
    await asyncio.sleep(1.5)  # several runner ticks: nothing may go at 22:30
    view = await api.get(cid)
    assert view["status"] == "running"
    assert view["progress"]["counts"]["held"] == 4
    assert not st.sim.first_arrivals()


async def test_pause_resume_cancel_take_effect(make_stack: MakeStack) -> None:
    api = await make_api(make_stack, smpp={"tps": 20})
    n = 200
    content = ("so_dien_thoai,ho_ten\n" + "\n".join(
        f"09{uuid.uuid4().int % 10**8:08d},An" for _ in range(n))).encode()
    view = await api.upload(content)
    accepted = view["upload"]["accepted"]
    cid = view["id"]
    await api.act(cid, "approve", as_checker=True)
    await api.act(cid, "start")
    await asyncio.sleep(1.5)
    await api.act(cid, "pause")
    await asyncio.sleep(0.5)  # what was in the window is answered
    sent_at_pause = len(api.st.sim.first_arrivals())
    await asyncio.sleep(1.5)
    assert len(api.st.sim.first_arrivals()) == sent_at_pause  # nothing more after the ack
    assert 0 < sent_at_pause < accepted
    view = await api.get(cid)
    assert view["status"] == "paused"
    assert view["progress"]["counts"]["queued"] == 0
    await api.act(cid, "resume")
    done = await api.wait_status(cid, "completed", timeout=60)
    assert done["progress"]["counts"]["delivered"] + done["progress"]["counts"]["submitted"] \
        == accepted
    assert len(api.st.sim.first_arrivals()) == accepted
    assert not api.st.sim.duplicates()

    view = await api.upload(content)
    cid2 = view["id"]
    await api.act(cid2, "approve", as_checker=True)
    await api.act(cid2, "start")
    await asyncio.sleep(1.0)
    await api.act(cid2, "cancel")
    await asyncio.sleep(1.5)
    view = await api.get(cid2)
    counts = view["progress"]["counts"]
    assert view["status"] == "cancelled"
    assert counts["held"] == counts["queued"] == counts["submitting"] == 0
    assert counts["cancelled"] > 0


async def test_schedule_in_the_future_waits(make_stack: MakeStack) -> None:
    api = await make_api(make_stack)
    when = (api.st.gw.clock().astimezone(HCM) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    view = await api.upload(b"so_dien_thoai,ho_ten\n0912345678,An\n", schedule_at=when)
    cid = view["id"]
    await api.act(cid, "approve", as_checker=True)
    started = await api.act(cid, "start")
    assert started["status"] == "scheduled"
    await asyncio.sleep(1.0)
    assert (await api.get(cid))["status"] == "scheduled"
    paused = await api.act(cid, "pause")
    assert paused["status"] == "paused"


@pytest.mark.parametrize("fmt", ["xlsx"])
async def test_xlsx_upload(make_stack: MakeStack, fmt: str, tmp_path: Path) -> None:
    from openpyxl import Workbook

    api = await make_api(make_stack)
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Số điện thoại", "Họ tên", "Số tiền"])
    ws.append([912345678, "Trần An", 150000])
    ws.append(["+84 912 345 679", "Lê Bình", 2000])
    path = tmp_path / "list.xlsx"
    wb.save(path)
    view = await api.upload(path.read_bytes(), filename="list.xlsx",
                            text="{{ ho_ten }}: {{ so_tien | vnd }}")
    assert view["upload"]["accepted"] == 2
    assert sorted(s["text"] for s in view["samples"]) == ["Lê Bình: 2.000đ",
                                                            "Trần An: 150.000đ"]


async def test_mapping_and_number_column_by_name(make_stack: MakeStack) -> None:
    api = await make_api(make_stack)
    content = "Mã KH,Điện thoại liên hệ,Tên\nK1,0912 345 678,Hà\n".encode()
    body = await api.upload(content, text="Chào {{ khach }}", expect=422)
    assert "no phone number column" in body["error"]["reason"]
    view = await api.upload(content, text="Chào {{ khach }}",
                            msisdn_column="Điện thoại liên hệ",
                            mapping='{"khach": "Tên"}')
    assert view["upload"]["accepted"] == 1
    assert view["samples"][0]["text"] == "Chào Hà"
