"""Forward-only schema migrations: ``sql/NNNN_name.sql`` applied in numeric order.

Each file runs in its own transaction together with its ``schema_migrations`` row, under a
transaction-scoped advisory lock, so two processes migrating the same database at once apply
every file exactly once (the second waits, then finds it recorded).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("smsgw.store.migrate")

#: Key of the advisory lock that serialises migrations (bigint key space; "smsgwmig").
MIGRATION_LOCK_KEY = 0x736D7367776D6967

_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_LOCK = "SELECT pg_advisory_xact_lock($1)"
_RECORDED = "SELECT name FROM schema_migrations WHERE version = $1"
_RECORD = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"


class MigrationError(RuntimeError):
    """The migration directory is malformed or a migration conflicts with the database."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "0001_messages.sql"
    path: Path


def find_migrations(sql_dir: Path) -> list[Migration]:
    """Every ``*.sql`` file of ``sql_dir`` in numeric order; rejects bad or duplicate names."""
    if not sql_dir.is_dir():
        raise MigrationError(f"migration directory {sql_dir} does not exist")
    by_version: dict[int, Migration] = {}
    for path in sorted(sql_dir.iterdir()):
        if not path.is_file() or path.suffix != ".sql":
            continue
        match = _FILE_RE.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"bad migration file name {path.name!r}: expected NNNN_name.sql "
                "(four digits, underscore, lower-case letters, digits or underscores)"
            )
        version = int(match.group(1))
        if version in by_version:
            raise MigrationError(
                f"two migrations share number {match.group(1)}: "
                f"{by_version[version].name} and {path.name}"
            )
        by_version[version] = Migration(version=version, name=path.name, path=path)
    return [by_version[v] for v in sorted(by_version)]


async def migrate(conn: asyncpg.Connection, sql_dir: Path) -> list[str]:
    """Apply every migration of ``sql_dir`` not yet recorded; returns the file names applied."""
    migrations = find_migrations(sql_dir)
    async with conn.transaction():
        await conn.execute(_LOCK, MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
    applied: list[str] = []
    for migration in migrations:
        sql = migration.path.read_text(encoding="utf-8")
        async with conn.transaction():
            await conn.execute(_LOCK, MIGRATION_LOCK_KEY)
            recorded: str | None = await conn.fetchval(_RECORDED, migration.version)
            if recorded is not None:
                if recorded != migration.name:
                    raise MigrationError(
                        f"migration {migration.version:04d} is recorded as {recorded!r} "
                        f"but the file is {migration.name!r}"
                    )
                continue
            log.info("applying migration %s", migration.name)
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
            await conn.execute(_RECORD, migration.version, migration.name)
        applied.append(migration.name)
    if applied:
        log.info("applied %d migration(s): %s", len(applied), ", ".join(applied))
    return applied


async def migrate_dsn(dsn: str, sql_dir: Path) -> list[str]:
    """Connect to ``dsn``, :func:`migrate`, close."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, sql_dir)
    finally:
        await conn.close()


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it does not exist; True when created.

    Connects to the server's ``postgres`` database for that, so the first ``smsgw migrate``
    on a fresh machine needs no manual ``createdb``.
    """
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    base, _, rest = dsn.rpartition("/")
    name, _, query = rest.partition("?")
    admin = await asyncpg.connect(f"{base}/postgres" + (f"?{query}" if query else ""))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await admin.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False
        log.info("created database %s", name)
        return True
    finally:
        await admin.close()
