"""The migration runner applies each migration once, in order, and refuses edited history."""

import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from emulator import Stack
from shared.db import Migration, discover, migrate
from shared.errors import MigrationError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fresh_db(stack: Stack) -> AsyncIterator[str]:
    """A new, empty database on the session's PostgreSQL, dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield stack.database_url.replace("/conveyor?", f"/{name}?")
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_applies_all_once_then_nothing(fresh_db: str) -> None:
    conn = await asyncpg.connect(fresh_db)
    try:
        first = await migrate(conn)
        assert [m.version for m in first] == [m.version for m in discover()]
        assert await conn.fetchval("SELECT to_regclass('jobs') IS NOT NULL")
        assert await migrate(conn) == []
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in rows] == [
            (m.version, m.checksum) for m in discover()
        ]
    finally:
        await conn.close()


async def test_emulator_database_is_already_migrated(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_concurrent_runners_apply_each_migration_once(fresh_db: str) -> None:
    migrations = [
        Migration(1, "counter", "CREATE TABLE counter (n integer NOT NULL)"),
        Migration(2, "bump", "INSERT INTO counter VALUES (1)"),
    ]
    applied: list[list[Migration]] = []

    async def runner() -> None:
        conn = await asyncpg.connect(fresh_db)
        try:
            applied.append(await migrate(conn, migrations))
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(runner)
    # Each migration was applied by exactly one runner (not necessarily the same one).
    assert sorted(m.version for run in applied for m in run) == [1, 2]
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM counter") == 1
    finally:
        await conn.close()


async def test_edited_migration_is_refused(fresh_db: str) -> None:
    conn = await asyncpg.connect(fresh_db)
    try:
        await migrate(conn, [Migration(1, "t", "CREATE TABLE t (a int)")])
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [Migration(1, "t", "CREATE TABLE t (a bigint)")])
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_says_which(fresh_db: str) -> None:
    conn = await asyncpg.connect(fresh_db)
    try:
        broken = [
            Migration(1, "ok", "CREATE TABLE ok (a int)"),
            Migration(2, "broken", "CREATE TABLE half (a int); SELECT no_such_function()"),
        ]
        with pytest.raises(MigrationError, match="0002_broken failed"):
            await migrate(conn, broken)
        assert await conn.fetchval("SELECT to_regclass('half') IS NULL")
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1
    finally:
        await conn.close()
