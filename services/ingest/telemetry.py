"""The telemetry of ``POST /v1/jobs``: its span, its duration, why a submission was refused.

:class:`SubmissionTelemetry` is a plain ASGI middleware around the API (outermost, so that
refusals by other middleware and by dependencies are seen too). For each submission it

- makes sure there is a ``POST /v1/jobs`` server span, the root of the job's trace (a child
  of the client's span when the request carries a ``traceparent`` header): FastAPI makes one
  itself since its native OpenTelemetry support (0.165), and then that one is the job's;
  with an older FastAPI this middleware starts it. The job's envelope takes the context of
  the span current in the handler (:func:`shared.tracing.traceparent`);
- records the request's duration as hop ``ingest`` of ``conveyor_hop_duration_seconds``
  (outcome ``accepted`` or ``refused``), up to the job's acceptance (:func:`accepted_now`)
  when the submission then waits for its job;
- counts a refusal by reason in ``conveyor_jobs_refused_total``: the reason the handler gave
  (:func:`refuse`), else one read from the status code;
- restores the log context afterwards, so what the handler bound (``job_id``, ``model``)
  stays with this request.

The accepted jobs themselves are counted by the handler, which knows their model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import structlog
from fastapi import Request
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.metrics import JOBS_REFUSED
from shared.metrics import HOP_DURATION
from shared.tracing import tracer

__all__ = ["SubmissionTelemetry", "accepted_now", "refuse"]

_BY_STATUS: Final = {
    400: "bad_request",
    401: "unauthorized",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "backlog",
    500: "error",
    503: "unavailable",
}
_REASON: Final = "conveyor_refusal"
"""Where the handler leaves its reason, in the request's state."""


_ACCEPTED_AT: Final = "conveyor_accepted_at"
"""When the handler accepted the job (``time.perf_counter()``), in the request's state."""


def refuse(request: Request, reason: str) -> None:
    """Say why this submission is refused (the middleware counts it once answered)."""
    setattr(request.state, _REASON, reason)


def accepted_now(request: Request) -> None:
    """Say that the job is accepted: hop ``ingest`` ends here, not when a submission that
    waits for its job (``?wait=``) is answered."""
    setattr(request.state, _ACCEPTED_AT, time.perf_counter())


class SubmissionTelemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") == "/v1/jobs"
        ):
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()
        context = structlog.contextvars.get_contextvars()

        with self._server_span(scope) as span:

            def annotate() -> None:
                # FastAPI's own server span ends with the response: annotate it before.
                if not span.is_recording():
                    return
                span.set_attribute("http.response.status_code", status)
                if status >= 400:
                    span.set_attribute("conveyor.refused", reason_of(status))
                if status >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))

            def reason_of(code: int) -> str:
                state = scope.get("state", {})
                return str(state.get(_REASON) or _BY_STATUS.get(code, "other"))

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    annotate()
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            except BaseException:
                annotate()  # no response was started: a 500
                raise
            finally:
                refused = status >= 400
                if refused:
                    JOBS_REFUSED.labels(reason_of(status)).inc()
                outcome = "refused" if refused else "accepted"
                ended = scope.get("state", {}).get(_ACCEPTED_AT) or time.perf_counter()
                HOP_DURATION.labels("ingest", outcome).observe(ended - began)
                structlog.contextvars.clear_contextvars()
                structlog.contextvars.bind_contextvars(**context)

    @contextmanager
    def _server_span(self, scope: Scope) -> Iterator[trace.Span]:
        """The framework's server span for this request, or one of ours where it has none."""
        current = trace.get_current_span()
        if current.is_recording() and getattr(current, "kind", None) is trace.SpanKind.SERVER:
            yield current
            return
        headers = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope.get("headers", ())
            if key in (b"traceparent", b"tracestate")
        }
        with tracer().start_as_current_span(
            "POST /v1/jobs",
            context=self._propagator.extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": "/v1/jobs"},
        ) as span:
            yield span
