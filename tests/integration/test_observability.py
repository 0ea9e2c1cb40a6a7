"""Metrics, traces and logs of the whole stack, as four real processes on the emulator.

One stack (the tiny model) serves the three claims:

- metrics: each service's ``/metrics`` is scraped before and after jobs flow, and the figures
  move by what was done (exactly, where a count is exact);
- traces: one job is one connected trace with spans from all four services, its context
  carried from process to process only by the envelopes' ``traceparent`` (each process writes
  its spans to its own file through the test-only ``CONVEYOR_TEST_SPAN_DIR``);
- logs: with ``LOG_FORMAT=json``, every line about a job carries ``job_id``, ``trace_id``,
  ``service`` and ``model``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from emulator import Stack
from emulator.devstack import DevOptions, DevStack
from emulator.harness import add_topology
from emulator.seed import push
from services.ingest.api import create_app
from shared.apikeys import create_key
from shared.aws import AwsClients
from shared.config import IngestSettings
from shared.db import open_pool
from shared.spanfile import read_spans
from shared.topology import Topology
from shared.tracing import SPAN_DIR_ENV
from tests.conftest import free_port
from tests.models import TINY_KIND, make_tiny_model
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

TINY = "tiny"
SERVICES = ("ingest", "infer", "persist", "notify")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Observed:
    dev: DevStack
    api: httpx.AsyncClient
    ports: dict[str, int]
    span_dir: Path

    async def scrape(self, service: str) -> Samples:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{self.ports[service]}/metrics")
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    async def scrape_all(self) -> dict[str, Samples]:
        return {service: await self.scrape(service) for service in SERVICES}

    async def submit(self, texts: list[str], callback_url: str) -> str:
        response = await self.api.post(
            "/v1/jobs", json={"model": TINY, "inputs": texts, "callback_url": callback_url}
        )
        assert response.status_code == 202, (response.text, self.dev.tail("ingest"))
        return str(response.json()["id"])

    async def wait_final(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                response = await self.api.get(f"/v1/jobs/{job_id}", params={"wait": 10})
                job: dict[str, Any] = response.json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job

    def log_lines(self, service: str) -> list[str]:
        return list(self.dev.supervisor.processes[service].lines)


async def eventually(check: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    """Run ``check`` until it passes; after ``timeout`` s, its last failure is the test's."""
    with anyio.move_on_after(timeout):
        while True:
            try:
                await check()
            except AssertionError:
                await anyio.sleep(0.25)
            else:
                return
    await check()


@pytest.fixture(scope="module")
async def observed(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Observed]:
    ostack = await add_topology(stack, Topology(prefix="obs", models=(TINY,)), seed=False)
    await push(
        ostack.admin,
        ostack.topology,
        make_tiny_model(tmp_path_factory.mktemp("tiny")),
        name=TINY,
        version="1",
        kind=TINY_KIND,
    )
    ports = {service: free_port() for service in SERVICES}
    span_dir = tmp_path_factory.mktemp("spans")
    common = {
        "SQS_WAIT_S": "1",
        "SHUTDOWN_GRACE_S": "5",
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "json",
        SPAN_DIR_ENV: str(span_dir),
    }
    extra = {
        service: {**common, f"{service.upper()}_METRICS_PORT": str(port)}
        for service, port in ports.items()
    }
    extra["infer"]["INFER_HANDLER_MODULES"] = "tests.models"
    # Every job announced as running: its job.started message and span, whatever its speed.
    extra["infer"]["INFER_STARTED_AFTER_S"] = "0"
    extra["notify"]["NOTIFY_RETRY_SCHEDULE_S"] = "0.2,0.2,0.2"
    async with (
        DevStack(ostack, DevOptions(http_port=0, extra=extra, tenant="obs")) as dev,
        httpx.AsyncClient(
            base_url=dev.api_url, timeout=60, headers={"Authorization": f"Bearer {dev.api_key}"}
        ) as api,
    ):
        assert set(dev.specs) == set(SERVICES)
        yield Observed(dev, api, ports, span_dir)


