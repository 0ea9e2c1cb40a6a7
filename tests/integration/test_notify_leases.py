"""Two copies of one notification: only one worker may deliver it at a time."""

import uuid

import anyio
import asyncpg
import pytest

from emulator import Stack
from services.notify.store import claim_delivery, release_delivery

pytestmark = pytest.mark.anyio


async def test_one_lease_per_job_event(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        job_id = uuid.uuid4()
        await conn.execute("INSERT INTO jobs (id, tenant_id, model) VALUES ($1, 't', 'm')", job_id)
        assert await claim_delivery(conn, job_id, "job.succeeded", 30)
        assert not await claim_delivery(conn, job_id, "job.succeeded", 30)
        assert await claim_delivery(conn, job_id, "job.failed", 30)  # another event
        await release_delivery(conn, job_id, "job.succeeded")
        assert await claim_delivery(conn, job_id, "job.succeeded", 0.2)
        await anyio.sleep(0.5)  # a crashed holder's lease runs out
        assert await claim_delivery(conn, job_id, "job.succeeded", 30)
    finally:
        await conn.close()


async def test_concurrent_claims_have_one_winner(stack: Stack) -> None:
    async with asyncpg.create_pool(stack.database_url, min_size=1, max_size=8) as pool:
        job_id = uuid.uuid4()
        await pool.execute("INSERT INTO jobs (id, tenant_id, model) VALUES ($1, 't', 'm')", job_id)
        wins: list[bool] = []

        async def claim() -> None:
            async with pool.acquire() as conn:
                wins.append(await claim_delivery(conn, job_id, "job.succeeded", 30))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(claim)
    assert sorted(wins) == [False] * 7 + [True]
