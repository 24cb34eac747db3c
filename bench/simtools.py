"""Shared by the benchmarks: free ports, the SMSC simulator in its own process, its stats, and
the ``--quick`` / ``RESULT`` conventions of ``bench/run_all.py``.

Each benchmark takes ``--quick`` (a short run: options the user did not set get small values)
and prints, after its tables, one machine-readable line::

    RESULT {"name": "smpp_throughput", "throughput_per_s": 19865.0, "p50_ms": 2.16, ...}

with ``name``, ``throughput_per_s``, ``p50_ms`` and ``p99_ms`` (null when the benchmark does not
measure it), optionally ``unit`` (what the throughput counts, e.g. ``"submit_sm/s"``), ``note``
(which row the figures come from) and any other figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

RESULT_PREFIX = "RESULT "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_simulator(port: int, *flags: str, control_port: int | None = None,
                    quiet: bool = True) -> subprocess.Popen[bytes]:
    """``smsgw smsc-sim`` on ``port`` with ``flags``; returns once it accepts connections."""
    cmd = [sys.executable, "-m", "gateway", "smsc-sim", "--port", str(port), *flags]
    if control_port is not None:
        cmd += ["--control-port", str(control_port)]
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=out,
                            env={**os.environ, "SMSGW_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if control_port is not None:
                control(control_port, "/stats")
            else:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the simulator did not start")


def control(control_port: int, path: str) -> Any:
    """GET a simulator control endpoint (``/stats``, ``/arrivals?prefix=…``) as JSON."""
    with urllib.request.urlopen(f"http://127.0.0.1:{control_port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


def add_quick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a short run with small settings (what bench/run_all.py --quick uses)")


def apply_quick(parser: argparse.ArgumentParser, args: argparse.Namespace,
                **quick: Any) -> argparse.Namespace:
    """With ``--quick``, every option in ``quick`` still at its default takes the quick value."""
    if getattr(args, "quick", False):
        for dest, value in quick.items():
            if getattr(args, dest) == parser.get_default(dest):
                setattr(args, dest, value)
    return args


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 3)
    return value


def print_result(name: str, *, throughput_per_s: float | None, p50_ms: float | None = None,
                 p99_ms: float | None = None, **extra: Any) -> None:
    """Print the ``RESULT {json}`` line bench/run_all.py reads (last thing a benchmark prints)."""
    record = {"name": name, "throughput_per_s": throughput_per_s, "p50_ms": p50_ms,
              "p99_ms": p99_ms, **extra}
    print(RESULT_PREFIX + json.dumps({k: _clean(v) for k, v in record.items()},
                                     ensure_ascii=False), flush=True)
