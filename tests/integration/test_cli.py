"""The ``smsgw`` console command, run as a user would (a subprocess) against real services."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


def smsgw(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})


@pytest.fixture
def env(fresh_pg_dsn: str, redis_dsn: str) -> dict[str, str]:
    return {"SMSGW_DATABASE_DSN": fresh_pg_dsn, "SMSGW_REDIS_DSN": redis_dsn,
            "SMSGW_REDIS_QUEUE_NAME": f"smsgw:test:{uuid.uuid4().hex}"}


def test_migrate_is_idempotent(env: dict[str, str]) -> None:
    first = smsgw("migrate", env=env)
    assert first.returncode == 0, first.stderr
    # the fixture already migrated; a new migration would be listed, otherwise up to date
    assert "up to date" in first.stdout
    assert smsgw("migrate", env=env).stdout.strip() == "database is up to date"


def test_migrate_creates_a_missing_database(env: dict[str, str]) -> None:
    base = env["SMSGW_DATABASE_DSN"].rpartition("/")[0]
    name = f"smsgw_test_{uuid.uuid4().hex[:12]}"
    try:
        out = smsgw("migrate", env={**env, "SMSGW_DATABASE_DSN": f"{base}/{name}"})
        assert out.returncode == 0, out.stderr
        assert "0001_messages.sql" in out.stdout
    finally:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False,
                       capture_output=True)


def test_apikey_create_list_revoke(env: dict[str, str]) -> None:
    made = smsgw("apikey", "create", "--name", "billing", "--scope", "messages:send",
                 "--scope", "events:write", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("smsgw_") and len(key) > 30
    listed = smsgw("apikey", "list", env=env)
    assert "billing" in listed.stdout and key not in listed.stdout
    assert "messages:send,events:write" in listed.stdout
    again = smsgw("apikey", "create", "--name", "billing", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert smsgw("apikey", "revoke", "billing", env=env).returncode == 0
    assert "revoked" in smsgw("apikey", "list", env=env).stdout
    assert smsgw("apikey", "revoke", "nobody", env=env).returncode == 1


def test_templates_check_passes() -> None:
    out = smsgw("templates", "check", env={})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "promotion" in out.stdout and "advertising" in out.stdout


def test_templates_check_fails_on_an_unlabelled_advert_and_on_errors(tmp_path: Path) -> None:
    (tmp_path / "promo.j2").write_text("Khuyen mai lon cho {{ full_name }}!", encoding="utf-8")
    (tmp_path / "promo.toml").write_text(
        'class = "advertising"\nsender = "KM"\nmax_segments = 1\ndescription = "x"\n'
        '[sample]\nfull_name = "An"\n', encoding="utf-8")
    out = smsgw("templates", "check", "--dir", str(tmp_path), env={})
    assert out.returncode == 1 and "[QC]" in out.stdout
    (tmp_path / "promo.j2").write_text("[QC] {{ missing }} Tu choi QC soan TC gui 1234",
                                       encoding="utf-8")
    out = smsgw("templates", "check", "--dir", str(tmp_path), env={})
    assert out.returncode == 1 and "missing" in out.stdout


def test_unreachable_postgres_is_one_clear_line(env: dict[str, str]) -> None:
    out = smsgw("migrate", env={**env, "SMSGW_DATABASE_DSN":
                                "postgresql://postgres@127.0.0.1:1/smsgw"})
    assert out.returncode == 3
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "127.0.0.1:1" in lines[0] and "SMSGW_DATABASE_DSN" in lines[0]


def test_status_without_a_gateway_says_so(env: dict[str, str]) -> None:
    out = smsgw("status", "--url", "http://127.0.0.1:1", env=env)
    assert out.returncode == 3 and "no gateway answers at http://127.0.0.1:1" in out.stderr


def test_bad_config_is_reported(tmp_path: object, env: dict[str, str]) -> None:
    out = smsgw("migrate", env={**env, "SMSGW_SMPP_WINDOW": "many"})
    assert out.returncode == 2 and "smpp.window" in out.stderr


def test_demo_runs_end_to_end(env: dict[str, str]) -> None:
    out = smsgw("demo", env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for template in ("birthday", "bill_issued", "promotion"):
        assert template in out.stdout
    assert out.stdout.count("delivered") >= 3
    assert "duplicates: 0" in out.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_http(url: str, timeout: float = 20) -> int:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            last = exc.code
            if last == 200:
                return last
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become healthy")


def test_serve_sends_and_stops_cleanly_on_sigterm(env: dict[str, str]) -> None:
    import json
    import signal
    import time
    import urllib.request

    smpp_port, http_port, ctl_port = _free_port(), _free_port(), _free_port()
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "smsc-sim", "--port", str(smpp_port),
                            "--receipt-delay", "0.1", "--control-port", str(ctl_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_env = {**os.environ, **env, "SMSGW_SMPP_PORT": str(smpp_port),
               "SMSGW_HTTP_PORT": str(http_port)}
    serve = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=run_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_http(f"http://127.0.0.1:{http_port}/healthz") == 200
        key = smsgw("apikey", "create", "--name", "ops", env=env).stdout.strip().splitlines()[-1]
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/messages", method="POST",
            data=json.dumps({"to": "0912345678", "text": "Xin chào từ smsgw"}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
            mid = json.loads(resp.read())["id"]
        status = ""
        deadline = time.monotonic() + 15
        while status != "delivered" and time.monotonic() < deadline:
            time.sleep(0.2)
            get = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/messages/{mid}",
                                         headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(get, timeout=5) as resp:
                status = json.loads(resp.read())["status"]
        assert status == "delivered"
        with urllib.request.urlopen(f"http://127.0.0.1:{ctl_port}/stats", timeout=5) as resp:
            assert json.loads(resp.read())["parts_received"] == 1
        status_out = smsgw("status", "--url", f"http://127.0.0.1:{http_port}", env=env)
        assert status_out.returncode == 0, status_out.stdout + status_out.stderr
        assert "default" in status_out.stdout and "yes" in status_out.stdout
        assert "postgres: up" in status_out.stdout
        started = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        rc = serve.wait(timeout=15)
        assert rc == 0 and time.monotonic() - started < 10
        out = serve.stdout.read() if serve.stdout else ""
        assert "0912345678" not in out and "84912345678" not in out  # numbers masked in logs
        assert "Xin chào" not in out  # bodies never logged at INFO
    finally:
        for proc in (serve, sim):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_dnc_import_cli(env: dict[str, str], tmp_path: Path) -> None:
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "dnc.csv"
    out = smsgw("dnc", "import", str(shared), "--source", "dnc-2026-11", env=env)
    assert out.returncode == 0, out.stderr
    listed = sum(1 for line in shared.read_text().splitlines()[1:] if line.strip())
    assert f"{listed} numbers on the Do-Not-Call list" in out.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("ten\nAn\n")
    out = smsgw("dnc", "import", str(bad), env=env)
    assert out.returncode == 1 and "nothing was imported" in out.stderr
