"""Campaign upload: a 1,000,000-row marketing list → held messages in Postgres.

Writes a CSV the way a marketing team exports one (so_dien_thoai,ho_ten,hang,uu_dai_vnd;
numbers written 0…, 84…, +84…, with spaces, dots or dashes; ~5 % repeated numbers, ~2 % bad
ones) into a temporary directory, puts a few thousand of its numbers on the Do-Not-Call list
and a few hundred in the refused state of a fresh database, then ingests it as an advertising
campaign rendered from a template with variables and a filter.

The ingest runs in a **fresh child process** (the file is generated before it starts) that
reports its own wall time, CPU and peak RSS, and those of the parse worker processes it
starts (one per CPU for a CSV of 4 MB or more), and the peak of all of them together
(sampled every 0.1 s), through:

* ``service`` — ``CampaignService.upload`` (parse, render, label, count, COPY, de-duplicate,
  suppress, count, summary view);
* ``http`` — ``POST /v1/campaigns`` (multipart) to a ``Gateway`` with its HTTP API running in
  the child; the client (this process) streams the file; time = request start → 201.

Targets: ≤ 20 s and ≤ 300 MB for 1,000,000 rows.

    python3 bench/campaign_ingest.py [--rows 1000000 | --quick] [--path service|http|both]
                                     [--repeat 1] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simtools import add_quick, apply_quick, print_result

ADMIN = os.environ.get("SMSGW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TEMPLATE = "Chào {{ ho_ten }}, ưu đãi {{ uu_dai_vnd | vnd }} cho hạng {{ hang }}"
PREFIXES = ("32", "33", "34", "35", "36", "37", "38", "39", "56", "58", "70", "76", "77", "78",
            "79", "81", "82", "83", "84", "85", "86", "88", "90", "91", "93", "94", "96", "97",
            "98")
HO = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi",
      "Đỗ", "Hồ", "Ngô", "Dương", "Lý")
DEM = ("Văn", "Thị", "Hữu", "Ngọc", "Thanh", "Minh", "Kim", "Đức", "Quang", "Thu", "")
TEN = ("An", "Bình", "Châu", "Dũng", "Hà", "Hải", "Hùng", "Lan", "Linh", "Mai", "Nam", "Phúc",
       "Quân", "Sơn", "Thảo", "Trang", "Tuấn", "Vy", "Yến", "Khánh")
HANG = ("Thân thiết", "Bạc", "Titan", "Vàng", "Kim cương")
BAD = ("0901234", "12345", "abc", "0123456789", "090123456789", "+1 415 555 0100", "",
       "0201234567", "84-12", "so dt")


def written(sub: str, rnd: random.Random) -> str:
    """One of the usual ways a marketing export writes the national number ``0`` + sub."""
    r = rnd.random()
    if r < 0.40:
        return "0" + sub
    if r < 0.52:
        return "84" + sub
    if r < 0.62:
        return "+84" + sub
    if r < 0.80:
        return f"0{sub[:3]} {sub[3:6]} {sub[6:]}"
    if r < 0.92:
        return f"0{sub[:3]}.{sub[3:6]}.{sub[6:]}"
    if r < 0.96:
        return f"0{sub[:3]}-{sub[3:]}"
    return f"+84 {sub[:2]} {sub[2:5]} {sub[5:]}"


def generate(path: Path, rows: int, seed: int = 7) -> dict[str, Any]:
    """Write the list; returns the numbers to put on the DNC list / refused, and the mix."""
    rnd = random.Random(seed)
    subs: list[str] = []
    seen: set[str] = set()
    n_dup = n_bad = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["so_dien_thoai", "ho_ten", "hang", "uu_dai_vnd"])
        for _ in range(rows):
            r = rnd.random()
            if r < 0.02:
                number = rnd.choice(BAD)
                n_bad += 1
            elif r < 0.07 and subs:
                number = written(rnd.choice(subs), rnd)  # the same number, maybe written anew
                n_dup += 1
            else:
                while True:
                    sub = rnd.choice(PREFIXES) + f"{rnd.randrange(10**7):07d}"
                    if sub not in seen:
                        break
                seen.add(sub)
                subs.append(sub)
                number = written(sub, rnd)
            name = " ".join(p for p in (rnd.choice(HO), rnd.choice(DEM), rnd.choice(TEN)) if p)
            w.writerow([number, name, rnd.choice(HANG), rnd.randrange(10, 2000) * 1000])
    picks = rnd.sample(subs, 3500)
    return {"dnc": ["84" + s for s in picks[:3000]], "refused": ["84" + s for s in picks[3000:]],
            "distinct": len(subs), "dup_rows": n_dup, "bad_rows": n_bad,
            "bytes": path.stat().st_size}


# ---------------------------------------------------------------------------- the child


def _rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB. Not ru_maxrss: Linux carries the
    forking parent's peak into a child's ru_maxrss across exec."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vmrss_mb(pid: int | str) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _MemorySampler(threading.Thread):
    """The largest resident memory of this process and its children together (the parse
    workers), sampled every 0.1 s: what the upload needs of the machine at once."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._done.wait(0.1):
            total = _vmrss_mb(me)
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == me:
                    total += _vmrss_mb(entry)
            self.peak_mb = max(self.peak_mb, total)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_mb


