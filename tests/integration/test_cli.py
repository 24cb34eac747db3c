"""The ``smsgw`` console command, run as a user would (a subprocess) against real services."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

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


def test_unreachable_postgres_is_one_clear_line(env: dict[str, str]) -> None:
    out = smsgw("migrate", env={**env, "SMSGW_DATABASE_DSN":
                                "postgresql://postgres@127.0.0.1:1/smsgw"})
    assert out.returncode == 3
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "127.0.0.1:1" in lines[0] and "SMSGW_DATABASE_DSN" in lines[0]


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