async def test_the_figures_move_as_jobs_flow(observed: Observed) -> None:
    jobs = 6
    before = await observed.scrape_all()
    # Two refusals, counted by reason and never as jobs.
    assert (
        await observed.api.post("/v1/jobs", json={"model": TINY, "inputs": []})
    ).status_code == 422
    async with httpx.AsyncClient(base_url=observed.dev.api_url) as anonymous:
        refused = await anonymous.post("/v1/jobs", json={"model": TINY, "inputs": ["x"]})
        assert refused.status_code == 401
    # The first webhook fails once and is retried: one "retry" attempt, then all succeed.
    async with WebhookReceiver(secret=observed.dev.stack.webhook_secret, replies=[500]) as rx:
        ids = [await observed.submit([f"text number {i}"], rx.url) for i in range(jobs)]
        for job_id in ids:
            assert (await observed.wait_final(job_id))["status"] == "succeeded"
        await rx.wait_for_requests(jobs + 1, timeout=60)

        async def moved() -> None:
            after = await observed.scrape_all()

            def delta(service: str, name: str, **labels: str) -> float:
                return value(after[service], name, **labels) - value(
                    before[service], name, **labels
                )

            # ingest: accepted and refused, per hop, relayed, SQS sends
            assert delta("ingest", "conveyor_jobs_accepted_total", model=TINY) == jobs
            assert delta("ingest", "conveyor_jobs_refused_total", reason="invalid") == 1
            assert delta("ingest", "conveyor_jobs_refused_total", reason="unauthorized") == 1
            ingest_hop = "conveyor_hop_duration_seconds_count"
            assert delta("ingest", ingest_hop, hop="ingest", outcome="accepted") == jobs
            assert delta("ingest", ingest_hop, hop="ingest", outcome="refused") == 2
            assert delta("ingest", ingest_hop, hop="relay", outcome="sent") == jobs
            assert delta("ingest", "conveyor_outbox_relayed_total", outcome="sent") == jobs
            sends = "conveyor_aws_request_duration_seconds_count"
            assert delta("ingest", sends, api="sqs", operation="SendMessageBatch") >= 1
            # infer: jobs, batches, tokens, time in queue, per hop, the model served
            assert (
                delta("infer", "conveyor_infer_jobs_total", model=TINY, outcome="succeeded") == jobs
            )
            assert delta("infer", "conveyor_infer_batch_items_sum", model=TINY) == jobs
            calls = delta("infer", "conveyor_infer_model_calls_total", model=TINY)
            assert 1 <= calls <= jobs
            assert delta("infer", "conveyor_infer_batch_items_count", model=TINY) == calls
            assert delta("infer", "conveyor_infer_batch_jobs_sum", model=TINY) == jobs
            assert delta("infer", "conveyor_infer_batch_tokens_sum", model=TINY) == 3 * jobs
            assert (
                delta("infer", "conveyor_infer_model_call_duration_seconds_count", model=TINY)
                == calls
            )
            assert delta("infer", "conveyor_queue_wait_seconds_count", hop="infer") == jobs
            assert delta("infer", ingest_hop, hop="infer", outcome="succeeded") == jobs
            receives = delta("infer", sends, api="sqs", operation="ReceiveMessage")
            assert receives >= 1
            assert delta("infer", sends, api="sqs", operation="DeleteMessageBatch") >= 1
            # persist: end to end per model, results, both messages of each job
            e2e = "conveyor_job_end_to_end_duration_seconds_count"
            assert delta("persist", e2e, model=TINY, outcome="succeeded") == jobs
            assert delta("persist", "conveyor_persist_results_total", outcome="new") == jobs
            assert delta("persist", "conveyor_queue_wait_seconds_count", hop="persist") == 2 * jobs
            assert delta("persist", ingest_hop, hop="persist", outcome="succeeded") == 2 * jobs
            # notify: attempts by outcome; the retried message waited in the queue once
            attempts = "conveyor_webhook_attempts_total"
            assert delta("notify", attempts, outcome="succeeded") == jobs
            assert delta("notify", attempts, outcome="retry") == 1
            assert (
                delta(
                    "notify", "conveyor_webhook_request_duration_seconds_count", outcome="succeeded"
                )
                == jobs
            )
            assert delta("notify", "conveyor_queue_wait_seconds_count", hop="notify") == jobs
            assert delta("notify", ingest_hop, hop="notify", outcome="succeeded") == jobs
            assert delta("notify", ingest_hop, hop="notify", outcome="retried") == 1

        await eventually(moved)

    after = await observed.scrape_all()
    info = {"model": TINY, "version": "1", "kind": TINY_KIND, "device": "cpu"}
    assert value(after["infer"], "conveyor_infer_model_info", **info) == 1
    # Exported, and a duration: the tiny model can load within one tick of a coarse clock,
    # so 0 is a possible reading (CI once read exactly 0.0).
    load = ("conveyor_infer_model_load_seconds", frozenset({"model": TINY}.items()))
    assert load in after["infer"]
    assert after["infer"][load] >= 0
    for service in ("ingest", "persist", "notify"):  # each holds a database pool
        pool = after[service]
        assert value(pool, "conveyor_db_pool_max_connections") == 10
        assert 1 <= value(pool, "conveyor_db_pool_connections") <= 10
        assert (
            0
            <= value(pool, "conveyor_db_pool_idle_connections")
            <= value(pool, "conveyor_db_pool_connections")
        )
    assert value(after["infer"], "conveyor_db_pool_max_connections") == 0  # infer has none


