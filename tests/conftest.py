"""Shared fixtures: each test run gets its own Postgres database and its own Redis db.

Both are real servers on this machine (see README "Tests"); the database is created at the
start of the run, migrated with sql/, and dropped at the end; the Redis db is flushed after.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis

from gateway import PROJECT_ROOT

PG_ADMIN_DSN = os.environ.get("SMSGW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("SMSGW_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("SMSGW_TEST_REDIS_PORT", "6379"))


def _dsn_for(db: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{db}"


async def _create_db(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a fresh, migrated database private to this test run."""
    from gateway.store.migrate import migrate_dsn

    name = f"smsgw_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_db(name))
    dsn = _dsn_for(name)
    try:
        asyncio.run(migrate_dsn(dsn, PROJECT_ROOT / "sql"))
        yield dsn
    finally:
        asyncio.run(_drop_db(name))


@pytest.fixture
async def pg_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=8)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis logical db that was empty when the run started; flushed when it ends."""
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        # claim the db with a marker key so parallel runs do not pick the same one
        if client.dbsize() == 0 and client.set("smsgw:test-claim", "1", nx=True):
            try:
                yield db
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    raise RuntimeError("no empty Redis db (1-15) left for the test run; flush one and retry")


@pytest.fixture(scope="session")
def redis_dsn(redis_db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"


@pytest.fixture
async def fresh_pg_dsn() -> AsyncIterator[str]:
    """A fresh migrated database for one test (for tests whose sweeper must see only its rows)."""
    from gateway.store.migrate import migrate_dsn

    name = f"smsgw_test_{uuid.uuid4().hex[:12]}"
    await _create_db(name)
    dsn = _dsn_for(name)
    try:
        await migrate_dsn(dsn, PROJECT_ROOT / "sql")
        yield dsn
    finally:
        await _drop_db(name)
