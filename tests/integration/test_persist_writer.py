"""persist records a job's result once, however often the result message arrives."""

import datetime
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import asyncpg
import pytest

from emulator import Stack
from services.persist.writer import (
    Recorded,
    ResultWriter,
    StartedWriter,
    StartRequest,
    WriteRequest,
)
from shared.messages import JobResult, JobStatus, PoisonMessage, Vectors
from shared.vectors import unpack

pytestmark = pytest.mark.anyio

NOW = datetime.datetime.now(datetime.UTC)


def result(status: JobStatus = JobStatus.SUCCEEDED, value: float = 1.0) -> JobResult:
    return JobResult(
        status=status,
        model="m",
        model_version="1",
        vectors=Vectors.of([[value, 0.0]]) if status == JobStatus.SUCCEEDED else None,
        error=None if status == JobStatus.SUCCEEDED else "boom",
        started_at=NOW,
        finished_at=NOW,
    )


@pytest.fixture
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(stack.database_url, min_size=1, max_size=4) as created:
        yield created


async def new_job(pool: asyncpg.Pool, tenant: str = "t1") -> uuid.UUID:
    job_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO jobs (id, tenant_id, model, inputs_count) VALUES ($1, $2, 'm', 1)",
        job_id,
        tenant,
    )
    return job_id


async def concurrently(
    writer: ResultWriter | StartedWriter, calls: list[Callable[[], Awaitable[object]]]
) -> list[object]:
    """Every call at once, with the writer's batching loop running; each call's outcome (a
    PoisonMessage raised is its outcome)."""
    outcomes: list[object] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await calls[i]()
        except PoisonMessage as exc:
            outcomes[i] = exc

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            writer.start(tg)
            async with anyio.create_task_group() as callers:
                for i in range(len(calls)):
                    callers.start_soon(one, i)
            tg.cancel_scope.cancel()
    return outcomes


async def record_all(writer: ResultWriter, requests: list[WriteRequest]) -> list[object]:
    return await concurrently(writer, [functools.partial(writer.record, r) for r in requests])


