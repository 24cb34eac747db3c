"""Campaign send: a 100,000-recipient campaign from start to every receipt stored.

The SMSC simulator runs in a separate process with delivery receipts on; the gateway
(``Gateway``: arq workers, campaign runner, SMPP binds, ledger writer) runs in this one, on a
scratch database and Redis db removed afterwards. The campaign (a care notice by default, so
the advertising hours never hold it; ``--class advertising`` runs with the gateway's clock
fixed at 10:00 Ho Chi Minh time) is uploaded through ``CampaignService.upload``, approved by
another key and started; the clock runs from ``start`` until every message is ``delivered``
in Postgres. Figures come from Postgres's own times (``started_at``, ``submitted_at``,
``done_at``), the finish is detected by polling once a second.

Target ≥ 2,000 msg/s end to end on 2 cores.

    python3 bench/campaign_send.py [--messages 100000 | --quick] [--class care|advertising]
        [--binds 4] [--window 50] [--tps 10000] [--job-size N] [--lookahead-s S]
        [--min-release N] [--receipt-delay 0.05] [--repeat 1] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simtools import add_quick, apply_quick, control, free_port, print_result, start_simulator

from gateway import PROJECT_ROOT
from gateway.campaigns import UploadForm
from gateway.config import (
    CampaignsConfig,
    Config,
    DatabaseConfig,
    HttpConfig,
    RedisConfig,
    SendingConfig,
    SmppConfig,
)
from gateway.domain import MessageClass
from gateway.service import Gateway
from gateway.store.migrate import ensure_database, migrate_dsn

ADMIN = os.environ.get("SMSGW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
TEXTS = {
    "care": "Kính gửi {{ ho_ten }}, cước tháng 11 là {{ so_tien | vnd }}. Cảm ơn quý khách.",
    "advertising": "{{ ho_ten }} ơi, nạp thẻ hôm nay tặng {{ so_tien | vnd }}",
}


def ten_am_local() -> Callable[[], datetime]:
    """A clock fixed at today's 10:00 in Ho Chi Minh City (inside the advertising window)."""
    today = datetime.now(HCM).date()
    fixed = datetime(today.year, today.month, today.day, 10, 0, tzinfo=HCM).astimezone(UTC)
    return lambda: fixed


def write_list(path: Path, n: int) -> None:
    rnd = random.Random(11)
    subs = rnd.sample(range(10**7), n)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["so_dien_thoai", "ho_ten", "so_tien"])
        for i, sub in enumerate(subs):
            w.writerow([f"09{i % 10 if i % 10 not in (5,) else 1}{sub:07d}",
                        rnd.choice(("Nguyễn Văn An", "Trần Thị Bình", "Lê Hữu Châu")),
                        rnd.randrange(50, 900) * 1000])


