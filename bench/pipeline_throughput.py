"""Whole spine throughput: HTTP POST → Postgres → arq → SMPP → receipt → Postgres.

Starts the SMSC simulator in a separate process and the gateway (``Gateway``: HTTP API, arq
worker, SMPP bind, ledger writer) in this one, on a scratch database and Redis db that are
removed afterwards. Posts N messages with C concurrent HTTP clients and reports accepted/s,
time until every message is delivered, and the HTTP 202 → delivered latency percentiles.

    python3 bench/pipeline_throughput.py [--count 5000] [--concurrency 50] [--window 50] [--quick]
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

import aiohttp
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simtools import add_quick, apply_quick, free_port, print_result, start_simulator

from gateway import PROJECT_ROOT
from gateway.config import (
    Config,
    DatabaseConfig,
    HttpConfig,
    RedisConfig,
    SendingConfig,
    SmppConfig,
)
from gateway.service import Gateway
from gateway.store.apikeys import ApiKeyStore
from gateway.store.migrate import migrate_dsn

ADMIN = os.environ.get("SMSGW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_DB = int(os.environ.get("SMSGW_BENCH_REDIS_DB", "14"))


async def run(args: argparse.Namespace) -> None:
    db = f"smsgw_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = ADMIN.rpartition("/")[0] + f"/{db}"
    port = free_port()
    sim = start_simulator(port, "--receipt-delay", "0.05")
    gw: Gateway | None = None
    try:
        await migrate_dsn(dsn, PROJECT_ROOT / "sql")
        cfg = Config(database=DatabaseConfig(dsn=dsn, max_connections=20),
                     redis=RedisConfig(dsn=f"redis://127.0.0.1:6379/{REDIS_DB}",
                                       queue_name="smsgw:bench"),
                     http=HttpConfig(port=0), smpp=SmppConfig(port=port, window=args.window),
                     sending=SendingConfig(sweep_interval_s=3600))
        gw = Gateway(cfg)
        await gw.start()
        assert gw.pool is not None and gw.client is not None and gw.store is not None
        await gw.client.wait_bound(10)
        _, key = await ApiKeyStore(gw.pool).create("bench", ("messages:send",), rate_per_s=0)
        base = f"http://127.0.0.1:{gw.http_port}"
        accepted: dict[str, float] = {}
        numbers = iter(range(args.count))

        async def client(http: aiohttp.ClientSession) -> None:
            for i in numbers:
                body = {"to": f"0901{i:06d}", "text": f"Thong bao cuoc so {i}: 125.000d."}
                async with http.post(f"{base}/v1/messages", json=body) as resp:
                    data = await resp.json()
                    assert resp.status == 202, data
                    accepted[data["id"]] = time.monotonic()

        started = time.monotonic()
        conn = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=conn,
                                         headers={"Authorization": f"Bearer {key}"}) as http:
            await asyncio.gather(*(client(http) for _ in range(args.concurrency)))
        intake_s = time.monotonic() - started
        done: dict[str, float] = {}
        deadline = time.monotonic() + 300
        while len(done) < args.count and time.monotonic() < deadline:
            if os.environ.get("BENCH_TRACE"):
                print({k.value: v for k, v in (await gw.store.counts_by_status()).items() if v},
                      flush=True)
            rows = await gw.pool.fetch(
                "SELECT id::text, extract(epoch from done_at) AS d, "
                "extract(epoch from created_at) AS c FROM messages WHERE status = 'delivered'")
            done = {r["id"]: float(r["d"] or 0) - float(r["c"]) for r in rows}
            await asyncio.sleep(0.2)
        total_s = time.monotonic() - started
        lat = sorted(done.values())

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

        print(f"Pipeline (HTTP → Postgres → arq → SMPP → receipt), {os.cpu_count()} CPU(s), "
              f"window {args.window}, {args.concurrency} HTTP clients")
        print()
        print("| messages | accepted/s (HTTP 202) | all delivered after s | end-to-end msg/s "
              "| created→delivered p50 ms | p99 ms |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| {args.count} | {args.count / intake_s:,.0f} | {total_s:.1f} | "
              f"{len(done) / total_s:,.0f} | {pct(0.5):.0f} | {pct(0.99):.0f} |")
        print_result("pipeline_throughput", throughput_per_s=len(done) / total_s,
                     p50_ms=pct(0.5), p99_ms=pct(0.99), unit="msg/s end to end",
                     note=f"{args.count} messages, created→delivered latency",
                     accepted_per_s=args.count / intake_s, delivered=len(done))
    finally:
        if gw is not None:
            await gw.stop(5)
        sim.terminate()
        sim.wait(5)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
        r = aioredis.Redis(db=REDIS_DB)
        await r.flushdb()
        await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--window", type=int, default=50)
    add_quick(ap)
    args = apply_quick(ap, ap.parse_args(), count=500)
    logging.basicConfig(level=logging.WARNING)
    if os.environ.get("BENCH_TRACE"):
        logging.getLogger("smsgw.ledger").setLevel(logging.DEBUG)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