async def _child_service(dsn: str, path: Path) -> dict[str, Any]:
    import asyncpg

    from gateway import PROJECT_ROOT
    from gateway.campaigns import CampaignGate, CampaignService, UploadForm
    from gateway.compliance import utc_now
    from gateway.config import AdvertisingConfig, CampaignsConfig, SendingConfig
    from gateway.domain import MessageClass
    from gateway.store.campaigns import CampaignStore
    from gateway.templating import TemplateRenderer, template_defaults

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    sending = SendingConfig()
    service = CampaignService(
        CampaignStore(pool), TemplateRenderer(PROJECT_ROOT / "templates_sms",
                                              defaults=template_defaults(sending)),
        sending=sending, advertising=AdvertisingConfig(), campaigns=CampaignsConfig(),
        tps=lambda: 100.0, clock=utc_now, gate=CampaignGate())
    form = UploadForm(name="bench", message_class=MessageClass.ADVERTISING, sender="KHUYENMAI",
                      advertiser="KHUYENMAI", template=None, text=TEMPLATE, schedule_at=None,
                      msisdn_column=None, mapping={}, encoding="utf-8", khong_dau=False,
                      file_name=path.name)
    rss0 = _rss_mb()
    sampler = _MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    view = await service.upload(path, form, api_key_id=None)
    seconds = time.perf_counter() - t0
    together = sampler.stop()
    await pool.close()
    return {"seconds": seconds, "rss_before_mb": rss0, "view": view,
            "together_rss_mb": together}


async def _child_http(dsn: str, redis_db: int, ready: Path) -> dict[str, Any]:
    """A Gateway (HTTP API) whose upload is timed by the parent; reports its peak RSS."""
    from simtools import free_port

    from gateway.config import Config, DatabaseConfig, HttpConfig, RedisConfig, SmppConfig
    from gateway.service import Gateway
    from gateway.store.apikeys import ApiKeyStore

    # no SMSC: the link keeps trying to connect in the background, which costs nothing here
    cfg = Config(database=DatabaseConfig(dsn=dsn, max_connections=8),
                 redis=RedisConfig(dsn=f"redis://127.0.0.1:6379/{redis_db}",
                                   queue_name=f"smsgw:bench-ingest-{uuid.uuid4().hex[:6]}"),
                 http=HttpConfig(port=0), smpp=SmppConfig(port=free_port()))
    gw = Gateway(cfg)
    await gw.start()
    assert gw.pool is not None
    _, key = await ApiKeyStore(gw.pool).create("bench", ("campaigns:write",), rate_per_s=0)
    rss0 = _rss_mb()
    sampler = _MemorySampler()
    sampler.start()
    ready.write_text(json.dumps({"port": gw.http_port, "key": key}))
    try:
        while not (ready.parent / "done").exists():
            await asyncio.sleep(0.1)
    finally:
        together = sampler.stop()
        await gw.stop(2)
    return {"rss_before_mb": rss0, "together_rss_mb": together}


