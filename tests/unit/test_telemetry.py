"""Traces, logs and metrics in one process, with the SDK's in-memory exporter.

What crosses a queue is the envelope; here a sender's span puts its context in an envelope and
a receiver's :func:`shared.observe.handling` continues it, as two services do (the whole
stack, with real processes, is ``tests/integration/test_observability.py``).
"""

from __future__ import annotations

import datetime
import importlib
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import anyio
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from services.infer.runner import ModelRunner
from shared.aws.errors import error_reason
from shared.messages import Envelope, MessageType
from shared.observe import handling
from shared.spanfile import JsonLinesSpanExporter, read_spans
from shared.sqs import ReceivedMessage
from shared.telemetry import configure_logging
from shared.tracing import (
    SPAN_DIR_ENV,
    configure_tracing,
    exporters,
    trace_id_of,
    traceparent,
    tracer,
)
from tests.conftest import REPO, run_python

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    return configure_tracing("unit", env={})


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    # The SDK cannot remove a processor: shut it down, so it records nothing more.
    processor.shutdown()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """JSON logs of service ``persist`` into a buffer; the previous configuration after."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    configure_logging("debug", "json", service="persist")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    yield buffer
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()


def envelope(parent: str | None, sent: datetime.datetime) -> Envelope:
    return Envelope(
        type=MessageType.JOB_RESULT,
        job_id=uuid.uuid4(),
        tenant="t",
        traceparent=parent,
        created_at=sent,
        payload={},
    )


def received(receive_count: int = 1, at: float | None = None) -> ReceivedMessage:
    return ReceivedMessage(
        message_id="m-1",
        receipt_handle="r-1",
        body="{}",
        receive_count=receive_count,
        received_at=0.0,
        received_unix=time.time() if at is None else at,
    )


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_receiver_continues_the_senders_trace_through_the_envelope(
    spans: InMemorySpanExporter,
) -> None:
    sent = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=2)
    waits_before = sample("conveyor_queue_wait_seconds_count", hop="persist")
    with tracer().start_as_current_span("infer job.requested") as sender:
        message = envelope(traceparent(), sent)
    with handling("persist", message, received()) as span:
        assert trace_id_of() == trace_id_of(span) == trace_id_of(sender)

    finished = by_name(spans.get_finished_spans())
    sender_context = finished["infer job.requested"].get_span_context()
    assert sender_context is not None
    hop = finished["persist job.result"]
    waited = finished["queue wait"]
    for child in (hop, waited):  # both children of the sender, across the "queue"
        assert child.parent is not None
        assert child.parent.span_id == sender_context.span_id
        assert child.context is not None
        assert child.context.trace_id == sender_context.trace_id
    assert hop.kind is trace.SpanKind.CONSUMER
    assert hop.attributes is not None
    assert hop.attributes["conveyor.job_id"] == str(message.job_id)
    # The queue wait runs from the envelope's created_at to the receive.
    assert waited.start_time == int(sent.timestamp() * 1e9)
    assert waited.end_time is not None
    assert waited.end_time - waited.start_time >= 2 * 10**9
    assert sample("conveyor_queue_wait_seconds_count", hop="persist") == waits_before + 1


def test_a_redelivery_is_no_queue_wait_and_no_traceparent_is_a_new_trace(
    spans: InMemorySpanExporter,
) -> None:
    waits_before = sample("conveyor_queue_wait_seconds_count", hop="persist")
    message = envelope(None, datetime.datetime.now(datetime.UTC))
    with handling("persist", message, received(receive_count=3)):
        pass
    finished = spans.get_finished_spans()
    assert [span.name for span in finished] == ["persist job.result"]
    assert finished[0].parent is None
    assert sample("conveyor_queue_wait_seconds_count", hop="persist") == waits_before


class Echo:
    """A model handler: one number per input, its length."""

    kind: ClassVar[str] = "echo"

    def cost(self, text: str) -> int:
        return len(text.split())

    def predict(self, inputs: list[str]) -> list[list[float]]:
        return [[float(len(text))] for text in inputs]


async def test_a_batch_links_to_every_job_and_each_job_gets_its_model_call(
    spans: InMemorySpanExporter,
) -> None:
    runner = ModelRunner(
        Echo(), max_batch_items=8, max_batch_tokens=1000, max_batch_wait_s=0.5, model="echo"
    )
    tokens_before = sample("conveyor_infer_batch_tokens_sum", model="echo")
    job_spans: dict[str, trace.SpanContext] = {}

    async def one(text: str) -> None:
        with tracer().start_as_current_span(f"batch {text}") as span:
            job_spans[text] = span.get_span_context()
            assert await runner.run(runner.job(uuid.uuid4(), [text])) == [[float(len(text))]]

    async with anyio.create_task_group() as tg:
        runner.start(tg)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as jobs:
                for text in ("a b", "c d e"):
                    jobs.start_soon(one, text)
        tg.cancel_scope.cancel()

    finished = spans.get_finished_spans()
    (batch,) = [span for span in finished if span.name == "model batch"]
    batch_context = batch.get_span_context()
    assert batch_context is not None
    assert batch.parent is None  # a trace of its own...
    assert {link.context.span_id for link in batch.links} == {  # ...linked to both jobs
        context.span_id for context in job_spans.values()
    }
    calls = [span for span in finished if span.name == "model call"]
    assert len(calls) == 2
    for call in calls:  # one in each job's trace, a child of the job's span
        assert call.parent is not None
        assert call.context is not None
        assert (call.context.trace_id, call.parent.span_id) in {
            (context.trace_id, context.span_id) for context in job_spans.values()
        }
        assert [link.context.span_id for link in call.links] == [batch_context.span_id]
    assert sample("conveyor_infer_batch_tokens_sum", model="echo") == tokens_before + 5


def test_job_log_lines_carry_job_id_trace_id_service_and_model(
    spans: InMemorySpanExporter, log_lines: io.StringIO
) -> None:
    message = envelope(None, datetime.datetime.now(datetime.UTC))
    with handling("persist", message, received(), model="tiny") as span:
        structlog.get_logger().debug("result", outcome="new")
        expected_trace = trace_id_of(span)
    (line,) = [json.loads(text) for text in log_lines.getvalue().splitlines()]
    assert line["event"] == "result"
    assert line["job_id"] == str(message.job_id)
    assert line["trace_id"] == expected_trace
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
    assert line["service"] == "persist"
    assert line["model"] == "tiny"
    assert line["level"] == "debug"


def test_console_logs_show_the_same_fields_for_people(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = structlog.get_config()
    try:
        configure_logging("debug", "console", service="notify")
        message = envelope(None, datetime.datetime.now(datetime.UTC))
        with handling("notify", message, received(), model="tiny"):
            structlog.get_logger().debug("delivered", status=200)
    finally:
        structlog.configure(**saved)
        structlog.contextvars.clear_contextvars()
    text = capsys.readouterr().err
    assert not text.lstrip().startswith("{")
    for field in (f"job_id={message.job_id}", "model=tiny", "service=notify", "trace_id="):
        assert field in text


def test_spans_are_exported_only_where_asked(tmp_path: Path) -> None:
    assert exporters("ingest", {}) == []  # nothing leaves the process by default
    (otlp,) = exporters("ingest", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert isinstance(otlp, BatchSpanProcessor)
    assert isinstance(otlp.span_exporter, OTLPSpanExporter)
    otlp.shutdown()
    (to_file,) = exporters("ingest", {SPAN_DIR_ENV: str(tmp_path)})
    assert isinstance(to_file, SimpleSpanProcessor)
    assert isinstance(to_file.span_exporter, JsonLinesSpanExporter)


def test_the_span_file_holds_what_the_sdk_gave_it(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    with tracer().start_as_current_span("parent"), tracer().start_as_current_span("child"):
        pass
    JsonLinesSpanExporter(tmp_path / "unit-1.jsonl").export(spans.get_finished_spans())
    records = {record["name"]: record for record in read_spans(tmp_path)}
    assert records["child"]["parent_id"] == records["parent"]["span_id"]
    assert records["child"]["trace_id"] == records["parent"]["trace_id"]
    assert records["parent"]["service"] == "conveyor-unit"


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", 400, "not_found"),
        ("404", 404, "not_found"),
        ("AccessDenied", 403, "access_denied"),
        ("RequestThrottled", 400, "throttled"),
        ("InternalError", 500, "server_error"),
        ("InvalidParameterValue", 400, "client_error"),
    ],
)
def test_aws_errors_have_few_reasons(code: str, status: int, reason: str) -> None:
    assert error_reason(code, status) == reason


METRIC_MODULES = (
    "shared.metrics",
    "shared.db.pool",
    "services.ingest.metrics",
    "services.infer.metrics",
    "services.persist.metrics",
    "services.notify.metrics",
)


def _documented_metrics() -> set[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Metrics, traces and logs", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(conveyor_[a-z_]+)", section))


def test_every_metric_is_in_the_readme() -> None:
    for module in METRIC_MODULES:  # each registers its metrics on import
        importlib.import_module(module)
    exported: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("conveyor_"):
            exported.add(family.name + ("_total" if family.type == "counter" else ""))
    documented = _documented_metrics()
    assert exported - documented == set(), "metrics the README does not explain"
    series = {f"{name}{suffix}" for name in exported for suffix in ("", "_count", "_sum")}
    assert documented - series == set(), "the README explains metrics that do not exist"


LEAF_SPANS = """
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shared.tracing import configure_tracing, exporting, leaf_tracer, trace_id_of, tracer

provider = configure_tracing("unit", env={})
with tracer().start_as_current_span("job") as job:
    with leaf_tracer().start_as_current_span("leaf") as leaf:
        print(exporting(), leaf.is_recording(), trace_id_of() == trace_id_of(job))
    print(leaf.get_span_context() == job.get_span_context())
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
with tracer().start_as_current_span("job") as job:
    with leaf_tracer().start_as_current_span("leaf") as leaf:
        print(exporting(), leaf.is_recording(), trace_id_of() == trace_id_of(job))
print(sorted(span.name for span in exporter.get_finished_spans()))
"""


def test_leaf_spans_are_started_only_where_spans_are_exported() -> None:
    """Without an exporter a leaf span is its parent, read-only (log lines inside keep the
    trace id); with one, it is a span of its own, exported."""
    result = run_python(LEAF_SPANS, timeout=60, check=True)
    assert result.stdout.splitlines() == [
        "False False True",
        "True",
        "True True True",
        "['job', 'leaf']",
    ]
