"""SMPP throughput: submit_sm/s and submit latency at several windows, with/without receipts.

The SMSC simulator runs in a separate process (``smsgw smsc-sim``); this process runs the
gateway's ESME client (sans-IO session + asyncio transport). Prints a markdown table.

    python3 bench/smpp_throughput.py [--count 20000] [--windows 1,10,50] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

from smpplib import consts

from gateway.config import SmppConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simtools import add_quick, apply_quick, free_port, print_result, start_simulator

from gateway.smpp.client import EsmeClient
from gateway.smpp.codec import Pdu


@dataclasses.dataclass
class Row:
    window: int
    receipts: bool
    count: int
    seconds: float
    latencies: list[float]
    receipts_seen: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000


async def _run(port: int, window: int, receipts: bool, count: int) -> Row:
    seen = 0

    async def on_deliver(pdu: Pdu) -> int:
        nonlocal seen
        seen += 1
        return int(consts.SMPP_ESME_ROK)

    cfg = SmppConfig(port=port, window=window, registered_delivery=1 if receipts else 0,
                     enquire_link_s=30, response_timeout_s=30)
    client = EsmeClient(cfg, on_deliver=on_deliver)
    client.start()
    if not await client.wait_bound(10):
        raise SystemExit("could not bind")
    params = {"source_addr": "CSKH", "source_addr_ton": 5, "destination_addr": "84901234567",
              "dest_addr_ton": 1, "dest_addr_npi": 1, "data_coding": 0,
              "registered_delivery": 1 if receipts else 0,
              "short_message": b"Quy khach vui long thanh toan cuoc thang 11/2026 truoc 05/12."}
    latencies: list[float] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            res = await client.submit(params)
            if res.ok:
                latencies.append(res.latency_s)
            else:
                remaining += 1
                await asyncio.sleep(0.01)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    elapsed = time.perf_counter() - started
    if receipts:
        deadline = time.monotonic() + 10
        while seen < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    await client.stop(5)
    return Row(window, receipts, len(latencies), elapsed, latencies, seen)


async def main_async(args: argparse.Namespace) -> list[Row]:
    rows = []
    for receipts in (False, True):
        for window in args.windows:
            port = free_port()
            proc = start_simulator(port, "--receipt-delay", "0.05")
            try:
                count = min(args.count, 3000) if window == 1 else args.count
                rows.append(await _run(port, window, receipts, count))
            finally:
                proc.terminate()
                proc.wait(5)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--windows", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 10, 50])
    add_quick(ap)
    args = apply_quick(ap, ap.parse_args(), count=2000, windows=[1, 50])
    rows = asyncio.run(main_async(args))
    print(f"SMPP throughput, {os.cpu_count()} CPU(s), simulator in a separate process")
    print()
    print("| window | receipts | submits | submit_sm/s | p50 ms | p99 ms | receipts seen |")
    print("|---:|:---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.window} | {'yes' if r.receipts else 'no'} | {r.count} | {r.rate:,.0f} | "
              f"{r.pct(0.5):.2f} | {r.pct(0.99):.2f} | "
              f"{r.receipts_seen if r.receipts else '-'} |")
    if rows:
        print()
        print(f"median latency over all rows: "
              f"{statistics.median(x for r in rows for x in r.latencies) * 1000:.2f} ms")
    plain = [r for r in rows if not r.receipts]
    if plain:
        top = max(plain, key=lambda r: r.window)
        acked = [r.rate for r in rows if r.receipts and r.window == top.window]
        print_result("smpp_throughput", throughput_per_s=top.rate, p50_ms=top.pct(0.5),
                     p99_ms=top.pct(0.99), unit="submit_sm/s",
                     note=f"window {top.window}, no receipts",
                     with_receipts_per_s=acked[0] if acked else None)


if __name__ == "__main__":
    main()
