"""The transactional outbox: jobs reach their queue through the relay, and survive SQS outages.

The API runs in-process against the real PostgreSQL; the relay sends with ingest's own IAM key
to the emulator, through the same ``Publisher`` and ``sqs_send`` as the service. The outage is
real: the relay's endpoint is a closed port on 127.0.0.1, so every send fails to connect.
"""

from __future__ import annotations

import socket
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from emulator import Stack
from emulator.harness import add_topology
from services.ingest.api import create_app
from services.ingest.relay import Relay, RelayPolicy, sqs_send
from shared.apikeys import create_key
from shared.aws import AwsClients, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import AwsSettings, IngestSettings
from shared.messages import Envelope, decode_envelope
from shared.sqs import Publisher
from shared.topology import DEFAULT_MODEL, Topology

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

MODEL = DEFAULT_MODEL
FAST = RelayPolicy(poll_s=0.05, backoff_s=(0.05, 0.5), send_timeout_s=20)


@pytest.fixture(scope="module")
async def ostack(stack: Stack) -> Stack:
    return await add_topology(stack, Topology(prefix="outbox"), seed=False)


@dataclass
class Harness:
    stack: Stack
    app: FastAPI
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    queue_name: str
    queue_url: str
    relays: list[Relay]

    async def submit(self, text: str) -> uuid.UUID:
        response = await self.client.post("/v1/jobs", json={"model": MODEL, "inputs": [text]})
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["id"])

    async def unsent(self, job_ids: list[uuid.UUID]) -> int:
        async with self.pool.acquire() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE job_id = ANY($1::uuid[]) AND sent_at IS NULL",
                job_ids,
            )
        return count

    async def outbox_rows(self, job_ids: list[uuid.UUID]) -> int:
        async with self.pool.acquire() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE job_id = ANY($1::uuid[])", job_ids
            )
        return count

    async def drain(self, expected: int, timeout: float = 30) -> Counter[uuid.UUID]:
        """Receive (and delete) until ``expected`` messages came, then one more empty poll."""
        seen: Counter[uuid.UUID] = Counter()
        async with AwsClients(self.stack.aws_settings("infer")) as clients:
            sqs = await clients.sqs()
            with anyio.fail_after(timeout):
                while True:
                    total = sum(seen.values())
                    response = await sqs.receive_message(
                        QueueUrl=self.queue_url,
                        MaxNumberOfMessages=10,
                        WaitTimeSeconds=1 if total < expected else 2,
                    )
                    messages = response.get("Messages", [])
                    if not messages and total >= expected:
                        return seen
                    for message in messages:
                        seen[decode_envelope(message["Body"]).job_id] += 1
                        await sqs.delete_message(
                            QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                        )


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def relaying(harness: Harness, aws: AwsSettings, queue_url: str) -> AsyncIterator[Relay]:
    """A relay like the service's, sending with ``aws`` to ``queue_url``, until exit."""
    async with AwsClients(aws) as clients:
        sqs = await clients.sqs()
        topology = harness.stack.topology
        claims = ClaimCheck(clients, topology.payloads_bucket.name, 256 * 1024)
        publishers = {harness.queue_name: Publisher(sqs, aws, queue_url)}
        relay = Relay(
            harness.pool, list(publishers), sqs_send(publishers, claims, 256 * 1024), FAST
        )
        async with anyio.create_task_group() as tg:
            for publisher in publishers.values():
                publisher.start(tg)
            await tg.start(relay.run)
            harness.relays.append(relay)
            try:
                yield relay
            finally:
                harness.relays.remove(relay)
                tg.cancel_scope.cancel()


@asynccontextmanager
async def api(ostack: Stack) -> AsyncIterator[Harness]:
    settings = IngestSettings(
        database_url=ostack.database_url,
        conveyor_prefix=ostack.topology.prefix,
        conveyor_models=(MODEL,),
    )
    queue_name = ostack.topology.infer_queue(MODEL).name
    async with AwsClients(ostack.aws_settings("ingest")) as clients:
        queue_url = await resolve_queue_url(
            await clients.sqs(), ostack.aws_settings("ingest"), queue_name
        )
    relays: list[Relay] = []

    async def wake(_envelope: Envelope) -> None:
        for relay in relays:
            relay.wake()

    async def queues_ok() -> None:
        return None

    tenant = f"outbox-{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(ostack.database_url, min_size=1, max_size=6)
    try:
        async with pool.acquire() as conn:
            key, _ = await create_key(conn, tenant, "test_outbox")
        app = create_app(settings, pool=pool, enqueue=wake, check_queues=queues_ok)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {key}"},
            ) as client,
        ):
            yield Harness(ostack, app, client, pool, queue_name, queue_url, relays)
    finally:
        with anyio.fail_after(10):
            await pool.close()


