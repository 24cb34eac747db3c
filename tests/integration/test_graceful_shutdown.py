"""SIGTERM under load: intake stops at once, the window is finished, the binds unbind, exit 0
within 10 s — and nothing is left ambiguous (every submit the SMSC got is recorded)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import asyncpg

from tests.integration.test_cli import _free_port, _wait_http, env, smsgw  # noqa: F401


def _stats(ctl_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctl_port}/stats", timeout=5) as resp:
        data: dict[str, int] = json.loads(resp.read())
        return data


def _post(http_port: int, key: str, to: str) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/messages", method="POST",
        data=json.dumps({"to": to, "text": "Thong bao cuoc thang 11"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def test_sigterm_finishes_the_window_unbinds_and_stops_intake(env: dict[str, str]) -> None:  # noqa: F811
    smpp_port, http_port, ctl_port = _free_port(), _free_port(), _free_port()
    # slow answers: at SIGTERM the window (10) is full of submits waiting for their resp
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "smsc-sim", "--port", str(smpp_port),
                            "--receipt-delay", "0.1", "--resp-delay", "0.6",
                            "--control-port", str(ctl_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_env = {**os.environ, **env, "SMSGW_SMPP_PORT": str(smpp_port),
               "SMSGW_HTTP_PORT": str(http_port), "SMSGW_SMPP_WINDOW": "10"}
    serve = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=run_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_http(f"http://127.0.0.1:{http_port}/healthz") == 200
        key = smsgw("apikey", "create", "--name", "ops", "--rate", "0",
                    env=env).stdout.strip().splitlines()[-1]
        base = 901000000 + uuid.uuid4().int % 90000 * 1000
        for i in range(60):
            assert _post(http_port, key, f"0{base + i}") == 202
        deadline = time.monotonic() + 15
        while _stats(ctl_port)["parts_received"] < 15 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _stats(ctl_port)["parts_received"] >= 15  # sending, window busy
        started = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        refused = False
        try:  # intake is stopped first: no new message is taken once SIGTERM arrived
            _post(http_port, key, f"0{base + 999}")
        except (urllib.error.URLError, ConnectionError, OSError):
            refused = True
        assert refused
        rc = serve.wait(timeout=15)
        assert rc == 0 and time.monotonic() - started < 10
        stats = _stats(ctl_port)
        assert stats["unbinds_received"] >= 1  # the bind said goodbye
        assert stats["duplicates"] == 0

        async def ledger() -> dict[str, int]:
            conn = await asyncpg.connect(env["SMSGW_DATABASE_DSN"])
            try:
                rows = await conn.fetch("SELECT status, count(*) AS n FROM messages GROUP BY 1")
                return {r["status"]: r["n"] for r in rows}
            finally:
                await conn.close()

        counts = asyncio.run(ledger())
        # every submit in the window was answered and recorded before exit: none ambiguous
        assert counts.get("submitting", 0) == 0, counts
        recorded = counts.get("submitted", 0) + counts.get("delivered", 0)
        assert recorded == stats["messages"], (counts, stats)
        assert sum(counts.values()) == 60  # the rest waits queued for the next start
    finally:
        for proc in (serve, sim):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