def child_main(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    path = Path(args.file)
    if args.child == "service":
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            out = asyncio.run(_child_service(args.dsn, path))
            prof.disable()
            prof.dump_stats(args.profile)
            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
        else:
            out = asyncio.run(_child_service(args.dsn, path))
    else:
        out = asyncio.run(_child_http(args.dsn, args.redis_db, Path(args.ready)))
    out["peak_rss_mb"] = _rss_mb()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    # the parse worker processes (a large CSV is read by one per CPU): their CPU, and the
    # largest one's peak (ru_maxrss; may include this process's peak when it started them)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["workers_cpu_s"] = kids.ru_utime + kids.ru_stime
    out["workers_rss_mb"] = kids.ru_maxrss / 1024
    from gateway.config import CampaignsConfig

    cfg = CampaignsConfig()  # what the upload ran with
    split = path.stat().st_size >= cfg.parse_split_mb * (1 << 20)
    out["workers"] = (cfg.parse_workers or os.cpu_count() or 1) if split else 0
    print("CHILD " + json.dumps(out, default=str), flush=True)


# ---------------------------------------------------------------------------- the parent


async def _make_db(db: str, dnc: list[str], refused: list[str]) -> str:
    import asyncpg

    from gateway import PROJECT_ROOT
    from gateway.store.consent import ConsentSource, ConsentStore
    from gateway.store.migrate import ensure_database, migrate_dsn

    dsn = ADMIN.rpartition("/")[0] + f"/{db}"
    await ensure_database(dsn)
    await migrate_dsn(dsn, PROJECT_ROOT / "sql")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    consent = ConsentStore(pool)
    await consent.add_dnc(dnc, source="bench-dnc")
    now = datetime.now(UTC)
    for n in refused:
        await consent.refuse(n, source=ConsentSource.API, source_ref="bench", at=now)
    await pool.close()
    return dsn


async def _drop_db(db: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await admin.close()


def claim_redis_db() -> int:
    """An empty Redis logical db, claimed with a marker key (searched from 1 up: the tests
    search from 15 down)."""
    import redis

    for db in range(1, 16):
        client = redis.Redis(db=db)
        try:
            if client.dbsize() == 0 and client.set("smsgw:bench-claim", "1", nx=True):
                return db
        finally:
            client.close()
    raise SystemExit("no empty Redis db for the benchmark")


def release_redis_db(db: int) -> None:
    import redis

    client = redis.Redis(db=db)
    client.flushdb()
    client.close()


def _child(kind: str, dsn: str, path: Path, extra: list[str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--child", kind, "--dsn", dsn, "--file", str(path), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "SMSGW_LOG_LEVEL": "ERROR"})


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=1800)
    for line in out.splitlines():
        if line.startswith("CHILD "):
            result: dict[str, Any] = json.loads(line[6:])
            return result
        print(line)
    raise SystemExit(f"the child failed (exit {proc.returncode})")


async def _upload_http(path: Path, ready: Path, dsn: str) -> tuple[float, dict[str, Any]]:
    import aiohttp

    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text():
        if time.monotonic() > deadline:
            raise SystemExit("the gateway child did not start")
        await asyncio.sleep(0.1)
    info = json.loads(ready.read_text())
    with path.open("rb") as fh:
        form = aiohttp.FormData()
        form.add_field("file", fh, filename=path.name, content_type="text/csv")
        for k, v in {"name": "bench", "class": "advertising", "sender": "KHUYENMAI",
                     "text": TEMPLATE}.items():
            form.add_field(k, v)
        t0 = time.perf_counter()
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=1800),
                headers={"Authorization": f"Bearer {info['key']}"}) as http, \
                http.post(f"http://127.0.0.1:{info['port']}/v1/campaigns", data=form) as resp:
            body: dict[str, Any] = await resp.json()
            seconds = time.perf_counter() - t0
            assert resp.status == 201, (resp.status, body)
    return seconds, body


def run_once(kind: str, path: Path, gen: dict[str, Any], args: argparse.Namespace
             ) -> dict[str, Any]:
    db = f"smsgw_bench_{uuid.uuid4().hex[:8]}"
    try:
        dsn = asyncio.run(_make_db(db, gen["dnc"], gen["refused"]))
        if kind == "service":
            extra = ["--profile", args.profile] if args.profile else []
            res = _result(_child("service", dsn, path, extra))
            view = res["view"]
        else:
            ready = path.parent / f"ready-{uuid.uuid4().hex[:6]}"
            (path.parent / "done").unlink(missing_ok=True)
            redis_db = claim_redis_db()
            try:
                proc = _child("http", dsn, path, ["--ready", str(ready), "--redis-db",
                                                  str(redis_db)])
                try:
                    seconds, view = asyncio.run(_upload_http(path, ready, dsn))
                finally:
                    (path.parent / "done").write_text("1")
                res = _result(proc)
            finally:
                release_redis_db(redis_db)
            res["seconds"] = seconds
        up = view["upload"]
        return {"path": kind, "rows": up["rows"], "accepted": up["accepted"],
                "duplicates": up["duplicates"], "rejected": up["rejected"],
                "suppressed": up["suppressed"]["opted_out"] + up["suppressed"]["dnc"],
                "seconds": res["seconds"], "rows_per_s": up["rows"] / res["seconds"],
                "peak_rss_mb": res["peak_rss_mb"], "rss_before_mb": res["rss_before_mb"],
                "cpu_s": res["cpu_s"], "workers": res["workers"],
                "workers_cpu_s": res["workers_cpu_s"], "workers_rss_mb": res["workers_rss_mb"],
                "together_rss_mb": res["together_rss_mb"],
                "segments": view["estimate"]["segments"]}
    finally:
        asyncio.run(_drop_db(db))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    add_quick(ap)  # 100,000 rows
    ap.add_argument("--path", choices=("service", "http", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path")
    ap.add_argument("--profile", help="cProfile the service path into this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--redis-db", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    apply_quick(ap, args, rows=100_000)
    rows = args.rows
    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-ingest-"))
    try:
        path = tmp / "broadcast.csv"
        t0 = time.perf_counter()
        gen = generate(path, rows)
        gen_s = time.perf_counter() - t0
        kinds = ["service", "http"] if args.path == "both" else [args.path]
        results = [run_once(k, path, gen, args) for _ in range(args.repeat) for k in kinds]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Campaign upload, {os.cpu_count()} CPU(s): {rows:,} rows "
          f"({gen['bytes'] / 2**20:.0f} MB CSV, generated in {gen_s:.1f} s before the measured "
          f"process started: {gen['dup_rows']:,} repeated numbers, {gen['bad_rows']:,} bad "
          f"ones; {len(gen['dnc']):,} numbers on the DNC list and {len(gen['refused'])} "
          f"refused in the database), advertising, text {TEMPLATE!r}")
    print()
    print("| path | rows | accepted | duplicates | rejected | suppressed | segments | seconds "
          "| rows/s | CPU s: gateway / parse workers | peak RSS MB: gateway (after imports) "
          "/ largest worker / all processes together |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['path']} | {r['rows']:,} | {r['accepted']:,} | {r['duplicates']:,} | "
              f"{r['rejected']:,} | {r['suppressed']:,} | {r['segments']:,} | "
              f"{r['seconds']:.1f} | {r['rows_per_s']:,.0f} | "
              f"{r['cpu_s']:.1f} / {r['workers_cpu_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) / {r['workers_rss_mb']:.0f} × "
              f"{r['workers']} / {r['together_rss_mb']:.0f} |")
    best = min(results, key=lambda r: r["seconds"])
    print()
    print_result("campaign_ingest", throughput_per_s=best["rows_per_s"], unit="rows/s",
                 note=f"{rows:,} rows, best of {len(results)} run(s), {best['path']} path",
                 rows=rows, seconds=best["seconds"],
                 peak_rss_mb=max(r["together_rss_mb"] for r in results))


if __name__ == "__main__":
    main()
