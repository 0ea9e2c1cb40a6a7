"""notify: tells each job's callback URL how the job ended, signed, retried, logged.

For each notification: skip it if this job's event was already delivered (a redelivered or
duplicated message), build the body from the job's final state, POST it signed (Standard
Webhooks), and record the attempt. A failed attempt is retried on the configured schedule by
making the message visible again later (``Retry-After`` can lengthen a wait); 410 Gone or the
end of the schedule ends the delivery as failed. Every retry carries the same ``webhook-id``.

Signing: when the job's tenant registered its callback URL as a webhook endpoint (``conveyor
webhooks add``), the delivery is signed with that endpoint's secrets (the current one, and
during a rotation's overlap the old one too); any other callback URL is signed with the stack's
secret, ``NOTIFY_WEBHOOK_SECRET``. Registering an endpoint is how a tenant gets a secret of its
own. The secrets are read on every attempt, so a rotation takes effect on the next one.

Each attempt continues the job's trace (:func:`shared.observe.handling`) with a
``webhook POST`` span. Metrics: :mod:`services.notify.metrics`.
"""

from __future__ import annotations

import datetime
from typing import Any

import anyio
from opentelemetry import trace

from services.notify.delivery import DeliveryOutcome, WebhookSender, webhook_id_for
from services.notify.endpoints import signing_secrets
from services.notify.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_DURATION
from services.notify.schedule import RetrySchedule
from services.notify.ssrf import GuardedTransport
from services.notify.store import claim_delivery, delivery_state, record_attempt
from shared.activity import Activity
from shared.aws import AwsClients, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import NotifySettings
from shared.db import Connection, open_pool, with_connection
from shared.messages import Envelope, MessageType, Notification, PoisonMessage
from shared.observe import bind_model, handling
from shared.sqs import ReceivedMessage, RetryLater, SqsConsumer
from shared.telemetry import get_logger
from shared.tracing import tracer

__all__ = ["run"]

log = get_logger("notify")


async def run(settings: NotifySettings, stopping: anyio.Event) -> None:
    topology = settings.topology()
    aws = settings.aws()
    schedule = RetrySchedule.from_settings(settings)
    async with (
        AwsClients(aws) as clients,
        open_pool(settings.database_url) as pool,
        WebhookSender(
            settings.webhook_secret,
            settings.request_timeout_s,
            # Resolves each callback host once, refuses non-public addresses, and connects
            # only to the address it checked (no DNS rebinding).
            transport=GuardedTransport(
                allow_loopback=settings.allow_loopback_callbacks,
                max_connections=settings.concurrency,
            ),
        ) as sender,
    ):
        sqs = await clients.sqs()
        notify_url = await resolve_queue_url(sqs, aws, topology.notify_queue.name)
        claims = ClaimCheck(clients, topology.payloads_bucket.name, settings.claim_check_bytes)
        activity = Activity(
            log,
            interval_s=settings.log_summary_s,
            names=("delivered", "delivery_failures", "gave_up", "duplicates"),
        )

        async def handle(message: ReceivedMessage) -> None:
            envelope, note = await claims.read(
                message.body, MessageType.JOB_NOTIFICATION, Notification
            )
            with handling("notify", envelope, message):
                await notify(envelope, note)

        async def notify(envelope: Envelope, note: Notification) -> None:
            job_id, event = envelope.job_id, note.event
            lease_s = settings.request_timeout_s + 10

            async def read_state(
                conn: Connection,
            ) -> tuple[str, dict[str, Any] | None, int, list[str]]:
                # Statements, not a transaction: each is atomic, and the lease alone decides
                # which of two copies of one notification delivers.
                known = await delivery_state(conn, job_id, event)
                if known is None:
                    return "unknown", None, 0, []
                bind_model(known.model)
                if known.delivered:
                    return "delivered", None, 0, []
                if not await claim_delivery(conn, job_id, event, lease_s):
                    return "busy", None, 0, []
                # The tenant's own endpoint secrets, only for a URL this tenant registered.
                secrets = await signing_secrets(conn, envelope.tenant, note.callback_url)
                return "mine", known.data, known.attempts + 1, secrets

            state, data, attempt, secrets = await with_connection(pool, read_state)
            if state == "delivered":
                activity.count("duplicates")
                log.debug("duplicate notification dropped", job_id=str(job_id), webhook_event=event)
                return
            if state == "busy":
                raise RetryLater("another worker is delivering this event", lease_s)
            if state == "unknown" or data is None:
                raise PoisonMessage(f"notification for unknown job {job_id}")
            finished = data.get("finished_at")
            with tracer().start_as_current_span(
                "webhook POST",
                kind=trace.SpanKind.CLIENT,
                attributes={"http.request.method": "POST", "conveyor.attempt": attempt},
            ) as span:
                outcome = await sender.deliver(
                    note.callback_url,
                    webhook_id=webhook_id_for(job_id, event),
                    event_type=event,
                    data=data,
                    # The event's own time: the body stays byte-identical across retries.
                    occurred_at=datetime.datetime.fromisoformat(finished) if finished else None,
                    # None (not registered): the stack's secret.
                    secrets=secrets or None,
                )
                if outcome.status_code is not None:
                    span.set_attribute("http.response.status_code", outcome.status_code)
                if not outcome.succeeded:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error))

            async def record(conn: Connection) -> None:
                await record_attempt(
                    conn,
                    job_id=job_id,
                    webhook_id=webhook_id_for(job_id, event),
                    event=event,
                    attempt=attempt,
                    url=note.callback_url,
                    outcome=outcome,
                    release=True,
                )

            await with_connection(pool, record)
            bound = log.bind(job_id=str(job_id), webhook_event=event, attempt=attempt)
            if outcome.succeeded:
                attempted(outcome, "succeeded")
                activity.count("delivered")
                bound.debug("delivered", status=outcome.status_code, ms=outcome.duration_ms)
                return
            activity.count("delivery_failures")
            delay = None if outcome.give_up else schedule.next_delay(attempt, outcome.retry_after_s)
            if delay is None:
                attempted(outcome, "gave_up")
                activity.count("gave_up")
                bound.warning("delivery failed for good", error=outcome.error)
                return
            attempted(outcome, "retry")
            raise RetryLater(f"delivery attempt {attempt} failed: {outcome.error}", delay)

        def attempted(outcome: DeliveryOutcome, result: str) -> None:
            WEBHOOK_ATTEMPTS.labels(result).inc()
            WEBHOOK_DURATION.labels(result).observe(outcome.duration_ms / 1000)

        consumer = SqsConsumer.for_service(
            settings, sqs, notify_url, handle, concurrency=settings.concurrency
        )
        activity.watch(consumer.stats.totals)
        async with anyio.create_task_group() as tg:
            tg.start_soon(activity.run)
            log.info("ready", queue=topology.notify_queue.name)
            await consumer.run(stopping)
            tg.cancel_scope.cancel()
