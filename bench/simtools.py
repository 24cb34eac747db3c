"""Shared by the benchmarks: free ports, the SMSC simulator in its own process, its stats."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any


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
