"""Two gateway processes, one campaign, one SMSC, one carrier account (issue 7, item 3).

Two ``smsgw serve`` subprocesses — as on two hosts: each its own HTTP port, the same Postgres
database, the same Redis db and queue names, the same ``[smpp]`` link with the same carrier
account (``smpp.account`` + ``smpp.account_tps``: a token bucket in Redis shared by both) —
and one ``smsgw smsc-sim`` subprocess with a control port. One care campaign is uploaded
through A, approved through B with another key and started through A; halfway it is paused
through B (A must stop too: its CampaignGate learns it at its runner's next tick) and
resumed through A.

What is checked:

* every recipient gets the message exactly once (the simulator's counts, duplicates and
  first arrivals; the campaign's delivered count), and both processes sent part of it (each
  one's ``smsgw_smpp_submit_results_total`` at ``GET /metrics``; the simulator saw
  2 processes × ``BINDS`` binds);
* the combined rate at the SMSC stays within the account's TPS. The shared bucket lets
  through at most ``burst + rate·T`` segments in any ``T`` seconds, plus the chunks the
  processes prefetched (``RedisTokenBucket`` prefetch: ``max(1, rate // 100)`` tokens each,
  spent within 0.1 s). Arrival times are taken by the simulator when it reads a submit, a
  little after the token was granted, and that delay varies (two busy processes on two shared
  cores), so tokens granted over 1.1 s can reach the SMSC within 1 s: 10 % of the rate is
  allowed for it. Any 1-s window: at most ``1.1·rate + burst + 2·prefetch`` (244 for 200 TPS).
  Over each stretch of sending (before the pause, after the resume): at most
  ``1.02·rate·T + burst + 2·prefetch``. And the account is used, not just respected: the
  busiest second reaches ``PEAK_SHARE`` of the rate, the campaign as a whole ``MIN_SHARE``
  (loose bounds: the machine's cores are shared);
* the pause is honoured by both processes within 2 s of B's answer.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.ratelimit import default_burst
from gateway.store.apikeys import ApiKeyStore
from gateway.store.campaigns import (
    _RELEASE,
    MESSAGE_COLUMNS,
    CampaignStore,
    NewCampaign,
    UploadTail,
)

N = 2000  # recipients
ACCOUNT_TPS = 200.0
BINDS = 2  # per process
BURST = default_burst(ACCOUNT_TPS)  # the account bucket's size (RedisTokenBucket default)
PREFETCH = max(1, int(ACCOUNT_TPS // 100))  # as Gateway._global_bucket sets it
WINDOW_LIMIT = 1.1 * ACCOUNT_TPS + BURST + 2 * PREFETCH  # submits in any 1-s window
# "Close to the limit", loosely: two gateways, the simulator, Postgres and Redis share two
# cores with other work. Measured over 7 runs (load average 5-9 on 2 cores): busiest second
# 146-218 of 200, campaign average (pause excluded) 93-188/s. Asserted: the busiest second
# reaches PEAK_SHARE of the account TPS and the whole campaign MIN_SHARE of it.
PEAK_SHARE = 0.5
MIN_SHARE = 0.3
PAUSE_SETTLE_S = 2.0  # after B answers the pause, nothing may arrive later than this
OK_SERIES = re.compile(
    r'^smsgw_smpp_submit_results_total\{[^}]*status="ESME_ROK"[^}]*\}\s+(\S+)$', re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Procs:
    """The subprocesses of one test; every one is stopped (then killed) in teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with (self.logs / f"{name}.log").open("wb") as out:
            self.running[name] = subprocess.Popen(
                [sys.executable, "-m", "gateway", *args], env={**os.environ, **env},
                stdout=out, stderr=subprocess.STDOUT)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def tails(self) -> str:
        return "\n".join(self.log_tail(name) for name in self.running)

    def stop_all(self) -> None:
        gateways = [p for n, p in self.running.items() if n != "sim"]
        for proc in gateways:  # SIGTERM: unbind and drain, as an operator would stop them
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running.values():
            if proc in gateways:
                try:
                    proc.wait(timeout=15)
                    continue
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def procs(tmp_path: Path, fresh_pg_dsn: str) -> Iterator[Procs]:
    """Depends on the database so that the processes stop before it is dropped."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


class Gw:
    """One gateway process seen through its HTTP API."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"

    async def wait_healthy(self, procs: Procs, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                async with self.http.get(f"{self.base}/healthz") as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        return body
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.25)
        raise AssertionError(f"{self.base} not healthy: {body}\n{procs.tails()}")

    async def call(self, method: str, path: str, key: str, expect: int = 200,
                   **kw: Any) -> dict[str, Any]:
        async with self.http.request(method, f"{self.base}{path}",
                                     headers={"Authorization": f"Bearer {key}"}, **kw) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == expect, (method, path, resp.status, body)
            return body

    async def submits_ok(self) -> int:
        async with self.http.get(f"{self.base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        return int(sum(float(v) for v in OK_SERIES.findall(text)))


class Sim:
    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"

    async def stats(self) -> dict[str, int]:
        async with self.http.get(f"{self.base}/stats") as resp:
            body: dict[str, int] = await resp.json()
            return body

    async def arrivals(self) -> dict[str, float]:
        async with self.http.get(f"{self.base}/arrivals") as resp:
            body: dict[str, float] = await resp.json()
            return body

    async def wait_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await self.stats()
                return
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.2)
        raise AssertionError("the SMSC simulator did not start")


