"""Several binds on one link: aggregate throughput against an SMSC that limits each bind.

The simulator (separate process) answers ESME_RTHROTTLED above ``--per-bind`` submit_sm/s on
each connection, as carriers do per bind. One gateway link with 1, 2 and 4 binds (the link's
``tps`` set to binds × per-bind) submits for a few seconds; the table shows the aggregate
accepted rate scaling with the binds.

    python3 bench/multi_bind.py [--per-bind 500] [--seconds 4] [--binds 1,2,4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simtools import add_quick, apply_quick, free_port, print_result, start_simulator

from gateway.config import SmppConfig
from gateway.smpp.codec import Pdu
from gateway.smpp.link import Link


async def run_one(binds: int, per_bind: int, seconds: float) -> dict[str, float]:
    port, ctl = free_port(), free_port()
    proc = start_simulator(port, "--tps-per-bind", str(per_bind), control_port=ctl)
    try:
        async def ack(pdu: Pdu) -> int:
            return 0

        link = Link(SmppConfig(name="bench", port=port, binds=binds, window=20,
                               tps=float(per_bind * binds), registered_delivery=0,
                               throttle_pause_s=0.2), on_deliver=ack)
        link.start()
        await link.client.wait_bound(10)
        total = int(per_bind * binds * seconds)
        accepted_at: list[float] = []

        async def one(i: int) -> None:
            res = await link.submit({"source_addr": "CSKH", "destination_addr": "84901000001",
                                     "short_message": f"bind test {i}".encode()}, wait_s=120)
            if res.ok:
                accepted_at.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.monotonic() - started
        throttled = link.throttled
        await link.stop(5)
        steady = [t for t in accepted_at if t >= started + 0.5]
        rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else 0.0
        return {"binds": binds, "limit": per_bind * binds, "parts": total, "rate": rate,
                "elapsed": elapsed, "throttled": throttled, "lost": total - len(accepted_at)}
    finally:
        proc.terminate()
        proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-bind", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--binds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    add_quick(ap)
    args = apply_quick(ap, ap.parse_args(), seconds=2.0, binds=[1, 2])

    async def all_rows() -> list[dict[str, float]]:
        return [await run_one(b, args.per_bind, args.seconds) for b in args.binds]

    rows = asyncio.run(all_rows())
    print(f"Multi-bind scaling, {os.cpu_count()} CPU(s), simulator limiting each bind to "
          f"{args.per_bind} submit_sm/s (separate process)")
    print()
    print("| binds | SMSC limit (binds × per-bind) | parts | accepted/s | of limit | "
          "throttle errors | lost |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['binds']:.0f} | {r['limit']:.0f} | {r['parts']:.0f} | {r['rate']:,.0f} | "
              f"{r['rate'] / r['limit'] * 100:.0f} % | {r['throttled']:.0f} | {r['lost']:.0f} |")
    if rows:
        top = max(rows, key=lambda r: r["binds"])
        print_result("multi_bind", throughput_per_s=top["rate"], unit="parts/s accepted",
                     note=f"{top['binds']:.0f} binds × {args.per_bind}/s",
                     of_limit_pct=top["rate"] / top["limit"] * 100,
                     lost=sum(r["lost"] for r in rows))


if __name__ == "__main__":
    main()