async def test_duplicate_results_are_recorded_once(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    first = WriteRequest(job_id, "t1", result(value=1.0))
    second = WriteRequest(job_id, "t1", result(value=2.0))  # a late, different duplicate
    # Together in one batch, then again alone: one row either way.
    outcomes = await record_all(ResultWriter(pool), [first, second])
    assert sorted(map(str, outcomes)) == ["duplicate", "new"]
    assert await record_all(ResultWriter(pool), [first]) == [Recorded.DUPLICATE]
    rows = await pool.fetch("SELECT vectors, dimensions FROM results WHERE job_id = $1", job_id)
    assert [unpack(row["vectors"], row["dimensions"]) for row in rows] == [[[1.0, 0.0]]]
    job = await pool.fetchrow("SELECT status, version, finished_at FROM jobs WHERE id = $1", job_id)
    assert job["status"] == "succeeded"
    assert job["version"] == 1
    assert job["finished_at"] is not None


async def test_vectors_are_stored_as_they_came(pool: asyncpg.Pool) -> None:
    """The message's bytes are the row's bytes: nothing parsed, nothing rounded."""
    job_id = await new_job(pool)
    sent = Vectors.of([[0.1, -2.5, 3.0e-7], [1.0, 0.0, -0.0]])
    packed = result().model_copy(update={"vectors": sent})
    assert await record_all(ResultWriter(pool), [WriteRequest(job_id, "t1", packed)]) == [
        Recorded.NEW
    ]
    row = await pool.fetchrow(
        "SELECT vectors, dimensions, outputs FROM results WHERE job_id = $1", job_id
    )
    assert (row["vectors"], row["dimensions"], row["outputs"]) == (sent.data, 3, None)


async def test_a_result_with_numbers_from_an_older_infer_is_stored_packed(
    pool: asyncpg.Pool,
) -> None:
    """A rolling upgrade leaves results of the old shape (``outputs``) in the queue."""
    job_id = await new_job(pool)
    numbers = [[0.5, -0.25], [1.0, 0.1]]
    old = result().model_copy(update={"vectors": None, "outputs": numbers})
    assert await record_all(ResultWriter(pool), [WriteRequest(job_id, "t1", old)]) == [Recorded.NEW]
    row = await pool.fetchrow("SELECT vectors, dimensions FROM results WHERE job_id = $1", job_id)
    stored = unpack(row["vectors"], row["dimensions"])
    assert stored[0] == [0.5, -0.25]  # exact in float32
    assert stored[1][0] == 1.0 and stored[1][1] == pytest.approx(0.1, rel=1e-7)


async def test_the_database_refuses_vectors_that_are_not_whole(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO results (job_id, vectors, dimensions) VALUES ($1, $2, 2)",
            job_id,
            b"\0" * 12,  # one and a half vectors of 2
        )


async def test_final_state_is_final(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    await record_all(ResultWriter(pool), [WriteRequest(job_id, "t1", result(JobStatus.FAILED))])
    await record_all(ResultWriter(pool), [WriteRequest(job_id, "t1", result())])
    job = await pool.fetchrow("SELECT status, error FROM jobs WHERE id = $1", job_id)
    assert (job["status"], job["error"]) == ("failed", "boom")
    assert await pool.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job_id) == 0


async def test_unknown_job_or_other_tenant_is_poison_and_spares_the_batch(
    pool: asyncpg.Pool,
) -> None:
    good = await new_job(pool)
    foreign = await new_job(pool, tenant="t2")
    outcomes = await record_all(
        ResultWriter(pool),
        [
            WriteRequest(uuid.uuid4(), "t1", result()),
            WriteRequest(foreign, "t1", result()),
            WriteRequest(good, "t1", result()),
        ],
    )
    assert isinstance(outcomes[0], PoisonMessage)
    assert isinstance(outcomes[1], PoisonMessage)
    assert outcomes[2] == Recorded.NEW
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", foreign) == "queued"


async def test_finishing_a_job_notifies_listeners(stack: Stack, pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    heard: list[str] = []
    listener = await asyncpg.connect(stack.database_url)
    try:
        await listener.add_listener("job_finished", lambda *args: heard.append(args[3]))
        await record_all(ResultWriter(pool), [WriteRequest(job_id, "t1", result())])
        with anyio.fail_after(5):
            while str(job_id) not in heard:
                await anyio.sleep(0.05)
    finally:
        await listener.close()


async def test_the_database_refuses_to_leave_a_final_state(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    await pool.execute("UPDATE jobs SET status = 'running' WHERE id = $1", job_id)
    with pytest.raises(asyncpg.CheckViolationError, match="cannot go back to queued"):
        await pool.execute("UPDATE jobs SET status = 'queued' WHERE id = $1", job_id)
    await pool.execute("UPDATE jobs SET status = 'cancelled' WHERE id = $1", job_id)
    for status in ("queued", "running", "succeeded", "failed"):
        with pytest.raises(asyncpg.CheckViolationError, match="is cancelled and cannot become"):
            await pool.execute("UPDATE jobs SET status = $2 WHERE id = $1", job_id, status)
    assert await pool.fetchval("SELECT version FROM jobs WHERE id = $1", job_id) == 2


async def test_a_result_for_a_cancelled_job_is_discarded(pool: asyncpg.Pool) -> None:
    job_id = await new_job(pool)
    await pool.execute("UPDATE jobs SET status = 'cancelled' WHERE id = $1", job_id)
    outcomes = await record_all(ResultWriter(pool), [WriteRequest(job_id, "t1", result())])
    assert outcomes == [Recorded.DISCARDED]
    assert await pool.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job_id) == 0


async def test_started_moves_queued_to_running_only(pool: asyncpg.Pool) -> None:
    from services.persist.writer import mark_running
    from shared.messages import JobStarted

    started = JobStarted(model="m", model_version="1", started_at=NOW)
    job_id = await new_job(pool)
    assert await mark_running(pool, job_id, "t1", started)
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "running"
    assert not await mark_running(pool, job_id, "t1", started)  # a redelivery: no change
    await record_all(ResultWriter(pool), [WriteRequest(job_id, "t1", result())])
    late = await new_job(pool)
    await record_all(ResultWriter(pool), [WriteRequest(late, "t1", result())])
    assert not await mark_running(pool, late, "t1", started)  # started after the result
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", late) == "succeeded"
    assert not await mark_running(pool, await new_job(pool, tenant="t2"), "t1", started)


async def test_started_marks_batch_into_one_statement(pool: asyncpg.Pool) -> None:
    """Concurrent marks share one UPDATE; each caller learns its own job's outcome."""
    from shared.messages import JobStarted

    started = JobStarted(model="m", model_version="7", started_at=NOW)
    queued = [await new_job(pool) for _ in range(5)]
    finished = await new_job(pool)
    await record_all(ResultWriter(pool), [WriteRequest(finished, "t1", result())])
    foreign = await new_job(pool, tenant="t2")
    requests = [StartRequest(job_id, "t1", started) for job_id in [*queued, finished, foreign]]
    requests.append(StartRequest(queued[0], "t1", started))  # a redelivery in the same batch
    writer = StartedWriter(pool, max_items=64, max_wait_s=0.2)
    outcomes = await concurrently(writer, [functools.partial(writer.mark, r) for r in requests])
    assert outcomes[:5] == [True] * 5
    assert outcomes[5:7] == [False, False]  # final already; another tenant's
    rows = await pool.fetch(
        "SELECT status, started_at, model_version FROM jobs WHERE id = ANY($1::uuid[])", queued
    )
    assert [(r["status"], r["started_at"], r["model_version"]) for r in rows] == [
        ("running", NOW, "7")
    ] * 5
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", finished) == "succeeded"
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", foreign) == "queued"