def max_in_window(times: list[float], width: float = 1.0) -> tuple[int, float]:
    """Most arrivals in any half-open window [t, t + width) and where it starts."""
    best, at, j = 0, 0.0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        if i - j + 1 > best:
            best, at = i - j + 1, times[j]
    return best, at


@pytest.mark.slow
async def test_two_gateways_share_a_campaign_and_the_account_tps(
        procs: Procs, fresh_pg_dsn: str, redis_dsn: str) -> None:
    smpp_port, ctl_port = _free_port(), _free_port()
    port_a, port_b = _free_port(), _free_port()
    tag = uuid.uuid4().hex[:10]
    procs.start("sim", ["smsc-sim", "--port", str(smpp_port), "--control-port", str(ctl_port),
                        "--receipt-delay", "0.1"], {})
    common = {
        "SMSGW_DATABASE_DSN": fresh_pg_dsn, "SMSGW_REDIS_DSN": redis_dsn,
        "SMSGW_REDIS_QUEUE_NAME": f"smsgw:test:{tag}",
        "SMSGW_REDIS_BULK_QUEUE_NAME": f"smsgw:test-bulk:{tag}",
        "SMSGW_SMPP_PORT": str(smpp_port), "SMSGW_SMPP_BINDS": str(BINDS),
        "SMSGW_SMPP_ACCOUNT": f"shared-{tag}", "SMSGW_SMPP_ACCOUNT_TPS": str(ACCOUNT_TPS),
        "SMSGW_SMPP_RECONNECT_MIN_S": "0.2", "SMSGW_SMPP_RECONNECT_MAX_S": "1",
        "SMSGW_GREETINGS_ENABLED": "false",
        # small jobs: an arq worker starts every job it finds in one poll, so with few large
        # jobs (a 2,000-message campaign) one process could take them all before the other
        # polls; sharing is what this test is about
        "SMSGW_CAMPAIGNS_JOB_SIZE": "50",
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        sim = Sim(http, ctl_port)
        await sim.wait_up()
        procs.start("gw-a", ["serve"], {**common, "SMSGW_HTTP_PORT": str(port_a)})
        procs.start("gw-b", ["serve"], {**common, "SMSGW_HTTP_PORT": str(port_b)})
        a, b = Gw(http, port_a), Gw(http, port_b)
        for gw in (a, b):
            health = await gw.wait_healthy(procs)
            assert len(health["smpp"]["binds"]) == BINDS, health
        stats = await sim.stats()
        assert stats["bound"] == 2 * BINDS, stats  # both processes hold their binds

        pool = await asyncpg.create_pool(fresh_pg_dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            keys = ApiKeyStore(pool)
            _, maker = await keys.create(f"maker-{tag}", ("campaigns:write",), rate_per_s=0)
            _, checker = await keys.create(f"checker-{tag}",
                                           ("campaigns:write", "campaigns:approve"),
                                           rate_per_s=0)
        finally:
            await pool.close()

        # -- upload through A, approve through B (another key), start through A ------------
        base = 10_000_000 + uuid.uuid4().int % 80_000_000
        numbers = [f"09{base + i:08d}" for i in range(N)]
        content = ("so_dien_thoai,ho_ten\n" + "\n".join(
            f"{n},Khach {i}" for i, n in enumerate(numbers))).encode()
        form = aiohttp.FormData()
        form.add_field("file", content, filename="two-gateways.csv", content_type="text/csv")
        for k, v in {"name": "two gateways", "class": "care",
                     "text": "Chao {{ ho_ten }}, cam on quy khach."}.items():
            form.add_field(k, v)
        view = await a.call("POST", "/v1/campaigns", maker, expect=201, data=form)
        assert view["upload"]["accepted"] == N, view["upload"]
        cid = view["id"]
        await b.call("POST", f"/v1/campaigns/{cid}/approve", checker)
        started = await a.call("POST", f"/v1/campaigns/{cid}/start", maker)
        assert started["status"] == "running"
        t_start = time.time()

        # -- halfway: both processes sending, then pause through B -------------------------
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            stats = await sim.stats()
            if stats["parts_received"] >= 0.35 * N:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"campaign too slow to start: {stats}\n{procs.tails()}")
        ok_a, ok_b = await a.submits_ok(), await b.submits_ok()
        assert ok_a > 0 and ok_b > 0, (ok_a, ok_b)  # both take part before the pause
        t_pause_asked = time.time()
        paused = await b.call("POST", f"/v1/campaigns/{cid}/pause", checker)
        t_pause = time.time()
        assert paused["status"] == "paused"
        await asyncio.sleep(PAUSE_SETTLE_S)
        at_settle = await sim.stats()
        await asyncio.sleep(1.0)
        after_settle = await sim.stats()
        arrivals = await sim.arrivals()
        sent_before_resume = len(arrivals)
        last_before_resume = max(arrivals.values())
        pause_latency = last_before_resume - t_pause_asked
        late = sorted(t - t_pause for t in arrivals.values() if t > t_pause + PAUSE_SETTLE_S)
        assert not late, f"{len(late)} submit(s) more than {PAUSE_SETTLE_S}s after the pause"
        assert after_settle["parts_received"] == at_settle["parts_received"]
        assert 0 < sent_before_resume < N
        seen_by_a = await a.call("GET", f"/v1/campaigns/{cid}", maker)
        assert seen_by_a["status"] == "paused"
        counts = seen_by_a["progress"]["counts"]
        assert counts["queued"] == counts["submitting"] == 0, counts

        # -- resume through A and finish ---------------------------------------------------
        await a.call("POST", f"/v1/campaigns/{cid}/resume", maker)
        t_resume = time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = await b.call("GET", f"/v1/campaigns/{cid}", checker)
            if view["status"] == "completed" and view["progress"]["counts"]["delivered"] == N:
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError(f"not finished: {view['status']} {view['progress']}\n"
                                 f"{procs.tails()}")
        t_done = time.time()
        stats = await sim.stats()
        arrivals = await sim.arrivals()
        ok_a, ok_b = await a.submits_ok(), await b.submits_ok()
        conn = await asyncpg.connect(fresh_pg_dsn)
        try:  # messages a gate withdrew (or held unsent) because the campaign was not running
            held: dict[str, int] = {}
            for r in await conn.fetch(
                    "SELECT e.detail, extract(epoch FROM e.at)::float8 AS at FROM message_events e"
                    " JOIN messages m ON m.id = e.message_id"
                    " WHERE m.campaign_id = $1 AND e.status = 'held'", uuid.UUID(cid)):
                phase = "run" if r["at"] < t_pause_asked else (
                    "pause" if r["at"] < t_resume else "resume")
                key = f"{phase}: {r['detail']}"
                held[key] = held.get(key, 0) + 1
        finally:
            await conn.close()

    # -- exactly once ----------------------------------------------------------------------
    assert stats["duplicates"] == 0, stats
    assert stats["parts_received"] == stats["messages"] == stats["messages_total"] == N, stats
    assert sorted(arrivals) == sorted("84" + n[1:] for n in numbers)
    assert ok_a + ok_b == N, (ok_a, ok_b)
    # both processes' binds were counted by the SMSC (2 processes x BINDS; more = reconnects)
    assert stats["binds"] >= 2 * BINDS and stats["bound"] == 2 * BINDS, stats
    share_a = ok_a / N
    # both did a real share; the balance follows which arq worker polls first (under a
    # loaded CI machine it has been 82/18), and is not what the product promises
    assert 0.1 <= share_a <= 0.9, f"one process did most of it: A {ok_a}, B {ok_b}"

    # -- the account's TPS -----------------------------------------------------------------
    times = sorted(arrivals.values())
    peak, peak_at = max_in_window(times)
    before = [t for t in times if t <= t_resume]
    after = [t for t in times if t > t_resume]
    report = {
        "messages": N, "sent_by_a": ok_a, "sent_by_b": ok_b,
        "max_1s": peak, "max_1s_at_s": round(peak_at - t_start, 2),
        "window_limit": WINDOW_LIMIT,
        "pause_answer_s": round(t_pause - t_pause_asked, 3),
        "last_submit_after_pause_asked_s": round(pause_latency, 3),
        "held_events": held,
        "sent_before_resume": sent_before_resume,
        "total_s": round(t_done - t_start, 1),
    }
    for name, stretch in (("before_pause", before), ("after_resume", after)):
        span = stretch[-1] - stretch[0]
        report[f"{name}_n"] = len(stretch)
        report[f"{name}_rate"] = round((len(stretch) - 1) / span, 1) if span > 0 else None
    sending_s = sum(st[-1] - st[0] for st in (before, after))
    report["overall_rate"] = round(N / sending_s, 1)
    print("two gateways:", report)
    assert peak <= WINDOW_LIMIT, report
    for stretch in (before, after):  # never above the account rate over a stretch either
        span = stretch[-1] - stretch[0]
        assert len(stretch) <= 1.02 * ACCOUNT_TPS * span + BURST + 2 * PREFETCH + 1, report
    # ... and close to it: loose, the two cores are shared with whatever else runs
    assert peak >= PEAK_SHARE * ACCOUNT_TPS, report
    assert N / sending_s >= MIN_SHARE * ACCOUNT_TPS, report


# --------------------------------------------------------------------------- release vs pause


async def _held(campaign_id: uuid.UUID, n: int) -> AsyncIterator[bytes]:
    """COPY text of ``n`` held care messages (MESSAGE_COLUMNS)."""
    base = 900_000_000 + uuid.uuid4().int % 90_000_000
    for i in range(n):
        row = {"id": str(uuid.uuid4()), "msisdn": f"84{base + i}", "body": f"Chao {i}",
               "encoding": "gsm7", "segments": "1", "campaign_line": str(i + 1),
               "sender": "CSKH", "template": "\\N", "class": "care", "priority": "5",
               "khong_dau": "f", "status": "held", "campaign_id": str(campaign_id),
               "advertiser": "CSKH", "api_key_id": "\\N"}
        yield ("\t".join(row[c] for c in MESSAGE_COLUMNS) + "\n").encode()


async def test_a_release_racing_a_pause_never_leaves_messages_queued(
        pg_pool: asyncpg.Pool) -> None:
    """Another process's runner read the campaign as running just before a pause: its
    release either waits for the pause and releases nothing, or the pause waits for it and
    hold_queued then takes back what it released."""
    store = CampaignStore(pg_pool)
    cid = uuid.uuid4()
    await store.ingest(NewCampaign(
        id=cid, name="race", message_class="care", sender="CSKH", advertiser="CSKH",
        template=None, source="Chao", file_name="race.csv", created_by=None, schedule_at=None),
        _held(cid, 20), lambda: UploadTail((), (), 20, ()))
    for to in ("approved", "running"):
        assert await store.move(cid, to, allowed_from=("draft", "approved"),
                                api_key_id=None) is not None
    now = datetime.now(UTC)

    # 1. the pause's UPDATE of the campaign row comes first (not yet committed)
    async with pg_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        await conn.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", cid)
        release = asyncio.create_task(store.release(cid, 5, now))
        await asyncio.sleep(0.3)
        assert not release.done()  # waits for the pause to commit ...
        await tr.commit()
    assert await release == []  # ... and then sees it paused
    assert (await store.counts(cid))["queued"] == 0

    # 2. the release comes first: the pause waits for it, then holds what it released
    await store.move(cid, "running", allowed_from=("paused",), api_key_id=None)
    async with pg_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        released = await conn.fetch(_RELEASE, cid, 5, now)
        assert len(released) == 5
        pause = asyncio.create_task(store.move(cid, "paused", allowed_from=("running",),
                                               api_key_id=None))
        await asyncio.sleep(0.3)
        assert not pause.done()
        await tr.commit()
    assert await pause is not None
    assert await store.hold_queued(cid, "campaign paused") == 5
    counts = await store.counts(cid)
    assert counts["queued"] == 0 and counts["held"] == 20