async def test_no_span_is_annotated_after_it_ended(observed: Observed) -> None:
    """FastAPI's server span ends with the response: a late attribute is a warning per job
    (OpenTelemetry's "Setting attribute on ended span"), and it is lost."""
    response = await observed.api.post("/v1/jobs", json={"model": "nope", "inputs": ["x"]})
    assert response.status_code == 422
    await anyio.sleep(0.5)
    for name, process in observed.dev.supervisor.processes.items():
        assert "ended span" not in process.output, name


async def test_every_worker_answers_its_liveness_probe(observed: Observed) -> None:
    """/healthz on the metrics port: the receive loop of each running worker is alive."""
    async with httpx.AsyncClient() as http:
        for service in ("infer", "persist", "notify"):
            response = await http.get(f"http://127.0.0.1:{observed.ports[service]}/healthz")
            assert (response.status_code, response.json()) == (
                200,
                {"status": "ok", "stale_s": {}},
            ), service


async def test_poison_counts_as_a_dlq_move_on_its_last_delivery(observed: Observed) -> None:
    stack = observed.dev.stack
    queue = stack.topology.infer_queue(TINY)
    moves = {"queue": queue.name, "reason": "poison"}
    before = value(await observed.scrape("infer"), "conveyor_dlq_moves_total", **moves)
    async with AwsClients(stack.admin) as clients:
        sqs = await clients.sqs()
        urls = stack.provisioned.queue_urls
        await sqs.send_message(QueueUrl=urls[queue.name], MessageBody="not an envelope")

        async def moved() -> None:
            after = value(await observed.scrape("infer"), "conveyor_dlq_moves_total", **moves)
            assert after == before + 1
            attributes = await sqs.get_queue_attributes(
                QueueUrl=urls[queue.dlq_name], AttributeNames=["ApproximateNumberOfMessages"]
            )
            assert int(attributes["Attributes"]["ApproximateNumberOfMessages"]) == 1

        await eventually(moved, timeout=60)


async def test_aws_errors_are_counted_by_operation_and_reason(stack: Stack) -> None:
    """In this process: the instrumentation sits on every client AwsClients opens."""
    labels = {"api": "sqs", "operation": "GetQueueUrl", "reason": "not_found"}
    before = REGISTRY.get_sample_value("conveyor_aws_request_errors_total", labels) or 0.0
    async with AwsClients(stack.admin) as clients:
        sqs = await clients.sqs()
        with pytest.raises(ClientError, match=r"NonExistentQueue|QueueDoesNotExist"):
            await sqs.get_queue_url(QueueName=f"missing-{uuid.uuid4().hex[:8]}")
    assert REGISTRY.get_sample_value("conveyor_aws_request_errors_total", labels) == before + 1


async def test_a_refusal_counts_the_reason_the_handler_gave(
    stack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    """In this process: a 409 for an undeployed model is `not_deployed`, not any 409."""
    settings = IngestSettings(database_url=stack.database_url, conveyor_models=(TINY,))

    async def not_deployed(_model: str) -> bool:
        return False

    async def queues_ok() -> None:
        return None

    def refused(reason: str) -> float:
        labels = {"reason": reason}
        return REGISTRY.get_sample_value("conveyor_jobs_refused_total", labels) or 0.0

    before = {reason: refused(reason) for reason in ("not_deployed", "conflict")}
    async with open_pool(stack.database_url, max_size=2) as pool:
        async with pool.acquire() as conn:
            key, _ = await create_key(conn, "obs-refusals", "test_observability")
        app = create_app(settings, pool=pool, check_queues=queues_ok, model_deployed=not_deployed)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {key}"},
            ) as client,
        ):
            response = await client.post("/v1/jobs", json={"model": TINY, "inputs": ["x"]})
    assert response.status_code == 409
    assert refused("not_deployed") == before["not_deployed"] + 1
    assert refused("conflict") == before["conflict"]


