"""Migrations against the real Postgres: idempotent, concurrency-safe, strict about names."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway import PROJECT_ROOT
from gateway.store.migrate import MigrationError, find_migrations, migrate, migrate_dsn
from tests.conftest import PG_ADMIN_DSN

SQL_DIR = PROJECT_ROOT / "sql"


@pytest.fixture
async def fresh_dsn() -> AsyncIterator[str]:
    """An empty database created for one test and dropped after it."""
    name = f"smsgw_mig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_project_migrations_are_numbered_in_order() -> None:
    names = [m.name for m in find_migrations(SQL_DIR)]
    assert names[:2] == ["0001_messages.sql", "0002_api_keys.sql"]
    assert names == sorted(names)


async def test_rerun_applies_nothing(pg_dsn: str) -> None:
    assert await migrate_dsn(pg_dsn, SQL_DIR) == []
    assert await migrate_dsn(pg_dsn, SQL_DIR) == []


async def test_fresh_db_applies_all_then_nothing(fresh_dsn: str) -> None:
    expected = [m.name for m in find_migrations(SQL_DIR)]
    assert await migrate_dsn(fresh_dsn, SQL_DIR) == expected
    assert await migrate_dsn(fresh_dsn, SQL_DIR) == []


async def test_concurrent_migrations_apply_each_file_once(fresh_dsn: str) -> None:
    expected = [m.name for m in find_migrations(SQL_DIR)]
    one = await asyncpg.connect(fresh_dsn)
    two = await asyncpg.connect(fresh_dsn)
    try:
        first, second = await asyncio.gather(migrate(one, SQL_DIR), migrate(two, SQL_DIR))
        assert sorted(first + second) == expected
        rows = await one.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r["name"] for r in rows] == expected
        assert [r["version"] for r in rows] == [int(n[:4]) for n in expected]
        tables = {
            r["tablename"]
            for r in await one.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"messages", "message_parts", "message_events", "pending_receipts"} <= tables
        assert "api_keys" in tables
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize(
    "bad", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "00001_five.sql", "0001_.sql"]
)
def test_bad_file_name_is_rejected(tmp_path: Path, bad: str) -> None:
    _write(tmp_path, {"0001_ok.sql": "SELECT 1;", bad: "SELECT 1;"})
    with pytest.raises(MigrationError, match="bad migration file name"):
        find_migrations(tmp_path)


def test_duplicate_number_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path, {"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match="share number 0001"):
        find_migrations(tmp_path)


def test_other_files_are_ignored_and_order_is_numeric(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {"0010_c.sql": "", "0002_b.sql": "", "0001_a.sql": "", "README.md": "not sql"},
    )
    assert [m.version for m in find_migrations(tmp_path)] == [1, 2, 10]


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        find_migrations(tmp_path / "nope")


async def test_failed_migration_rolls_back_alone(fresh_dsn: str, tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "0001_good.sql": "CREATE TABLE t_good (id int);",
            "0002_bad.sql": "CREATE TABLE t_bad (id int); SELEC broken;",
        },
    )
    with pytest.raises(MigrationError, match=r"0002_bad\.sql failed"):
        await migrate_dsn(fresh_dsn, tmp_path)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [1]
        assert await conn.fetchval("SELECT to_regclass('t_good') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('t_bad') IS NULL")
    finally:
        await conn.close()
    # fixed file: the next run applies only the missing migration
    _write(tmp_path, {"0002_bad.sql": "CREATE TABLE t_bad (id int);"})
    assert await migrate_dsn(fresh_dsn, tmp_path) == ["0002_bad.sql"]


async def test_renamed_applied_migration_is_an_error(fresh_dsn: str, tmp_path: Path) -> None:
    _write(tmp_path, {"0001_first.sql": "SELECT 1;"})
    assert await migrate_dsn(fresh_dsn, tmp_path) == ["0001_first.sql"]
    (tmp_path / "0001_first.sql").rename(tmp_path / "0001_other.sql")
    with pytest.raises(MigrationError, match="recorded as"):
        await migrate_dsn(fresh_dsn, tmp_path)