async def _claim_redis_db() -> int:
    for db in range(1, 16):  # the tests search from 15 down
        client = aioredis.Redis(db=db)
        try:
            if await client.dbsize() == 0 and await client.set("smsgw:bench-claim", "1", nx=True):
                return db
        finally:
            await client.aclose()
    raise SystemExit("no empty Redis db for the benchmark")


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process on this machine (Linux /proc), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _pg_cpu_s(pool: asyncpg.Pool) -> float:
    """CPU of the Postgres backends serving the benchmark's database (same machine)."""
    pids = [r["pid"] for r in await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    return sum(_proc_cpu_s(pid) for pid in pids)


async def _wait_done(pool: asyncpg.Pool, cid: uuid.UUID, n: int, timeout: float
                     ) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        rows = await pool.fetch("SELECT status, count(*) AS n FROM messages "
                                "WHERE campaign_id = $1 GROUP BY status", cid)
        counts = {r["status"]: r["n"] for r in rows}
        if os.environ.get("BENCH_TRACE"):
            print(counts, flush=True)
        if counts.get("delivered", 0) >= n or sum(
                v for k, v in counts.items() if k in ("held", "queued", "submitting",
                                                      "submitted")) == 0:
            break
        await asyncio.sleep(1.0)
    return counts


async def one_run(args: argparse.Namespace, list_path: Path) -> dict[str, Any]:
    db = f"smsgw_bench_{uuid.uuid4().hex[:8]}"
    dsn = ADMIN.rpartition("/")[0] + f"/{db}"
    redis_db = await _claim_redis_db()
    port, ctl = free_port(), free_port()
    sim: subprocess.Popen[bytes] | None = None
    gw: Gateway | None = None
    try:
        await ensure_database(dsn)
        sim = start_simulator(port, "--receipt-delay", str(args.receipt_delay),
                              control_port=ctl)
        await migrate_dsn(dsn, PROJECT_ROOT / "sql")
        campaigns = CampaignsConfig()
        campaigns = replace(campaigns, **{k: v for k, v in (
            ("job_size", args.job_size), ("lookahead_s", args.lookahead_s),
            ("min_release", args.min_release)) if v is not None})
        cfg = Config(database=DatabaseConfig(dsn=dsn, max_connections=20),
                     redis=RedisConfig(dsn=f"redis://127.0.0.1:6379/{redis_db}"),
                     http=HttpConfig(port=0),
                     smpp=SmppConfig(port=port, window=args.window, binds=args.binds,
                                     tps=args.tps),
                     sending=SendingConfig(sweep_interval_s=3600), campaigns=campaigns)
        advertising = args.message_class == "advertising"
        gw = Gateway(cfg, http=False, **({"clock": ten_am_local()} if advertising else {}))
        await gw.start()
        assert gw.pool is not None and gw.campaigns is not None
        if not await gw.wait_bound(10):
            raise SystemExit("the gateway did not bind to the simulator")
        form = UploadForm(name="bench", message_class=MessageClass(args.message_class),
                          sender="CSKH" if not advertising else "KHUYENMAI",
                          advertiser="", template=None, text=TEXTS[args.message_class],
                          schedule_at=None, msisdn_column=None, mapping={}, encoding="utf-8",
                          khong_dau=False, file_name=list_path.name)
        t0 = time.perf_counter()
        view = await gw.campaigns.upload(list_path, form, api_key_id=1)
        upload_s = time.perf_counter() - t0
        cid = uuid.UUID(view["id"])
        n = view["upload"]["accepted"]
        await gw.campaigns.approve(cid, api_key_id=2)
        prof: Any = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        cpu0, sim0 = _cpu_s(), _proc_cpu_s(sim.pid)
        pg0 = await _pg_cpu_s(gw.pool)
        started = time.perf_counter()
        await gw.campaigns.start(cid, api_key_id=2)
        counts = await _wait_done(gw.pool, cid, n, timeout=max(300.0, n / 100))
        wall_s = time.perf_counter() - started
        cpu = {"gateway": _cpu_s() - cpu0, "simulator": _proc_cpu_s(sim.pid) - sim0,
               "postgres": await _pg_cpu_s(gw.pool) - pg0}
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        row = await gw.pool.fetchrow(
            "SELECT extract(epoch FROM max(m.submitted_at) - c.started_at) AS submitted_s, "
            "extract(epoch FROM max(m.done_at) - c.started_at) AS done_s, "
            "sum(m.segments) AS segments "
            "FROM messages m JOIN campaigns c ON c.id = m.campaign_id "
            "WHERE m.campaign_id = $1 GROUP BY c.started_at", cid)
        stats = control(ctl, "/stats")
        delivered = counts.get("delivered", 0)
        done_s = float(row["done_s"])
        return {"class": args.message_class, "messages": n, "segments": int(row["segments"]),
                "delivered": delivered, "upload_s": upload_s,
                "submitted_s": float(row["submitted_s"]), "done_s": done_s,
                "wall_s": wall_s, "msg_per_s": delivered / done_s,
                "sim": {k: v for k, v in stats.items() if isinstance(v, int | float)},
                "cpu": cpu,
                "counts": counts}
    finally:
        if gw is not None:
            await gw.stop(5)
        if sim is not None:
            sim.terminate()
            sim.wait(5)
        admin = await asyncpg.connect(ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
        r = aioredis.Redis(db=redis_db)
        await r.flushdb()
        await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    add_quick(ap)  # 10,000 messages
    ap.add_argument("--class", dest="message_class", choices=("care", "advertising"),
                    default="care")
    ap.add_argument("--binds", type=int, default=4)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--tps", type=float, default=10_000.0,
                    help="the link's TPS (0 = no limit of ours; the campaign runner then "
                         "assumes 100/s for its look-ahead)")
    ap.add_argument("--job-size", type=int, help="campaigns.job_size (default: the config's)")
    ap.add_argument("--lookahead-s", type=float, help="campaigns.lookahead_s")
    ap.add_argument("--min-release", type=int, help="campaigns.min_release")
    ap.add_argument("--receipt-delay", type=float, default=0.05)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", help="cProfile the gateway process into this file")
    args = apply_quick(ap, ap.parse_args(), messages=10_000)
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-send-"))
    runs: list[dict[str, Any]] = []
    try:
        list_path = tmp / "list.csv"
        write_list(list_path, args.messages)
        for _ in range(args.repeat):
            runs.append(asyncio.run(one_run(args, list_path)))
    finally:
        with contextlib.suppress(OSError):
            (tmp / "list.csv").unlink()
            tmp.rmdir()
    cc = CampaignsConfig()
    print(f"Campaign send, {os.cpu_count()} CPU(s): {args.message_class} campaign, "
          f"simulator in its own process (receipts after {args.receipt_delay} s), gateway in "
          f"this one: {args.binds} bind(s) × window {args.window}, link tps {args.tps:g}, "
          f"campaigns.job_size {args.job_size or cc.job_size}, lookahead_s "
          f"{args.lookahead_s or cc.lookahead_s}, min_release "
          f"{args.min_release or cc.min_release}")
    print()
    print("| messages | segments | delivered | all submitted after s | all delivered after s "
          "| msg/s end to end | CPU s: gateway / simulator / Postgres |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        c = r["cpu"]
        print(f"| {r['messages']:,} | {r['segments']:,} | {r['delivered']:,} | "
              f"{r['submitted_s']:.1f} | {r['done_s']:.1f} | {r['msg_per_s']:,.0f} | "
              f"{c['gateway']:.1f} / {c['simulator']:.1f} / {c['postgres']:.1f} |")
    for r in runs:
        if r["delivered"] < r["messages"]:
            print(f"\nnot all delivered: {r['counts']}")
    best = max(runs, key=lambda r: r["msg_per_s"])
    print()
    print_result("campaign_send", throughput_per_s=best["msg_per_s"], unit="msg/s",
                 note=f"{best['messages']:,} {args.message_class} messages, start → every "
                      f"receipt stored, best of {len(runs)}",
                 messages=best["messages"], submitted_s=best["submitted_s"],
                 delivered_s=best["done_s"])


if __name__ == "__main__":
    main()
