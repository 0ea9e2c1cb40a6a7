"""Chaos: nothing accepted is lost, nothing is done twice, while processes die around it.

200 jobs go through the whole stack (services as real processes, loopback only). During the
run a supervisor SIGKILLs and restarts infer, persist and notify at random moments (at least
20 kills), restarts PostgreSQL once, and persist runs with a share of its DeleteMessage calls
failing. At the end every job that got a 202 has exactly one result and a final state, the
DLQs are empty, and the webhook receiver saw every job's event, under one webhook-id each.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from emulator import Stack
from emulator.dev import service_specs
from emulator.harness import add_topology
from emulator.processes import ServiceSpec, Supervisor
from emulator.seed import push
from shared.apikeys import create_key
from shared.aws import AwsClients
from shared.topology import Topology
from tests.integration.test_pipeline import free_port, sentences
from tests.models import make_tiny_model
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

JOBS = 200
MIN_KILLS = 20
TINY = "tiny"
VICTIMS = ("infer", "persist", "notify")


@dataclass
class ChaosRun:
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    database_restarts: int = 0
    persist_lines: list[str] = field(default_factory=list)
    """Output of every persist process that was killed (restarts replace the process)."""


@pytest.fixture(scope="module")
async def chaos_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    # Short visibility timeouts: a killed worker's messages come back within seconds, and a
    # higher redrive limit, since each kill costs the messages it held one delivery.
    topology = Topology(
        prefix="chaos",
        models=(TINY,),
        max_receive_count=10,
        notify_max_receive_count=20,
        infer_visibility_timeout_s=5,
        visibility_timeout_s=5,
    )
    chaos = await add_topology(stack, topology, seed=False)
    model = make_tiny_model(tmp_path_factory.mktemp("chaos-model"))
    await push(chaos.admin, topology, model, name=TINY, version="1", kind="test-tiny-embedding")
    return chaos


async def test_chaos(chaos_stack: Stack, tmp_path: Path) -> None:
    stack = chaos_stack
    assert stack.restart_database is not None
    rng = random.Random(20261129)
    run = ChaosRun()
    port = free_port()
    quick = {"SQS_WAIT_S": "1", "SHUTDOWN_GRACE_S": "5"}
    extra = {
        "infer": {
            **quick,
            "INFER_HANDLER_MODULES": "tests.models",
            "INFER_MAX_BATCH_WAIT_S": "0.01",
            # A SIGKILLed worker cannot remove a temporary cache: keep it under pytest's.
            "INFER_CACHE_DIR": str(tmp_path / "models"),
        },
        "persist": {**quick, "CHAOS_DELETE_FAILURE_RATE": "0.3"},
        "notify": {**quick, "NOTIFY_RETRY_SCHEDULE_S": "0.5,0.5,1,1,2"},
        "ingest": quick,
    }
    specs = {s.name: s for s in service_specs(stack, http_port=port, extra=extra)}
    conn = await asyncpg.connect(stack.database_url)
    try:
        api_key, _ = await create_key(conn, "chaos", "chaos test")
    finally:
        await conn.close()
    # persist runs under the fault injector: a share of its deletes fail.
    specs["persist"] = ServiceSpec(
        "persist", "tests.chaos.faulty", specs["persist"].env, ("services.persist",)
    )
    began = time.perf_counter()
    async with (
        WebhookReceiver(secret=stack.webhook_secret) as receiver,
        Supervisor() as supervisor,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {api_key}"},
        ) as api,
    ):
        async with anyio.create_task_group() as tg:
            for spec in specs.values():
                tg.start_soon(supervisor.start, spec)

        async def submit_all() -> None:
            texts = sentences(JOBS, seed=7)
            limiter = anyio.CapacityLimiter(8)

            async def one(text: str) -> None:
                async with limiter:
                    for _ in range(20):  # bounded: retry refusals during the database restart
                        try:
                            response = await api.post(
                                "/v1/jobs",
                                json={
                                    "model": TINY,
                                    "inputs": [text],
                                    "callback_url": receiver.url,
                                },
                            )
                        except httpx.TransportError:
                            response = None
                        if response is not None and response.status_code == 202:
                            run.accepted.append(response.json()["id"])
                            return
                        run.refused += 1
                        await anyio.sleep(0.5)

            async with anyio.create_task_group() as submitters:
                for text in texts:
                    submitters.start_soon(one, text)
                    await anyio.sleep(0.2)  # spread over about 40 s, while the chaos runs

        async def chaos() -> None:
            restart_db_at = rng.randrange(8, 14)
            for round_ in range(MIN_KILLS + 4):
                await anyio.sleep(rng.uniform(0.3, 1.0))
                victim = rng.choice(VICTIMS)
                await supervisor.stop(victim, sig=signal.SIGKILL, timeout_s=10)
                run.kills[victim] += 1
                if victim == "persist":
                    run.persist_lines.extend(supervisor.processes["persist"].lines)
                if round_ == restart_db_at:
                    await stack.restart_database(1.0)  # type: ignore[misc]
                    run.database_restarts += 1
                t0 = time.perf_counter()
                await supervisor.start(specs[victim], ready_within_s=60)
                print(
                    f"chaos t={time.perf_counter() - began:.0f}s killed {victim}, back in "
                    f"{time.perf_counter() - t0:.1f}s; accepted so far {len(run.accepted)}",
                    flush=True,
                )

        with anyio.fail_after(150):
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_all)
                tg.start_soon(chaos)

        # The dust settles: every accepted job reaches a final state.
        ids = [uuid.UUID(j) for j in run.accepted]
        async with asyncpg.create_pool(stack.database_url, min_size=1, max_size=2) as pool:
            with anyio.fail_after(90):
                while await pool.fetchval(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) "
                    "AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                    ids,
                ):
                    await anyio.sleep(0.5)
            statuses = Counter(
                r["status"]
                for r in await pool.fetch("SELECT status FROM jobs WHERE id = ANY($1::uuid[])", ids)
            )
            results = await pool.fetch(
                "SELECT job_id, count(*) AS n FROM results WHERE job_id = ANY($1::uuid[]) "
                "GROUP BY job_id",
                ids,
            )
        # Every notification is delivered at least once (retries at 0.5-2 s).
        with anyio.fail_after(60):
            while len({r.json()["data"]["job_id"] for r in receiver.requests}) < len(ids):
                await anyio.sleep(0.5)
        await anyio.sleep(2)  # late duplicates would arrive now
        elapsed = time.perf_counter() - began
        persist_output = "\n".join([*run.persist_lines, *supervisor.processes["persist"].lines])

        async with AwsClients(stack.admin) as clients:
            sqs = await clients.sqs()
            dlq_depths = {}
            for queue in stack.topology.queues:
                attributes = await sqs.get_queue_attributes(
                    QueueUrl=stack.provisioned.queue_urls[queue.dlq_name],
                    AttributeNames=["ApproximateNumberOfMessages"],
                )
                dlq_depths[queue.dlq_name] = int(
                    attributes["Attributes"]["ApproximateNumberOfMessages"]
                )

    receiver.verified_requests()  # every delivery is signed correctly
    ids_per_event: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for request in receiver.requests:
        payload = request.json()
        ids_per_event[(payload["data"]["job_id"], payload["type"])].add(
            request.headers["webhook-id"]
        )
    deliveries = len(receiver.requests)
    duplicates = deliveries - len(ids_per_event)
    print(
        f"\nchaos: accepted={len(ids)} refused_and_retried={run.refused} "
        f"completed={sum(statuses.values())} statuses={dict(statuses)} "
        f"kills={sum(run.kills.values())} {dict(run.kills)} "
        f"database_restarts={run.database_restarts} "
        f"dropped_deletes={persist_output.count('chaos: DeleteMessageBatch dropped')} "
        f"redelivered_results_absorbed={persist_output.count('duplicate result ignored')} "
        f"webhook_deliveries={deliveries} duplicate_deliveries_absorbed={duplicates} "
        f"in {elapsed:.0f}s"
    )
    assert len(ids) == JOBS
    assert sum(run.kills.values()) >= MIN_KILLS
    assert run.database_restarts == 1
    assert statuses == Counter({"succeeded": JOBS})
    assert len(results) == JOBS
    assert all(r["n"] == 1 for r in results)
    assert dlq_depths == dict.fromkeys(dlq_depths, 0)
    assert {job for job, _ in ids_per_event} == {str(i) for i in ids}
    assert all(len(webhook_ids) == 1 for webhook_ids in ids_per_event.values())
