"""The client library against the real ingest API: the app on uvicorn on 127.0.0.1, a real
PostgreSQL, real API keys. No SQS: a small worker here plays infer and persist at the
database, finishing each job from its outbox message (in a shuffled order, so that a map's
ordering is the client's doing) with a vector derived from each text: ``[len(text),
crc32(text) % 1000]``; a text holding ``__FAIL__`` fails its job.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import httpx
import numpy as np
import pytest
import uvicorn

from conveyor import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    JobFailed,
    JobStatus,
    ModelNotDeployed,
    NotFound,
    RetryPolicy,
    WaitTimeout,
)
from emulator import Stack
from services.ingest.api import create_app
from shared.apikeys import create_key
from shared.config import IngestSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

MODEL = "client-tiny"
FAIL = "__FAIL__"


def vector(text: str) -> list[float]:
    return [float(len(text)), float(zlib.crc32(text.encode()) % 1000)]


@dataclass
class Worker:
    """Finishes the tenant's jobs from their outbox rows, ``per_tick`` at a time."""

    pool: asyncpg.Pool
    tenant: str
    paused: bool = False
    per_tick: int = 1000
    tick_s: float = 0.05
    finished: int = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        while True:  # cancelled with the served API
            if not self.paused:
                await self.tick()
            await anyio.sleep(self.tick_s)

    async def tick(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE outbox SET sent_at = now() WHERE id IN (
                    SELECT o.id FROM outbox o JOIN jobs j ON j.id = o.job_id
                    WHERE j.tenant_id = $1 AND o.sent_at IS NULL AND j.status = 'queued'
                    ORDER BY o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED
                ) RETURNING job_id, body
                """,
                self.tenant,
                self.per_tick,
            )
            rows = list(rows)
            random.shuffle(rows)
            for row in rows:
                inputs = json.loads(row["body"])["payload"]["inputs"]
                await self.finish(conn, row["job_id"], inputs)
        self.finished += len(rows)

    async def finish(self, conn: asyncpg.Connection, job_id: uuid.UUID, inputs: list[str]) -> None:
        # clock_timestamp(), not now(): now() is when the tick's transaction began, which can be
        # before a job its UPDATE then saw was created (CI once read finished < created).
        if any(FAIL in text for text in inputs):
            await conn.execute(
                "UPDATE jobs SET status = 'failed', error = $2, finished_at = clock_timestamp(), "
                "updated_at = now() WHERE id = $1",
                job_id,
                f"the model refused {FAIL}",
            )
        else:
            await conn.execute(
                "UPDATE jobs SET status = 'succeeded', model_version = '1', "
                "started_at = clock_timestamp(), finished_at = clock_timestamp(), "
                "updated_at = now() WHERE id = $1",
                job_id,
            )
            await conn.execute(
                "INSERT INTO results (job_id, outputs, model_version, batch_size) "
                "VALUES ($1, $2::jsonb, '1', 1)",
                job_id,
                json.dumps([vector(text) for text in inputs]),
            )
        await conn.execute("SELECT pg_notify('job_finished', $1::text)", str(job_id))


@dataclass
class Served:
    url: str
    key: str
    tenant: str
    pool: asyncpg.Pool
    worker: Worker
    totals: Callable[[], dict[str, int]]
    sent: list[httpx.Request] = field(default_factory=list)

    def client(self, **options: Any) -> Client:
        return Client(self.url, self.key, **options)

    def async_client(self, **options: Any) -> AsyncClient:
        return AsyncClient(self.url, self.key, **options)

    async def jobs(self) -> int:
        async with self.pool.acquire() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE tenant_id = $1", self.tenant
            )
        return count


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # pytest owns the process's signals


@contextlib.asynccontextmanager
async def serve(
    stack: Stack,
    *,
    deployed: bool = True,
    depth: Callable[[str], Awaitable[int]] | None = None,
    **overrides: Any,
) -> AsyncIterator[Served]:
    """The ingest app, its lifespan entered, served over HTTP on 127.0.0.1, with a worker."""
    settings = IngestSettings(
        database_url=stack.database_url,
        conveyor_models=(MODEL,),
        conveyor_prefix="clientapi",
        backlog_cache_s=0,
        **overrides,
    )
    tenant = f"client-{uuid.uuid4().hex[:12]}"

    async def queues_ok() -> None:
        return None

    async def is_deployed(_model: str) -> bool:
        return deployed

    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=8)
    sock = free_socket()
    try:
        async with pool.acquire() as conn:
            key, _ = await create_key(conn, tenant, "test_client_api")
        app = create_app(
            settings,
            pool=pool,
            check_queues=queues_ok,
            model_deployed=is_deployed,
            queue_depth=depth,
        )
        server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,
                access_log=False,
                ws="none",
                timeout_graceful_shutdown=2,
            )
        )
        worker = Worker(pool, tenant)
        stopped = anyio.Event()

        async def run_server() -> None:
            try:
                await server.serve([sock])
            finally:
                stopped.set()

        async with app.router.lifespan_context(app), anyio.create_task_group() as tg:
            tg.start_soon(run_server)
            with anyio.fail_after(10):
                while not server.started:  # bounded by the deadline
                    await anyio.sleep(0.01)
            await tg.start(worker.run)
            port = sock.getsockname()[1]
            try:
                yield Served(
                    f"http://127.0.0.1:{port}",
                    key,
                    tenant,
                    pool,
                    worker,
                    app.state.activity.totals,
                )
            finally:
                server.should_exit = True
                with anyio.move_on_after(10, shield=True):
                    await stopped.wait()
                tg.cancel_scope.cancel()
    finally:
        sock.close()
        with anyio.fail_after(10):
            await pool.close()


@pytest.fixture
async def api(stack: Stack, clean_env: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    async with serve(stack) as served:
        yield served


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await anyio.to_thread.run_sync(fn)


# -- one job ------------------------------------------------------------------------------------


async def test_submit_then_wait_gives_the_outputs_as_float32_arrays(api: Served) -> None:
    def work() -> tuple[Any, Any, Any]:
        with api.client() as client:
            submitted = client.submit(MODEL, ["hello world", "two"])
            job = client.wait(submitted.id, timeout=30)
            again = client.get(submitted.id)
        return submitted, job, again

    submitted, job, again = await in_thread(work)
    assert submitted.status is JobStatus.QUEUED and not submitted.replayed
    assert submitted.status_url == f"{api.url}/v1/jobs/{submitted.id}"
    assert job.id == submitted.id and job.status is JobStatus.SUCCEEDED
    assert job.model == MODEL and job.model_version == "1" and job.inputs_count == 2
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert [v.dtype for v in job.outputs] == [np.float32] * 2
    assert [v.tolist() for v in job.outputs] == [vector("hello world"), vector("two")]
    assert again.status is JobStatus.SUCCEEDED
    assert await api.jobs() == 1


async def test_a_retried_submission_is_the_same_job(api: Served) -> None:
    async with api.async_client() as client:
        first = await client.submit(MODEL, ["same"], idempotency_key="order-17")
        second = await client.submit(MODEL, ["same"], idempotency_key="order-17")
        assert (first.replayed, second.replayed) == (False, True)
        assert second.id == first.id
        with pytest.raises(ApiError) as raised:
            await client.submit(MODEL, ["different"], idempotency_key="order-17")
    assert raised.value.status == 422
    assert "Idempotency-Key" in raised.value.message
    assert await api.jobs() == 1


async def test_get_holds_on_the_server_and_wait_times_out(api: Served) -> None:
    api.worker.paused = True
    async with api.async_client(wait_chunk_s=0.6) as client:
        submitted = await client.submit(MODEL, ["later"])
        began = time.monotonic()
        job = await client.get(submitted.id, wait=1.0)  # two server-side waits
        held = time.monotonic() - began
        assert job.status is JobStatus.QUEUED
        assert 0.9 <= held < 5
        with pytest.raises(WaitTimeout) as raised:
            await client.wait(submitted.id, timeout=0.5)
        assert raised.value.job.status is JobStatus.QUEUED
        api.worker.paused = False
        job = await client.wait(submitted.id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED


async def test_cancel_then_cancel_again(api: Served) -> None:
    api.worker.paused = True
    async with api.async_client() as client:
        submitted = await client.submit(MODEL, ["never mind"])
        cancelled = await client.cancel(submitted.id)
        assert cancelled.status is JobStatus.CANCELLED
        with pytest.raises(ApiError) as again:
            await client.cancel(submitted.id)
        assert again.value.status == 409
        with pytest.raises(JobFailed) as failed:
            await client.wait(submitted.id, timeout=5)
    assert failed.value.job.status is JobStatus.CANCELLED


async def test_the_apis_refusals_are_typed(api: Served, stack: Stack) -> None:
    async with api.async_client() as client:
        with pytest.raises(NotFound):
            await client.get(uuid.uuid4())
        with pytest.raises(ApiError) as invalid:
            await client.submit(MODEL, ["fine", "   "])
        assert invalid.value.status == 422
        assert "inputs[1]" in invalid.value.message
    async with AsyncClient(api.url, "cvk_not_a_key") as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.get(uuid.uuid4())
    async with serve(stack, deployed=False) as undeployed, undeployed.async_client() as client:
        with pytest.raises(ModelNotDeployed) as raised:
            await client.submit(MODEL, ["text"])
        assert "conveyor models push" in raised.value.message
        assert await undeployed.jobs() == 0


async def test_a_failed_job_raises_job_failed_from_wait(api: Served) -> None:
    async with api.async_client() as client:
        submitted = await client.submit(MODEL, [f"x {FAIL}"])
        with pytest.raises(JobFailed) as raised:
            await client.wait(submitted.id, timeout=30)
    assert raised.value.job.status is JobStatus.FAILED
    assert FAIL in (raised.value.job.error or "")


# -- many jobs ----------------------------------------------------------------------------------


def texts(n: int) -> list[str]:
    return [f"text {i} " + "word " * (i % 7) for i in range(n)]


async def test_async_map_keeps_the_order_of_50_texts(api: Served) -> None:
    inputs = texts(50)
    async with api.async_client() as client:
        outputs = [v async for v in client.map(MODEL, inputs, concurrency=8, timeout=60)]
    assert [v.tolist() for v in outputs] == [vector(t) for t in inputs]
    assert await api.jobs() == 50


async def test_sync_map_packs_texts_into_jobs(api: Served) -> None:
    inputs = texts(50)

    def work() -> list[Any]:
        with api.client(use_numpy=False) as client:
            return list(client.map(MODEL, inputs, concurrency=4, texts_per_job=4, timeout=60))

    outputs = await in_thread(work)
    assert outputs == [vector(t) for t in inputs]
    assert await api.jobs() == 13  # 12 jobs of 4 texts and one of 2


async def test_map_raises_for_a_failed_job_after_the_outputs_before_it(api: Served) -> None:
    inputs = texts(10)
    inputs[6] = f"bad {FAIL}"
    seen: list[Any] = []
    async with api.async_client(use_numpy=False) as client:
        vectors = client.map(MODEL, inputs, concurrency=4, timeout=60)
        with pytest.raises(JobFailed) as raised:  # noqa: PT012 (the outputs before it count)
            async for output in vectors:
                seen.append(output)
        await vectors.aclose()
    assert seen == [vector(t) for t in inputs[:6]]
    assert FAIL in (raised.value.job.error or "")


async def test_map_waits_out_the_apis_429s_and_records_each_job_once(stack: Stack) -> None:
    """The model's queue reports a backlog over the limit for the first 2 s: the API answers
    429 with Retry-After: 5, the map waits that long (all of its submissions, not just the
    refused one) instead of asking again at once, then every text gets its output, once."""
    over_until = time.monotonic() + 2

    async def depth(_model: str) -> int:
        return 100 if time.monotonic() < over_until else 0

    async with serve(stack, max_backlog=10, depth=depth) as api:
        inputs = texts(14)
        began = time.monotonic()
        async with api.async_client(retry=RetryPolicy(busy_wait_s=60)) as client:
            outputs = [v.tolist() async for v in client.map(MODEL, inputs, concurrency=8)]
        took = time.monotonic() - began
        assert outputs == [vector(t) for t in inputs]
        assert await api.jobs() == 14
        refused = api.totals().get("refused_backlog", 0)
    assert took >= 4.9  # the API's Retry-After, honoured
    assert 1 <= refused <= 8  # one per job in flight at most: no hammering while refused
    print(f"\n14 texts past a full backlog: {refused} answers were 429, done in {took:.1f} s")
