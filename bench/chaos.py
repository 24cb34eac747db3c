"""Crash test: ``kill -9`` the gateway mid-run, restart it, count what was lost and doubled.

The gateway runs as a real ``smsgw --config FILE serve`` child process (config from a scratch
TOML, DSNs from the environment); the SMSC simulator runs in this process so that it outlives
every kill and can say which message reached it how often. Client tasks post the messages
through ``POST /v1/messages``; a request in flight at a kill fails and is retried with the
same ``idempotency_key``, so intake neither loses nor doubles one. Meanwhile the gateway is
killed with SIGKILL at random moments and started again each time. Then every message must
reach a terminal state in Postgres, and:

* lost = accepted, in a terminal state, never reached the SMSC and not given up on
  (``ambiguous_policy=fail`` records a message caught in the ambiguous window as failed):
  must be 0; unfinished = not in a terminal state by the deadline: must be 0;
* duplicates = messages the SMSC received more than once: only allowed for messages whose
  events record the ambiguous window (README "The ambiguous window"), and 0 with
  ``ambiguous_policy=fail``; ambiguous = messages whose events record that window.

``tests/integration/test_chaos.py`` runs this harness with 2,000 messages; this script does
the full run (with each policy, on a scratch database and Redis db 14) and prints a table:

    python3 bench/chaos.py [--count 20000] [--kills 3] [--policy resend|fail|both] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from gateway import PROJECT_ROOT
from gateway.smpp.simulator import SimulatorConfig, SmscSimulator
from gateway.store.apikeys import ApiKeyStore

TERMINAL = frozenset({"delivered", "undelivered", "expired", "rejected", "failed"})
RETRYABLE = (aiohttp.ClientError, ConnectionError, TimeoutError)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosSettings:
    count: int = 20_000
    kills: int = 3
    policy: str = "resend"  # sending.ambiguous_policy
    concurrency: int = 32  # HTTP clients posting at once
    window: int = 10
    seed: int = field(default_factory=lambda: random.randrange(1 << 30))
    terminal_timeout_s: float = 600.0  # after the last message was accepted
    progress_s: float = 0.0  # print a progress line to stderr this often (0 = never)


@dataclass(slots=True, kw_only=True)
class ChaosReport:
    settings: ChaosSettings
    kills: int = 0
    accepted: int = 0
    rows: int = 0  # messages rows in Postgres: more than accepted = doubled at intake
    http_retries: int = 0  # requests that failed (kill) and were sent again
    replayed: int = 0  # retries answered 200: the first try had been stored
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: list[int] = field(default_factory=list)  # message numbers (terminal ones)
    unfinished: list[int] = field(default_factory=list)  # not terminal at the deadline
    duplicates: dict[int, int] = field(default_factory=dict)  # number → times at the SMSC
    ambiguous: set[int] = field(default_factory=set)  # events record the ambiguous window
    seconds: float = 0.0
    log_file: Path | None = None

    @property
    def not_terminal(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in TERMINAL)

    @property
    def unexplained_duplicates(self) -> list[int]:
        """Doubled messages whose events do not show the ambiguous window."""
        return sorted(set(self.duplicates) - self.ambiguous)

    def row(self) -> str:
        return (f"| {self.settings.policy} | {self.accepted} | {self.kills} | {len(self.lost)} | "
                f"{len(self.unfinished)} | {len(self.duplicates)} | {len(self.ambiguous)} | "
                f"{len(self.unexplained_duplicates)} | {self.http_retries} | "
                f"{self.seconds:.1f} |")


TABLE_HEAD = ("| policy | messages | kills | lost | unfinished | duplicates | ambiguous "
              "| unexplained dup. | HTTP retries | time s |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(path: Path, *, smpp_port: int, http_port: int, queue: str,
                 settings: ChaosSettings) -> None:
    """The scratch TOML: fast sweeps and reconnects so a killed run settles within seconds."""
    path.write_text(f"""\