async def test_accepted_jobs_reach_their_queue_exactly_once(
    ostack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    async with api(ostack) as harness:
        async with relaying(harness, ostack.aws_settings("ingest"), harness.queue_url) as relay:
            job_ids = [await harness.submit(f"text {i}") for i in range(12)]
            seen = await harness.drain(len(job_ids))
            # The relay marks a row sent in the transaction that sent it, just after.
            with anyio.fail_after(5):
                while await harness.unsent(job_ids):
                    await anyio.sleep(0.05)
        assert await harness.outbox_rows(job_ids) == len(job_ids)

    assert {job_id: seen[job_id] for job_id in job_ids} == dict.fromkeys(job_ids, 1)
    assert relay.sent >= len(job_ids)
    assert relay.failed == 0


async def test_jobs_wait_out_an_sqs_outage_in_the_outbox(
    ostack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    creds = ostack.aws_settings("ingest")
    port = closed_port()
    down = AwsSettings(
        endpoint_url=f"http://127.0.0.1:{port}",
        region=creds.region,
        access_key_id=creds.access_key_id,
        secret_access_key=creds.secret_access_key,
    )
    async with api(ostack) as harness:
        dead_url = urllib.parse.urlsplit(harness.queue_url)._replace(netloc=f"127.0.0.1:{port}")
        async with relaying(harness, down, dead_url.geturl()) as broken:
            with anyio.fail_after(20):
                job_ids = [await harness.submit(f"outage {i}") for i in range(20)]
                while broken.failed == 0:  # the relay tried, and failed
                    await anyio.sleep(0.05)
            assert await harness.unsent(job_ids) == 20
            assert broken.sent == 0
        async with harness.pool.acquire() as conn:
            errors = await conn.fetch(
                "SELECT attempts, last_error FROM outbox WHERE job_id = ANY($1::uuid[])", job_ids
            )
        assert any(row["attempts"] > 0 and "AwsUnavailable" in row["last_error"] for row in errors)

        async with relaying(harness, creds, harness.queue_url) as relay:
            seen = await harness.drain(20)
            with anyio.fail_after(5):
                while await harness.unsent(job_ids):
                    await anyio.sleep(0.05)

    assert {job_id: seen[job_id] for job_id in job_ids} == dict.fromkeys(job_ids, 1)
    assert relay.sent >= 20


async def test_sent_rows_are_pruned_after_the_retention(
    ostack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    async with api(ostack) as harness:
        job_id = await harness.submit("to prune")

        async def never(_queue: str, _body: str) -> object:
            raise AssertionError("nothing is sent here")

        keep = Relay(harness.pool, [harness.queue_name], never, RelayPolicy(retention_s=3600))
        prune = Relay(harness.pool, [harness.queue_name], never, RelayPolicy(retention_s=0))
        async with harness.pool.acquire() as conn:
            await conn.execute("UPDATE outbox SET sent_at = now() WHERE job_id = $1", job_id)
        await keep.maintain()
        assert await harness.outbox_rows([job_id]) == 1
        await anyio.sleep(0.01)
        await prune.maintain()
        assert await harness.outbox_rows([job_id]) == 0


async def test_one_maintenance_run_prunes_more_than_one_batch(
    ostack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    """A busy stack sends more than a batch (1,000 rows) a minute: pruning must keep up."""
    from services.ingest.outbox import PRUNE_BATCH

    marker = f"prune-{uuid.uuid4().hex[:8]}"
    async with api(ostack) as harness:
        async with harness.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO outbox (job_id, queue, model, body, sent_at) "
                "SELECT gen_random_uuid(), $1, 'm', '{}', now() - interval '2 hours' "
                "FROM generate_series(1, $2)",
                marker,
                PRUNE_BATCH * 2 + 500,
            )

        async def never(_queue: str, _body: str) -> object:
            raise AssertionError("nothing is sent here")

        await Relay(harness.pool, [marker], never, RelayPolicy(retention_s=3600)).maintain()
        async with harness.pool.acquire() as conn:
            left = await conn.fetchval("SELECT count(*) FROM outbox WHERE queue = $1", marker)
        assert left == 0
