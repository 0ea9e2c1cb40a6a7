"""What every consumer does first with a job's message: its span, its log context, its queue time.

    async def handle(message: ReceivedMessage) -> None:
        envelope, payload = await claims.read(message.body, ...)
        with handling("persist", envelope, message, model=payload.model):
            ...   # spans started here are the job's; log lines carry job_id, trace_id, model

:func:`handling`

- starts the hop's span (``persist job.result``) as a child of the sender's span, named by the
  envelope's ``traceparent``, so the job's trace crosses the queue;
- on a message's first delivery, records its time in the queue, from the envelope's
  ``created_at`` (when the upstream service sent it) to the receive: the
  ``conveyor_queue_wait_seconds{hop}`` histogram and a ``queue wait`` span beside the hop's
  (a redelivery's wait would count the retry's own delay, so it is left out);
- binds ``job_id``, ``trace_id`` and ``model`` for the log lines of the rest of the message's
  handling, the consumer's own lines about it included (the consumer restores the context
  after each message).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from opentelemetry import trace

from shared.messages import Envelope
from shared.metrics import QUEUE_WAIT
from shared.sqs.consumer import ReceivedMessage
from shared.tracing import context_from, trace_id_of, tracer

__all__ = ["bind_model", "handling"]


@contextmanager
def handling(
    hop: str, envelope: Envelope, message: ReceivedMessage, *, model: str | None = None
) -> Iterator[trace.Span]:
    """The span of ``hop`` handling ``envelope`` (received as ``message``); see the module."""
    parent = context_from(envelope.traceparent)
    if message.receive_count <= 1:
        sent_ns = int(envelope.created_at.timestamp() * 1e9)
        received_ns = int(message.received_unix * 1e9)
        QUEUE_WAIT.labels(hop).observe(max(0, received_ns - sent_ns) / 1e9)
        waited = tracer().start_span(
            "queue wait",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            start_time=min(sent_ns, received_ns),
            attributes={"conveyor.job_id": str(envelope.job_id), "conveyor.hop": hop},
        )
        waited.end(end_time=received_ns)
    attributes: dict[str, str | int] = {
        "conveyor.job_id": str(envelope.job_id),
        "conveyor.hop": hop,
        "conveyor.receive_count": message.receive_count,
        "messaging.system": "aws_sqs",
        "messaging.message.id": message.message_id,
    }
    with tracer().start_as_current_span(
        f"{hop} {envelope.type.value}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        bound: dict[str, str] = {"job_id": str(envelope.job_id)}
        if (trace_id := trace_id_of(span)) is not None:
            bound["trace_id"] = trace_id
        structlog.contextvars.bind_contextvars(**bound)
        if model is not None:
            bind_model(model)
        yield span


def bind_model(model: str) -> None:
    """The job's model, once known: on its log lines and its current span."""
    structlog.contextvars.bind_contextvars(model=model)
    trace.get_current_span().set_attribute("conveyor.model", model)
