"""OpenTelemetry traces, carried from service to service by the envelope's ``traceparent``.

One job is one trace across the four processes:

    POST /v1/jobs (ingest) ─> relay send (ingest) ─SQS─> queue wait, infer job.requested
        ─> batch ─> model call (infer) ─SQS─> queue wait, persist job.result (persist)
        ─SQS─> queue wait, notify job.notification ─> webhook POST (notify)

Whoever sends a message puts the W3C trace context of its current span in the envelope
(:func:`traceparent`); the receiver starts its span as a child of it (:func:`context_from`,
:func:`shared.observe.handling`). A model batch serves many jobs, so it is a trace of its own
whose span links to each job's span, and each job gets a ``model call`` child span.

:func:`configure_tracing` (called by :mod:`shared.service` for every service) installs the SDK
always, so that spans have ids to propagate and to put in log lines, and exports them only
where asked:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): OTLP over HTTP,
  in batches from a background thread; the exporter's other ``OTEL_*`` variables apply.
  Unset: nothing leaves the process.
- ``CONVEYOR_TEST_SPAN_DIR`` (tests only): every ended span as one JSON line in
  ``<dir>/<service>-<pid>.jsonl`` (:mod:`shared.spanfile`), so that a test can follow a trace
  across processes.

``OTEL_SDK_DISABLED=true`` turns the SDK off (no spans, no ids), as the specification says.

Spans whose ids nothing carries on (leaves: infer's per-job ``batch`` and ``model call``, the
``model batch``) come from :func:`leaf_tracer`, which starts none while the process exports
nothing: three of infer's four spans per job, 8% of its CPU with 1-text jobs (py-spy).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "SPAN_DIR_ENV",
    "configure_tracing",
    "context_from",
    "exporters",
    "exporting",
    "leaf_tracer",
    "shutdown_tracing",
    "trace_id_of",
    "traceparent",
    "tracer",
]

SPAN_DIR_ENV: Final = "CONVEYOR_TEST_SPAN_DIR"
_OTLP_ENVS: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_SHUTDOWN_S: Final = 5.0

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("conveyor")
"""A proxy until a provider is installed, then the provider's tracer."""


class _ParentTracer(trace.NoOpTracer):
    """Starts no span: what it hands out is the current span, read-only (non-recording), so
    inside it the ids in log lines and in messages sent are still the parent's."""

    def start_span(
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> trace.Span:
        return trace.NonRecordingSpan(trace.get_current_span(context).get_span_context())

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        yield self.start_span(name, context)


_parent_tracer: Final = _ParentTracer()


class _CountingProvider(TracerProvider):
    """The SDK's provider, counting its span processors (the SDK cannot list them)."""

    processors = 0

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.processors += 1


_provider: _CountingProvider | None = None


def tracer() -> trace.Tracer:
    return _tracer


def exporting() -> bool:
    """Whether this process's spans go anywhere: an exporter, or a processor a test added."""
    return _provider is not None and _provider.processors > 0


def leaf_tracer() -> trace.Tracer:
    """The tracer for spans that only an exporter reads, whose ids no message or other span
    carries. While nothing is exported it starts none: its span is the current one, read-only,
    so log lines inside still carry the trace id."""
    return _tracer if exporting() else _parent_tracer


def configure_tracing(service: str, env: Mapping[str, str] = os.environ) -> TracerProvider:
    """Install the SDK for this process (once), with the exporters ``env`` asks for."""
    global _provider
    if _provider is not None:
        return _provider
    # The exit is ours (shutdown_tracing, bounded): an atexit flush could hold a stopping
    # process for the exporter's whole timeout while a collector is away.
    provider = _CountingProvider(
        resource=Resource.create(
            {"service.name": f"conveyor-{service}", "service.namespace": "conveyor"}
        ),
        shutdown_on_exit=False,
    )
    for processor in exporters(service, env):
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def exporters(service: str, env: Mapping[str, str]) -> list[SpanProcessor]:
    """The span processors ``env`` asks for: none unless an OTLP endpoint or the test-only
    span directory is set."""
    processors: list[SpanProcessor] = []
    if any(env.get(name) for name in _OTLP_ENVS):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads its endpoint, headers, timeout... from the same environment.
        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    span_dir = env.get(SPAN_DIR_ENV)
    if span_dir:
        from shared.spanfile import JsonLinesSpanExporter

        path = Path(span_dir) / f"{service}-{os.getpid()}.jsonl"
        processors.append(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    return processors


def shutdown_tracing(timeout_s: float = _SHUTDOWN_S) -> None:
    """Export what is left, waiting at most ``timeout_s`` (a collector may be unreachable)."""
    provider = _provider
    if provider is None:
        return
    done = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    done.start()
    done.join(timeout_s)


def traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent`` (None outside any span)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> otel_context.Context:
    """A context whose parent is the remote span ``traceparent`` names (a malformed or
    missing one gives an empty context: the span then starts a new trace)."""
    if not traceparent:
        return otel_context.Context()
    return _propagator.extract({"traceparent": traceparent}, context=otel_context.Context())


def trace_id_of(span: trace.Span | None = None) -> str | None:
    """The trace id (32 hex digits) of ``span``, by default the current one; None if invalid."""
    context = (span or trace.get_current_span()).get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
