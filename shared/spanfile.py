"""A test-only span exporter: each ended span as one JSON line in a file of its process.

Enabled by ``CONVEYOR_TEST_SPAN_DIR`` (:mod:`shared.tracing`), never by default. The services
are separate processes, so the SDK's in-memory exporter cannot show a test the whole trace;
this writes what it would have held, and :func:`read_spans` gathers every process's file:

    {"name": "persist job.result", "service": "conveyor-persist", "trace_id": "4bf9...",
     "span_id": "00f0...", "parent_id": "a3ce...", "kind": "CONSUMER", "start_ns": ...,
     "end_ns": ..., "status": "UNSET", "attributes": {...},
     "links": [{"trace_id": ..., "span_id": ...}]}
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["JsonLinesSpanExporter", "read_spans", "span_record"]


def _hex(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One span as plain JSON-ready data."""
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    parent = span.parent
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": _hex(context.trace_id, 32),
        "span_id": _hex(context.span_id, 16),
        "parent_id": _hex(parent.span_id, 16) if parent is not None else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {key: _plain(value) for key, value in (span.attributes or {}).items()},
        "links": [
            {
                "trace_id": _hex(link.context.trace_id, 32),
                "span_id": _hex(link.context.span_id, 16),
            }
            for link in span.links
        ],
    }


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


class JsonLinesSpanExporter(SpanExporter):
    """Appends spans to ``path`` (its directory must exist), one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_record(span)) + "\n" for span in spans)
        with self._lock, self.path.open("a", encoding="utf-8") as file:
            file.write(text)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing is held open between exports."""


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span written under ``directory`` by any process (a torn last line is skipped)."""
    spans = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                spans.append(json.loads(line))
            except ValueError:
                continue  # a process writing it right now
    return spans
