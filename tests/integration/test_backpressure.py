"""Backpressure: POST /v1/jobs answers 429 while a model's backlog is over INGEST_MAX_BACKLOG.

The backlog is read from a real queue on the emulator (ingest's own IAM key, as the service
does) plus the model's unsent outbox rows; no relay runs here, so the test controls both.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from emulator import Stack
from emulator.harness import add_topology
from services.ingest import backpressure
from services.ingest.api import create_app
from services.ingest.backpressure import Backpressure
from shared.apikeys import create_key
from shared.aws import AwsClients, aws_errors, resolve_queue_url
from shared.config import IngestSettings
from shared.topology import DEFAULT_MODEL, Topology
from tests.timeouts import only_the_first_waits

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MODEL = DEFAULT_MODEL
LIMIT = 3


@pytest.fixture(scope="module")
async def bpstack(stack: Stack) -> Stack:
    return await add_topology(stack, Topology(prefix="backlog"), seed=False)


@asynccontextmanager
async def api(bpstack: Stack, *, cache_s: float) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app with a backlog limit of :data:`LIMIT`, reading the queue with ingest's key;
    yields its client, and an admin SQS client with the model queue's URL and the pool."""
    aws = bpstack.aws_settings("ingest")
    settings = IngestSettings(
        database_url=bpstack.database_url,
        conveyor_prefix=bpstack.topology.prefix,
        conveyor_models=(MODEL,),
        max_backlog=LIMIT,
        backlog_cache_s=cache_s,
    )
    async with AwsClients(aws) as clients, AwsClients(bpstack.admin) as admin_clients:
        sqs = await clients.sqs()
        admin = await admin_clients.sqs()
        url = await resolve_queue_url(sqs, aws, bpstack.topology.infer_queue(MODEL).name)

        async def depth(model: str) -> int:
            with aws_errors(aws, resource=url):
                response = await sqs.get_queue_attributes(
                    QueueUrl=url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                    ],
                )
            attributes = response.get("Attributes", {})
            return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
                attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
            )

        async def queues_ok() -> None:
            return None

        pool = await asyncpg.create_pool(bpstack.database_url, min_size=1, max_size=4)
        try:
            async with pool.acquire() as conn:
                key, _ = await create_key(conn, f"bp-{uuid.uuid4().hex[:8]}", "test_backpressure")
                # No relay here: whatever earlier tests left unsent for this queue goes away.
                await conn.execute(
                    "UPDATE outbox SET sent_at = now() WHERE queue = $1 AND sent_at IS NULL",
                    bpstack.topology.infer_queue(MODEL).name,
                )
            await drain(admin, url)
            app = create_app(settings, pool=pool, check_queues=queues_ok, queue_depth=depth)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://testserver",
                    headers={"Authorization": f"Bearer {key}"},
                ) as client,
            ):
                yield client, (admin, url, pool)
        finally:
            with anyio.fail_after(10):
                await pool.close()


async def drain(sqs: Any, url: str) -> int:
    """Receive and delete until the queue answers empty; how many were deleted."""
    deleted = 0
    with anyio.fail_after(20):
        for _ in range(100):
            response = await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                deleted += 1
    return deleted


async def post(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/v1/jobs", json={"model": MODEL, "inputs": ["x"]})


async def test_a_full_queue_is_429_until_it_drains(
    bpstack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    async with api(bpstack, cache_s=0.2) as (client, (sqs, url, _pool)):
        for i in range(LIMIT + 1):
            await sqs.send_message(QueueUrl=url, MessageBody=f"filler {i}")
        await anyio.sleep(0.25)  # past the cached figure of an earlier read, if any

        refused = await post(client)

        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/json"
        assert int(refused.headers["retry-after"]) > 0
        error = refused.json()["error"]
        assert MODEL in error
        assert str(LIMIT) in error

        assert await drain(sqs, url) == LIMIT + 1
        await anyio.sleep(0.25)  # the cached figure expires

        accepted = await post(client)
        assert accepted.status_code == 202, accepted.text


async def test_unsent_outbox_rows_count_towards_the_backlog(
    bpstack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    async with api(bpstack, cache_s=0) as (client, (_sqs, _url, pool)):
        # Each accepted job waits in the outbox (no relay): the backlog grows by one each time.
        statuses = [(await post(client)).status_code for _ in range(LIMIT + 2)]
        assert statuses == [202] * (LIMIT + 1) + [429]

        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE queue = $1 AND sent_at IS NULL",
                bpstack.topology.infer_queue(MODEL).name,
            )
        assert (await post(client)).status_code == 202


async def test_a_cached_backlog_is_reused(bpstack: Stack, clean_env: pytest.MonkeyPatch) -> None:
    """Within the cache period the queue is not asked again: the limit lags by that much."""
    async with api(bpstack, cache_s=30) as (client, (sqs, url, _pool)):
        assert (await post(client)).status_code == 202  # reads the backlog: 0
        for i in range(LIMIT + 1):
            await sqs.send_message(QueueUrl=url, MessageBody=f"filler {i}")
        assert (await post(client)).status_code == 202  # still the cached 0


async def test_a_queue_that_does_not_answer_is_not_asked_again_at_once(
    bpstack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage where reads time out: one request waits out the timeout, and the following
    ones use the last known depth instead of each waiting again (they used to: every
    submission of such an outage took the timeout)."""
    monkeypatch.setattr(backpressure, "DEPTH_TIMEOUT_S", 0.2)
    monkeypatch.setattr(backpressure, "RETRY_AFTER_FAILURE_S", 1.0)
    asked: list[str] = []
    answering = True

    async def depth(model: str) -> int:
        asked.append(model)
        if not answering:
            await anyio.sleep(10)  # no answer: the timeout decides
        return 3

    pool = await asyncpg.create_pool(bpstack.database_url, min_size=1, max_size=2)
    try:
        figures = Backpressure(pool, bpstack.topology, depth, limit=LIMIT, cache_s=0.01)
        assert await figures.backlog(MODEL) >= 3
        answering = False
        await anyio.sleep(0.05)  # the figure expired
        backlogs = await only_the_first_waits(lambda: figures.backlog(MODEL), 0.2)
        assert all(backlog >= 3 for backlog in backlogs)  # the last known depth
        assert len(asked) == 2
        await anyio.sleep(1.0)  # past RETRY_AFTER_FAILURE_S: asked again
        answering = True
        assert await figures.backlog(MODEL) >= 3
        assert len(asked) == 3
    finally:
        await pool.close()