async def test_one_job_is_one_trace_across_the_four_processes(observed: Observed) -> None:
    async with WebhookReceiver(secret=observed.dev.stack.webhook_secret) as rx:
        job_id = await observed.submit(["follow me"], rx.url)
        await rx.wait_for_requests(1, timeout=60)

    def job_trace() -> list[dict[str, Any]]:
        spans = read_spans(observed.span_dir)
        mine = {
            span["trace_id"]
            for span in spans
            if span["attributes"].get("conveyor.job_id") == job_id
        }
        assert len(mine) == 1, f"the job's spans are in {len(mine)} traces"
        return [span for span in spans if span["trace_id"] in mine]

    async def complete() -> None:
        names = {span["name"] for span in job_trace()}
        assert {"webhook POST", "model call"} <= names

    await eventually(complete)
    spans = job_trace()
    by_id = {span["span_id"]: span for span in spans}
    assert {span["service"] for span in spans} == {f"conveyor-{s}" for s in SERVICES}
    # Connected: one root, the HTTP accept; every other span's parent is in the trace.
    roots = [span for span in spans if span["parent_id"] is None]
    assert [root["name"] for root in roots] == ["POST /v1/jobs"]
    assert all(s["parent_id"] in by_id for s in spans if s["parent_id"] is not None)

    # FastAPI's operation spans (``fastapi.endpoint``...) are off: the server span is ingest's.
    assert not [s["name"] for s in spans if s["name"].startswith("fastapi.")]

    def lineage(name: str) -> list[str]:
        """The span's ancestors."""
        (span,) = [s for s in spans if s["name"] == name]
        names = []
        while span is not None:
            names.append(f"{span['service']}: {span['name']}")
            span = by_id.get(span["parent_id"])
        return names

    assert lineage("webhook POST") == [
        "conveyor-notify: webhook POST",
        "conveyor-notify: notify job.notification",
        "conveyor-persist: persist job.result",
        "conveyor-infer: infer job.requested",
        "conveyor-ingest: relay send",
        "conveyor-ingest: POST /v1/jobs",
    ]
    assert lineage("model call")[:3] == [
        "conveyor-infer: model call",
        "conveyor-infer: batch",
        "conveyor-infer: infer job.requested",
    ]
    waits = sorted(s["service"] for s in spans if s["name"] == "queue wait")
    assert waits == ["conveyor-infer", "conveyor-notify", "conveyor-persist", "conveyor-persist"]
    # The model batch is a trace of its own that links to this job's batch span.
    (batch_span,) = [s for s in spans if s["name"] == "batch"]
    batches = [
        s
        for s in read_spans(observed.span_dir)
        if s["name"] == "model batch"
        and {"trace_id": batch_span["trace_id"], "span_id": batch_span["span_id"]} in s["links"]
    ]
    assert len(batches) == 1
    assert batches[0]["trace_id"] != batch_span["trace_id"]


async def test_every_log_line_about_a_job_names_it_its_trace_service_and_model(
    observed: Observed,
) -> None:
    async with WebhookReceiver(secret=observed.dev.stack.webhook_secret) as rx:
        job_id = await observed.submit(["log me"], rx.url)
        await rx.wait_for_requests(1, timeout=60)

    found: dict[str, list[dict[str, Any]]] = {}

    async def logged() -> None:
        for service in SERVICES:
            lines = [line for line in observed.log_lines(service) if job_id in line]
            found[service] = [json.loads(line) for line in lines]  # JSON, every one
        assert all(found.values()), {s: len(lines) for s, lines in found.items()}
        assert any(line["event"] == "delivered" for line in found["notify"])

    await eventually(logged)
    trace_ids = set()
    for service, lines in found.items():
        for line in lines:
            assert line.get("job_id") == job_id, line
            assert line.get("service") == service, line
            assert line.get("model") == TINY, line
            trace_ids.add(line.get("trace_id"))
    (trace_id,) = trace_ids  # one trace, on every line of every service
    assert trace_id is not None
    spans = read_spans(observed.span_dir)
    assert any(s["trace_id"] == trace_id and s["name"] == "POST /v1/jobs" for s in spans), (
        "the logs' trace_id is the job's trace"
    )
