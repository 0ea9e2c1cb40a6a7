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


async def test_readiness_follows_the_database(stack: Stack) -> None:
    """/readyz turns 503 (naming the database) while PostgreSQL is away, and 200 after."""
    from tests.integration.test_ingest_api import running

    assert stack.restart_database is not None
    restart = stack.restart_database
    seen: list[int] = []
    async with running(stack) as api:
        assert (await api.client.get("/readyz")).status_code == 200

        async def probe() -> None:
            while True:
                response = await api.client.get("/readyz")
                seen.append(response.status_code)
                if response.status_code == 503:
                    assert response.json()["checks"]["database"] != "ok"
                await anyio.sleep(0.2)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe)
                await restart(3.0)
                while seen[-1] != 200 or 503 not in seen:
                    await anyio.sleep(0.2)
                tg.cancel_scope.cancel()
        # And the API works again: a job is accepted after the restart.
        await api.submit(inputs=["after the restart"])
    assert 503 in seen
    assert seen[-1] == 200
