"""Throttle accuracy: the SMSC simulator enforces T submit_sm/s (ESME_RTHROTTLED above it).

For T in 100, 500, 2000 and two gateway set-ups — the link configured with ``tps = T`` (the
operator knows the carrier's limit), and ``tps = 0`` (unknown: only the adaptive AIMD control
reacts to ESME_RTHROTTLED) — submits T × seconds parts through one link and reports the
achieved accepted rate, its error against T, throttle errors and lost parts. The simulator runs
in a separate process. Prints a markdown table.

    python3 bench/throttle_accuracy.py [--seconds 5] [--rates 100,500,2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simtools import add_quick, apply_quick, control, free_port, print_result, start_simulator

from gateway.config import SmppConfig
from gateway.smpp.codec import Pdu
from gateway.smpp.link import Link


async def run_one(rate: int, configured: bool, seconds: float) -> dict[str, float]:
    port, ctl = free_port(), free_port()
    proc = start_simulator(port, "--tps", str(rate), control_port=ctl)
    try:
        async def ack(pdu: Pdu) -> int:
            return 0

        window = max(10, min(100, rate // 20))
        link = Link(SmppConfig(name="bench", port=port, window=window,
                               tps=float(rate) if configured else 0.0,
                               registered_delivery=0, throttle_pause_s=0.2), on_deliver=ack)
        link.start()
        await link.client.wait_bound(10)
        total = int(rate * seconds)
        accepted_at: list[float] = []

        async def one(i: int) -> None:
            res = await link.submit({"source_addr": "CSKH", "destination_addr": "84901000001",
                                     "short_message": f"msg {i}".encode()}, wait_s=120)
            if res.ok:
                accepted_at.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.monotonic() - started
        stats = control(ctl, "/stats")
        await link.stop(5)
        # steady state: skip the first second (bucket burst / first throttle episode)
        steady = [t for t in accepted_at if t >= started + 1.0]
        steady_rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else 0.0
        return {"rate": rate, "configured": configured, "parts": total,
                "accepted": stats["parts_received"], "elapsed": elapsed,
                "achieved": steady_rate, "throttled": link.throttled,
                "lost": total - stats["parts_received"]}
    finally:
        proc.terminate()
        proc.wait(5)


async def main_async(args: argparse.Namespace) -> list[dict[str, float]]:
    rows = []
    for configured in (True, False):
        for rate in args.rates:
            rows.append(await run_one(rate, configured, args.seconds))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")],
                    default=[100, 500, 2000])
    add_quick(ap)
    rows = asyncio.run(main_async(apply_quick(ap, ap.parse_args(), seconds=2.0,
                                              rates=[100, 500])))
    print(f"Throttle accuracy, {os.cpu_count()} CPU(s), simulator enforcing T TPS in a "
          "separate process")
    print()
    print("| T (SMSC limit) | link tps | parts | achieved/s (steady) | error vs T "
          "| throttle errors | lost |")
    print("|---:|:---:|---:|---:|---:|---:|---:|")
    for r in rows:
        err = (r["achieved"] - r["rate"]) / r["rate"] * 100
        print(f"| {r['rate']:.0f} | {'= T' if r['configured'] else 'unknown (0)'} | "
              f"{r['parts']:.0f} | {r['achieved']:,.1f} | {err:+.1f} % | "
              f"{r['throttled']:.0f} | {r['lost']:.0f} |")
    if rows:
        top = max(rows, key=lambda r: (r["configured"], r["rate"]))
        print_result("throttle_accuracy", throughput_per_s=top["achieved"], unit="parts/s",
                     note=f"T = {top['rate']:.0f}, link tps = T",
                     max_error_pct=max(abs(r["achieved"] - r["rate"]) / r["rate"] * 100
                                       for r in rows),
                     lost=sum(r["lost"] for r in rows))


if __name__ == "__main__":
    main()
