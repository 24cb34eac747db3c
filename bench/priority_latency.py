"""Priority lane: care messages overtake a broadcast on the same binds.

100,000 advertising messages are queued on the bulk lane and start flowing to the SMSC
simulator (separate process). While they are being sent, 1,000 billing notices are posted over
HTTP (``POST /v1/events``) at a steady pace. For each notice: time from its HTTP 202 to its
submit_sm arriving at the simulator (both clocks are this machine's wall clock).
Target p99 ≤ 250 ms.

    python3 bench/priority_latency.py [--bulk 100000] [--care 1000] [--care-rate 50] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simtools import add_quick, apply_quick, control, free_port, print_result, start_simulator

from gateway import PROJECT_ROOT
from gateway.compliance import AdWindow, daytime_clock, utc_now
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


async def _free_redis_db() -> int:
    for db in range(13, 0, -1):
        client = aioredis.Redis(db=db)
        try:
            if await client.dbsize() == 0 and await client.set("smsgw:bench-claim", "1", nx=True):
                return db
        finally:
            await client.aclose()
    raise SystemExit("no empty Redis db for the benchmark")


async def _broadcast(gw: Gateway, count: int) -> float:
    """Queue ``count`` advertising messages on the bulk lane; returns the seconds it took."""
    assert gw.store is not None and gw.queue is not None
    t0 = time.monotonic()
    body = "[QC] Uu dai thang 12: tang 50% gia tri the nap. Tu choi QC soan TC gui 1234"
    for start in range(0, count, 5000):
        news = [NewMessage(msisdn=f"{BULK_PREFIX}{i:07d}", sender="KHUYENMAI", body=body,
                           encoding=Encoding.GSM7, segments=1,
                           message_class=MessageClass.ADVERTISING, priority=Priority.BULK)
                for i in range(start, min(count, start + 5000))]
        ids = await gw.store.create_many(news)
        for j in range(0, len(ids), 200):
            await gw.queue.enqueue_send(ids[j:j + 200], bulk=True)
    return time.monotonic() - t0


def _care_request(base: str, i: int) -> tuple[str, dict[str, Any]]:
    return f"{base}/v1/events", {
        "event_id": f"bench-{uuid.uuid4().hex}", "type": "payment_due",
        "msisdn": f"0{CARE_PREFIX[2:]}{i:07d}",
        "data": {"full_name": "Nguyễn Văn An", "amount": 250000, "due_date": "2026-12-05",
                 "period": "11/2026"}}


async def _post_care(base: str, key: str, args: argparse.Namespace) -> dict[str, float]:
    """Post the billing notices at a steady pace; destination → wall time of its 202."""
    accepted: dict[str, float] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:

        async def post(i: int) -> None:
            url, payload = _care_request(base, i)
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
    return accepted


async def _arrivals(ctl: int, expected: int) -> dict[str, float]:
    deadline = time.monotonic() + 60
    arrivals = control(ctl, f"/arrivals?prefix={CARE_PREFIX}")
    while len(arrivals) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        arrivals = control(ctl, f"/arrivals?prefix={CARE_PREFIX}")
    return arrivals


def _report(args: argparse.Namespace, queued_s: float, accepted: dict[str, float],
            arrivals: dict[str, float], bulk_done: int) -> None:
    lat = sorted((arrivals[d] - t) * 1000 for d, t in accepted.items() if d in arrivals)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    print(f"Priority lane, {os.cpu_count()} CPU(s): {args.bulk:,} advertising messages queued "
          f"in {queued_s:.1f} s on the bulk lane; {args.care} billing notices over HTTP "
          f"(/v1/events) at {args.care_rate}/s while the broadcast is sent "
          f"(window {args.window})")
    print()
    print("| care notices | reached the SMSC | p50 ms | p95 ms | p99 ms | max ms "
          "| broadcast parts at the SMSC by then |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(accepted)} | {len(lat)} | {pct(0.5):.0f} | {pct(0.95):.0f} | "
          f"{pct(0.99):.0f} | {lat[-1] if lat else float('nan'):.0f} | {bulk_done:,} |")
    if len(lat) < len(accepted):
        print(f"\n{len(accepted) - len(lat)} notice(s) had not reached the simulator in 60 s")
    print_result("priority_latency", throughput_per_s=None, p50_ms=pct(0.5), p99_ms=pct(0.99),
                 note=f"{len(accepted)} care notices during a {args.bulk:,}-message broadcast, "
                      "HTTP 202 → submit_sm",
                 p95_ms=pct(0.95), reached=len(lat), accepted=len(accepted),
                 bulk_parts_by_then=bulk_done)


async def run(args: argparse.Namespace) -> None:
    db = f"smsgw_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = ADMIN.rpartition("/")[0] + f"/{db}"
    redis_db = await _free_redis_db()
    port, ctl = free_port(), free_port()
    sim = start_simulator(port, "--receipt-delay", "0.5", control_port=ctl)
    gw: Gateway | None = None
    try:
        await migrate_dsn(dsn, PROJECT_ROOT / "sql")
        cfg = Config(database=DatabaseConfig(dsn=dsn, max_connections=20),
                     redis=RedisConfig(dsn=f"redis://127.0.0.1:6379/{redis_db}"),
                     http=HttpConfig(port=0), smpp=SmppConfig(port=port, window=args.window),
                     sending=SendingConfig(sweep_interval_s=3600,
                                           bulk_capacity_share=args.bulk_share))
        gw = Gateway(cfg, clock=daytime_clock(AdWindow.from_config(cfg.advertising)) or utc_now)
        await gw.start()
        assert gw.pool is not None
        await gw.wait_bound(10)
        _, key = await ApiKeyStore(gw.pool).create("bench", ("messages:send", "events:write"),
                                                   rate_per_s=0)
        queued_s = await _broadcast(gw, args.bulk)
        await asyncio.sleep(2.0)  # let the broadcast reach full speed
        accepted = await _post_care(f"http://127.0.0.1:{gw.http_port}", key, args)
        arrivals = await _arrivals(ctl, len(accepted))
        _report(args, queued_s, accepted, arrivals,
                len(control(ctl, f"/arrivals?prefix={BULK_PREFIX}")))
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
    add_quick(ap)
    args = apply_quick(ap, ap.parse_args(), bulk=5000, care=100)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
