"""Priority lane: care messages overtake a broadcast on the same binds.

100,000 advertising messages are queued on the bulk lane and start flowing to the SMSC
simulator (separate process). While they are being sent, 1,000 billing notices are posted over
HTTP (``POST /v1/events`` when the events API is there, else ``POST /v1/messages`` class care)
at a steady pace. For each notice: time from its HTTP 202 to its submit_sm arriving at the
simulator (both clocks are this machine's wall clock). Target p99 ≤ 250 ms.

    python3 bench/priority_latency.py [--bulk 100000] [--care 1000] [--care-rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smpp_throughput import _free_port

from gateway import PROJECT_ROOT
from gateway.config import (
    Config,
    DatabaseConfig,
    HttpConfig,
    RedisConfig,
    SendingConfig,
    SmppConfig,
)
from gateway.domain import Encoding, MessageClass, Priority
from gateway.service import Gateway
from gateway.store.apikeys import ApiKeyStore
from gateway.store.messages import NewMessage
from gateway.store.migrate import migrate_dsn

ADMIN = os.environ.get("SMSGW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BULK_PREFIX, CARE_PREFIX = "8490", "8498"


def _start_sim(port: int, ctl: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "smsc-sim", "--port", str(port),
                             "--control-port", str(ctl), "--receipt-delay", "0.5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ctl}/stats", timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("simulator did not start")


def _get(ctl: int, path: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctl}{path}", timeout=30) as resp:
        data: dict[str, float] = json.loads(resp.read())
        return data


async def _free_redis_db() -> int:
    for db in range(13, 0, -1):
        client = aioredis.Redis(db=db)
        try:
            if await client.dbsize() == 0 and await client.set("smsgw:bench-claim", "1", nx=True):
                return db
        finally:
            await client.aclose()
    raise SystemExit("no empty Redis db for the benchmark")


async def run(args: argparse.Namespace) -> None:
    db = f"smsgw_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = ADMIN.rpartition("/")[0] + f"/{db}"
    redis_db = await _free_redis_db()
    port, ctl = _free_port(), _free_port()
    sim = _start_sim(port, ctl)
    gw: Gateway | None = None
    try:
        await migrate_dsn(dsn, PROJECT_ROOT / "sql")
        cfg = Config(database=DatabaseConfig(dsn=dsn, max_connections=20),
                     redis=RedisConfig(dsn=f"redis://127.0.0.1:6379/{redis_db}"),
                     http=HttpConfig(port=0), smpp=SmppConfig(port=port, window=args.window),
                     sending=SendingConfig(sweep_interval_s=3600,
                                           bulk_capacity_share=args.bulk_share))
        gw = Gateway(cfg)
        await gw.start()
        assert gw.pool is not None and gw.store is not None and gw.queue is not None
        await gw.wait_bound(10)
        _, key = await ApiKeyStore(gw.pool).create("bench", ("messages:send", "events:write"))

        # 1. the broadcast: rows in Postgres, jobs of 200 ids on the bulk lane
        t0 = time.monotonic()
        body = "[QC] Uu dai thang 12: tang 50% gia tri the nap. Tu choi QC soan TC gui 1234"
        for start in range(0, args.bulk, 5000):
            news = [NewMessage(msisdn=f"{BULK_PREFIX}{i:07d}", sender="KHUYENMAI", body=body,
                               encoding=Encoding.GSM7, segments=1,
                               message_class=MessageClass.ADVERTISING, priority=Priority.BULK)
                    for i in range(start, min(args.bulk, start + 5000))]
            ids = await gw.store.create_many(news)
            for j in range(0, len(ids), 200):
                await gw.queue.enqueue_send(ids[j:j + 200], bulk=True)
        queued_s = time.monotonic() - t0
        await asyncio.sleep(2.0)  # let the broadcast reach full speed

        job_started: dict[str, float] = {}
        if os.environ.get("BENCH_TRACE"):
            assert gw.sender is not None
            original = gw.sender.send_ids
            store = gw.store

            async def traced(ids: Any, *, bulk: bool = False) -> int:
                if not bulk:
                    for rec_id in ids:
                        job_started[str(rec_id)] = time.time()
                return await original(ids, bulk=bulk)

            gw.sender.send_ids = traced  # type: ignore[method-assign]
            del store

        # 2. the care notices, posted at a steady pace while the broadcast is sent
        base = f"http://127.0.0.1:{gw.http_port}"
        accepted: dict[str, float] = {}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            use_events = False
            async with http.post(f"{base}/v1/events", json={}) as probe:
                use_events = probe.status != 404

            async def post(i: int) -> None:
                to = f"0{CARE_PREFIX[2:]}{i:07d}"
                if use_events:
                    url, payload = f"{base}/v1/events", {
                        "event_id": f"bench-{uuid.uuid4().hex}", "type": "payment_due",
                        "msisdn": to, "data": {"full_name": "Nguyễn Văn An",
                                               "amount": 250000, "due_date": "2026-12-05",
                                               "period": "11/2026", "hotline": "18001090"}}
                else:
                    url, payload = f"{base}/v1/messages", {
                        "to": to, "text": "Cuoc thang 11/2026: 250.000d, han 05/12/2026."}
                async with http.post(url, json=payload) as resp:
                    if resp.status == 202:
                        accepted[f"{CARE_PREFIX}{i:07d}"] = time.time()
                    else:
                        print("care post failed", resp.status, await resp.text(), file=sys.stderr)

            tasks = []
            for i in range(args.care):
                tasks.append(asyncio.create_task(post(i)))
                await asyncio.sleep(1 / args.care_rate)
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                arrivals = _get(ctl, f"/arrivals?prefix={CARE_PREFIX}")
                if len(arrivals) >= len(accepted):
                    break
                await asyncio.sleep(0.5)
        bulk_done = len(_get(ctl, f"/arrivals?prefix={BULK_PREFIX}"))
        if os.environ.get("BENCH_TRACE"):
            rows = await gw.pool.fetch(
                "SELECT id::text, msisdn, extract(epoch from created_at) AS c, "
                "extract(epoch from submitting_at) AS s FROM messages WHERE msisdn LIKE $1",
                CARE_PREFIX + "%")
            claim = sorted((float(r["s"]) - float(r["c"])) * 1000 for r in rows if r["s"])
            wire = sorted((arrivals[r["msisdn"]] - float(r["s"])) * 1000 for r in rows
                          if r["s"] and r["msisdn"] in arrivals)
            api = sorted((accepted[r["msisdn"]] - float(r["c"])) * 1000 for r in rows
                         if r["msisdn"] in accepted)
            job = sorted((job_started[r["id"]] - float(r["c"])) * 1000 for r in rows
                         if r["id"] in job_started)
            for name, xs in (("created→202", api), ("created→job start", job),
                             ("created→claimed", claim),
                             ("claimed→wire", wire)):
                print(name, "p50 %.0f p99 %.0f" % (xs[len(xs) // 2], xs[int(len(xs) * .99)]))
        lat = sorted((arrivals[d] - t) * 1000 for d, t in accepted.items() if d in arrivals)
        missing = len(accepted) - len(lat)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

        print(f"Priority lane, {os.cpu_count()} CPU(s): {args.bulk:,} advertising messages "
              f"queued in {queued_s:.1f} s on the bulk lane; {args.care} billing notices over "
              f"HTTP ({'/v1/events' if use_events else '/v1/messages'}) at {args.care_rate}/s "
              f"while the broadcast is sent (window {args.window})")
        print()
        print("| care notices | reached the SMSC | p50 ms | p95 ms | p99 ms | max ms "
              "| broadcast parts at the SMSC by then |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {len(accepted)} | {len(lat)} | {pct(0.5):.0f} | {pct(0.95):.0f} | "
              f"{pct(0.99):.0f} | {lat[-1] if lat else float('nan'):.0f} | {bulk_done:,} |")
        if missing:
            print(f"\n{missing} notice(s) had not reached the simulator within 60 s")
    finally:
        if gw is not None:
            await gw.stop(5)
        sim.terminate()
        sim.wait(5)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
        r = aioredis.Redis(db=redis_db)
        await r.flushdb()
        await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bulk", type=int, default=100_000)
    ap.add_argument("--care", type=int, default=1000)
    ap.add_argument("--care-rate", type=float, default=50.0)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--bulk-share", type=float, default=0.75)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
