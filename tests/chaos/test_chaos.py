"""Chaos: nothing accepted is lost, nothing is done twice, while processes die around it.

200 jobs go through the whole stack (services as real processes, loopback only, started as
``make dev`` starts them). During the run infer, persist and notify are SIGKILLed at random
moments (at least 20 kills) and the stack's own supervisor must notice and restart them;
PostgreSQL restarts once, and persist runs with a share of its DeleteMessage calls failing.
At the end every job that got a 202 has exactly one result and a final state, the DLQs are
empty, and the webhook receiver saw every job's event, under one webhook-id each.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import anyio
import asyncpg
import httpx
import pytest

from emulator import Stack
from emulator.devstack import DevOptions, DevStack
from emulator.harness import add_topology
from emulator.processes import RestartPolicy, ServiceSpec
from emulator.seed import push
from shared.aws import AwsClients
from shared.topology import Topology
from tests.integration.test_pipeline import sentences
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
    events: list[str] = field(default_factory=list)
    """What the supervisor reported: each kill must show up as an unexpected exit."""


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


def under_fault_injection(spec: ServiceSpec) -> ServiceSpec:
    """persist runs under the fault injector: a share of its deletes fail."""
    if spec.name != "persist":
        return spec
    return dataclasses.replace(spec, module="tests.chaos.faulty", args=("services.persist",))


async def test_chaos(chaos_stack: Stack) -> None:
    stack = chaos_stack
    assert stack.restart_database is not None
    rng = random.Random(20261129)
    run = ChaosRun()
    quick = {"SQS_WAIT_S": "1", "SHUTDOWN_GRACE_S": "5"}
    extra = {
        "infer": {
            **quick,
            "INFER_HANDLER_MODULES": "tests.models",
            "INFER_MAX_BATCH_WAIT_S": "0.01",
        },
        "persist": {**quick, "CHAOS_DELETE_FAILURE_RATE": "0.3"},
        "notify": {**quick, "NOTIFY_RETRY_SCHEDULE_S": "0.5,0.5,1,1,2"},
        "ingest": quick,
    }
    options = DevOptions(
        http_port=0,
        extra=extra,
        transform=under_fault_injection,
        # Kills come every second or so: a crash loop here is the test's doing, not a fault.
        restart=RestartPolicy(max_restarts=100, initial_backoff_s=0.1, max_backoff_s=0.5),
        tenant="chaos",
        on_event=lambda name, message: run.events.append(f"{name}: {message}"),
    )
    began = time.perf_counter()
    async with (
        WebhookReceiver(secret=stack.webhook_secret) as receiver,
        DevStack(stack, options) as dev,
        httpx.AsyncClient(
            base_url=dev.api_url,
            timeout=30,
            headers={"Authorization": f"Bearer {dev.api_key}"},
        ) as api,
    ):
        supervisor = dev.supervisor

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
                killed = supervisor.processes[victim]
                await supervisor.kill(victim)  # a crash: nobody restarts it but the supervisor
                run.kills[victim] += 1
                if round_ == restart_db_at:
                    await stack.restart_database(1.0)  # type: ignore[misc]
                    run.database_restarts += 1
                t0 = time.perf_counter()
                await supervisor.wait_restarted(victim, killed, within_s=60)
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
        # One log per name across restarts: every persist process's lines.
        persist_output = "\n".join(supervisor.processes["persist"].lines)
        # Each duplicate is a debug line; persist's activity lines count them.
        absorbed = sum(map(int, re.findall(r"\bresults_duplicate=(\d+)", persist_output)))

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
        f"redelivered_results_absorbed={absorbed} "
        f"webhook_deliveries={deliveries} duplicate_deliveries_absorbed={duplicates} "
        f"in {elapsed:.0f}s"
    )
    assert len(ids) == JOBS
    assert sum(run.kills.values()) >= MIN_KILLS
    unexpected = Counter(e.split(":")[0] for e in run.events if "exited unexpectedly" in e)
    # Each kill reported, by name; a process restarted while PostgreSQL is down may exit once
    # more (it cannot open its pool) and be restarted again: that is supervision working.
    assert all(unexpected[name] >= kills for name, kills in run.kills.items()), run.events
    for name in {e.split(":")[0] for e in run.events if "(exit code" in e}:
        # Not one of our kills: show why it ended (the supervisor restarted it).
        why = [line for line in dev.supervisor.processes[name].lines if "failed" in line]
        print(f"{name} exited by itself; its failure lines:", *why[-5:], sep="\n  ")
    assert not any("giving up" in e for e in run.events)
    assert run.database_restarts == 1
    assert statuses == Counter({"succeeded": JOBS})
    assert len(results) == JOBS
    assert all(r["n"] == 1 for r in results)
    assert dlq_depths == dict.fromkeys(dlq_depths, 0)
    assert {job for job, _ in ids_per_event} == {str(i) for i in ids}
    assert all(len(webhook_ids) == 1 for webhook_ids in ids_per_event.values())
