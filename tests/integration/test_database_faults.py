"""Work survives a PostgreSQL restart: whole idempotent transactions are retried."""

import uuid

import anyio
import asyncpg
import pytest

from emulator import Stack
from shared.db import transaction

pytestmark = pytest.mark.anyio


async def test_transactions_retry_across_a_restart(stack: Stack) -> None:
    assert stack.restart_database is not None
    restart = stack.restart_database
    marker = uuid.uuid4().hex
    async with asyncpg.create_pool(stack.database_url, min_size=2, max_size=4) as pool:

        async def writer(count: int) -> None:
            for _ in range(count):
                job_id = uuid.uuid4()

                # Idempotent, as every unit of work must be: a commit whose answer was lost
                # in the restart is run again and changes nothing.
                async def insert(conn: asyncpg.Connection, job_id: uuid.UUID = job_id) -> None:
                    await conn.execute(
                        "INSERT INTO jobs (id, tenant_id, model) VALUES ($1, $2, 'm') "
                        "ON CONFLICT (id) DO NOTHING",
                        job_id,
                        marker,
                    )

                await transaction(pool, insert)
                await anyio.sleep(0.02)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer, 60)
                tg.start_soon(writer, 60)
                await anyio.sleep(0.3)
                await restart(1.0)  # down for a second while both writers go on
        written = await transaction(
            pool,
            lambda conn: conn.fetchval("SELECT count(*) FROM jobs WHERE tenant_id = $1", marker),
        )
    assert written == 120
