"""Logging: structlog to stderr, console for people or JSON for collectors.

Every line of a service carries ``service``; a line about a job carries ``job_id``,
``trace_id`` and ``model`` too: handlers bind them as context variables when they take the job
(:func:`shared.observe.handling`, ingest's API), and a line logged inside a span without a
bound ``trace_id`` gets the span's. ``LOG_FORMAT=json`` gives one JSON object per line:

    {"job_id": "7d3c...", "model": "all-minilm-l6-v2", "trace_id": "4bf92f35...",
     "event": "job done", "status": "succeeded", "service": "infer", "level": "debug",
     "timestamp": "2026-11-03T20:26:10.123456Z"}

and ``console`` (the default, and ``make dev``'s) the same fields as ``key=value`` after the
message.
"""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace

__all__ = ["configure_logging", "get_logger"]


def _add_trace_id(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    if "trace_id" not in event:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event["trace_id"] = format(context.trace_id, "032x")
    return event


def configure_logging(
    level: str = "info", fmt: str = "console", service: str | None = None
) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    named: list[structlog.typing.Processor] = [_ServiceName(service)] if service else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_trace_id,
            *named,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class _ServiceName:
    """Adds ``service`` to every line (a process is one service)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __call__(
        self, _logger: object, _method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event.setdefault("service", self.service)
        return event


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