[redis]
queue_name = "{queue}:care"
bulk_queue_name = "{queue}:bulk"

[http]
port = {http_port}

[smpp]
port = {smpp_port}
window = {settings.window}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
response_timeout_s = 2.0

[sending]
ambiguous_policy = "{settings.policy}"
sweep_interval_s = 1.0
stale_queued_s = 2.0
stale_submitting_s = 6.0

[greetings]
enabled = false

[log]
level = "WARNING"
""", encoding="utf-8")


class GatewayProcess:
    """``smsgw --config FILE serve`` as a child process that can be killed and restarted."""

    def __init__(self, config: Path, env: Mapping[str, str], log_file: Path,
                 http_port: int) -> None:
        self._cmd = [sys.executable, "-m", "gateway", "--config", str(config), "serve"]
        self._env = {**os.environ, **env}
        self.log_file = log_file
        self.base = f"http://127.0.0.1:{http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(self._cmd, env=self._env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)

    def kill(self) -> None:
        """SIGKILL: no drain, no unbind, no flush — a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    async def wait_healthy(self, http: aiohttp.ClientSession, timeout: float = 60.0, *,
                           serving: bool = False) -> None:
        """Until ``/healthz`` says 200 (``serving``: until it answers at all; under a restart's
        backlog a busy pool can make the Postgres probe time out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"smsgw serve exited with {self.proc.returncode}; "
                                   f"see {self.log_file}:\n{self.log_tail()}")
            with contextlib.suppress(*RETRYABLE):
                async with http.get(f"{self.base}/healthz") as resp:
                    if resp.status == 200 or serving:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"smsgw serve not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def destination(n: int) -> str:
    """The E.164 number of message ``n`` (each message has its own)."""
    return f"84901{n:06d}"


def text_of(n: int) -> str:
    return f"Chaos {n}: cuoc thang 11/2026 cua Quy khach la 125.000d."


class Run:
    """One chaos run: the client tasks, the killer and the final count."""

    def __init__(self, settings: ChaosSettings, gateway: GatewayProcess, sim: SmscSimulator,
                 pool: asyncpg.Pool, key: str) -> None:
        self.s = settings
        self.gw = gateway
        self.sim = sim
        self.pool = pool
        self.key = key
        self.rng = random.Random(settings.seed)
        self.tag = uuid.uuid4().hex[:8]
        self.report = ChaosReport(settings=settings, log_file=gateway.log_file)
        self._numbers: Iterator[int] = iter(range(settings.count))
        self._intake_done = asyncio.Event()

    async def _post(self, http: aiohttp.ClientSession, n: int) -> None:
        body = {"to": f"0{destination(n)[2:]}", "text": text_of(n),
                "idempotency_key": f"chaos-{self.tag}-{n}"}
        delay, retried = 0.05, False
        deadline = time.monotonic() + 120
        while True:
            try:
                async with http.post(f"{self.gw.base}/v1/messages", json=body) as resp:
                    if resp.status in (200, 202):
                        await resp.read()
                        self.report.accepted += 1
                        if resp.status == 200 and retried:
                            self.report.replayed += 1
                        return
                    if resp.status < 500 and resp.status != 429:
                        raise AssertionError(f"POST refused: {resp.status} {await resp.text()}")
            except RETRYABLE:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"message {n} not accepted within 120 s")
            retried = True
            self.report.http_retries += 1
            await asyncio.sleep(delay)
            delay = min(0.5, delay * 2)

    async def _client(self, http: aiohttp.ClientSession) -> None:
        for n in self._numbers:
            await self._post(http, n)

    async def _killer(self, http: aiohttp.ClientSession) -> None:
        """Kill at random points of the intake (by messages accepted), restart each time."""
        marks = sorted(self.rng.uniform(0.05, 0.95) * self.s.count for _ in range(self.s.kills))
        for mark in marks:
            while self.report.accepted < mark and not self._intake_done.is_set():
                await asyncio.sleep(0.005)
            await asyncio.sleep(self.rng.uniform(0, 0.2))
            self.gw.kill()
            self.report.kills += 1
            if self.s.progress_s:
                print(f"kill -9 #{self.report.kills} at {self.report.accepted} accepted",
                      file=sys.stderr)
            await asyncio.sleep(self.rng.uniform(0, 0.3))
            self.gw.start()
            await self.gw.wait_healthy(http, serving=True)

    async def run(self) -> ChaosReport:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=20)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession(
                headers=headers, timeout=timeout,
                connector=aiohttp.TCPConnector(limit=self.s.concurrency)) as http:
            await self.gw.wait_healthy(http)
            killer = asyncio.create_task(self._killer(http))
            progress = asyncio.create_task(self._progress(started))
            try:
                await asyncio.gather(*(self._client(http) for _ in range(self.s.concurrency)))
                self._intake_done.set()
                await killer
                await self._wait_terminal()
            finally:
                for task in (killer, progress):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        self.report.seconds = time.monotonic() - started
        await self._count()
        return self.report

    async def _progress(self, started: float) -> None:
        if not self.s.progress_s:
            return
        while True:
            await asyncio.sleep(self.s.progress_s)
            rows = await self.pool.fetch("SELECT status, count(*) AS n FROM messages "
                                         "GROUP BY status ORDER BY status")
            print(f"{time.monotonic() - started:6.1f}s accepted {self.report.accepted} "
                  f"kills {self.report.kills} smsc parts {self.sim.parts_received} "
                  + " ".join(f"{r['status']} {r['n']}" for r in rows), file=sys.stderr)

    async def _wait_terminal(self) -> None:
        deadline = time.monotonic() + self.s.terminal_timeout_s
        while True:
            rows = await self.pool.fetch("SELECT status, count(*) AS n FROM messages "
                                         "GROUP BY status")
            self.report.statuses = collections.Counter({r["status"]: r["n"] for r in rows})
            if self.report.not_terminal == 0 or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.25)

    async def _count(self) -> None:
        r = self.report
        r.rows = int(await self.pool.fetchval("SELECT count(*) FROM messages"))
        prefix = f"chaos-{self.tag}-"
        rows = await self.pool.fetch(
            "SELECT m.idempotency_key AS key, m.status, EXISTS (SELECT 1 FROM message_events e "
            "WHERE e.message_id = m.id AND e.detail LIKE '%ambiguous%') AS ambiguous "
            "FROM messages m WHERE m.idempotency_key LIKE $1 || '%'", prefix)
        given_up: set[int] = set()
        for row in rows:
            number = int(row["key"][len(prefix):])
            if row["status"] not in TERMINAL:
                r.unfinished.append(number)
            if row["ambiguous"]:
                r.ambiguous.add(number)
                if row["status"] == "failed":
                    given_up.add(number)
        seen: collections.Counter[int] = collections.Counter()
        numbers = {destination(n): n for n in range(self.s.count)}
        for (dest, text), times in self.sim.received.items():
            found = numbers.get(dest)
            if found is not None and text == text_of(found):
                seen[found] += times
        pending = set(r.unfinished)
        r.lost = [n for n in range(self.s.count)
                  if not seen[n] and n not in given_up and n not in pending]
        r.duplicates = {n: times for n, times in seen.items() if times > 1}


async def run_chaos(*, dsn: str, redis_dsn: str, settings: ChaosSettings,
                    workdir: Path) -> ChaosReport:
    """One run against a migrated database ``dsn`` and the Redis ``redis_dsn``."""
    sim = SmscSimulator(SimulatorConfig(port=0, receipt_delay_s=0.05, seed=settings.seed))
    await sim.start()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    http_port = free_port()
    config = workdir / "chaos.toml"
    write_config(config, smpp_port=sim.port, http_port=http_port,
                 queue=f"smsgw:chaos:{uuid.uuid4().hex}", settings=settings)
    gateway = GatewayProcess(config, {"SMSGW_DATABASE_DSN": dsn, "SMSGW_REDIS_DSN": redis_dsn},
                             workdir / "gateway.log", http_port)
    try:
        # no request rate limit: this measures crash recovery, not the key's throttle
        _, key = await ApiKeyStore(pool).create(f"chaos-{uuid.uuid4().hex[:8]}",
                                                ("messages:send",), rate_per_s=0)
        gateway.start()
        return await Run(settings, gateway, sim, pool, key).run()
    finally:
        gateway.stop()
        gateway.kill()
        await pool.close()
        await sim.stop()


# --- the benchmark --------------------------------------------------------------------------

ADMIN = os.environ.get("SMSGW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SMSGW_BENCH_REDIS", "redis://127.0.0.1:6379/14")


async def _scratch_run(settings: ChaosSettings, keep: Path | None) -> ChaosReport:
    from gateway.store.migrate import migrate_dsn

    db = f"smsgw_chaos_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
        dsn = ADMIN.rpartition("/")[0] + f"/{db}"
        await migrate_dsn(dsn, PROJECT_ROOT / "sql")
        with tempfile.TemporaryDirectory(prefix="smsgw-chaos-") as tmp:
            workdir = Path(tmp)
            if keep is not None:
                workdir = keep / settings.policy
                workdir.mkdir(parents=True, exist_ok=True)
            report = await run_chaos(dsn=dsn, redis_dsn=REDIS, settings=settings,
                                     workdir=workdir)
            if report.lost or report.unexplained_duplicates or report.not_terminal:
                log = workdir / "gateway.log"
                tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
                print("gateway log tail:", *tail, sep="\n", file=sys.stderr)
            return report
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--policy", choices=("resend", "fail", "both"), default="both")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--progress", type=float, default=5.0, metavar="S",
                   help="print progress to stderr every S seconds (0 = never)")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the gateway config and log in this directory")
    args = p.parse_args(argv)
    policies = ("resend", "fail") if args.policy == "both" else (args.policy,)
    seed: int = random.randrange(1 << 30) if args.seed is None else args.seed
    reports: list[ChaosReport] = []
    for policy in policies:
        settings = ChaosSettings(count=args.count, kills=args.kills, policy=policy,
                                 concurrency=args.concurrency, window=args.window, seed=seed,
                                 progress_s=args.progress)
        reports.append(asyncio.run(_scratch_run(settings, args.keep)))
    print(f"\nseed {seed}; gateway = `smsgw serve` subprocess, kill -9 at random points of "
          "the intake, restarted each time\n")
    print(TABLE_HEAD)
    for report in reports:
        print(report.row())
    for report in reports:
        print(f"\n{report.settings.policy}: statuses {dict(report.statuses)}; "
              f"{report.replayed} retried request(s) answered 200 (already stored); "
              f"{report.rows} row(s) for {report.accepted} accepted")
    bad = any(r.lost or r.unexplained_duplicates or r.not_terminal or r.rows != r.accepted
              or (r.settings.policy == "fail" and r.duplicates) for r in reports)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: simtools
    from simtools import print_result

    print_result("chaos", throughput_per_s=sum(r.accepted for r in reports)
                 / max(0.001, sum(r.seconds for r in reports)),
                 unit="msg/s from first POST to all terminal, through the kills",
                 note=f"{args.count} messages, {args.kills} kill -9 per policy",
                 **{f"{r.settings.policy}_{k}": v for r in reports for k, v in (
                     ("lost", len(r.lost)), ("unfinished", len(r.unfinished)),
                     ("duplicates", len(r.duplicates)), ("ambiguous", len(r.ambiguous)),
                     ("unexplained_duplicates", len(r.unexplained_duplicates)))})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_main())
