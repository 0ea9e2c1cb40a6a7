"""persist: records each job's result and final state, then asks notify to tell the client.

A ``job.started`` message moves the job from queued to running (a no-op once it is further).
For each result: record it (once; batched into shared transactions), then, when the job has a
callback URL, publish a notification. Only then is the message deleted. A redelivered result
finds the job final and records nothing, but still publishes the notification, because the
first attempt may have died before publishing it; notify drops a notification that was
already delivered. A result for a cancelled job is discarded and not notified.

Each message continues its job's trace (:func:`shared.observe.handling`); the notification
carries the context of persist's span. Metrics: :mod:`services.persist.metrics`.
"""

from __future__ import annotations

import anyio

from services.persist.metrics import RESULTS
from services.persist.writer import (
    Recorded,
    ResultWriter,
    StartedWriter,
    StartRequest,
    WriteRequest,
)
from shared.activity import Activity
from shared.aws import AwsClients, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import PersistSettings
from shared.db import open_pool
from shared.messages import (
    Envelope,
    JobResult,
    JobStarted,
    JobStatus,
    MessageType,
    Notification,
    PoisonMessage,
    decode_envelope,
)
from shared.observe import bind_model, handling
from shared.sqs import Publisher, ReceivedMessage, SqsConsumer
from shared.telemetry import get_logger
from shared.tracing import traceparent

__all__ = ["run"]

log = get_logger("persist")


async def run(settings: PersistSettings, stopping: anyio.Event) -> None:
    topology = settings.topology()
    aws = settings.aws()
    async with AwsClients(aws) as clients, open_pool(settings.database_url) as pool:
        sqs = await clients.sqs()
        results_url = await resolve_queue_url(sqs, aws, topology.results_queue.name)
        notify_url = await resolve_queue_url(sqs, aws, topology.notify_queue.name)
        claims = ClaimCheck(clients, topology.payloads_bucket.name, settings.claim_check_bytes)
        writer = ResultWriter(pool, max_wait_s=settings.max_batch_wait_s, models=topology.models)
        starts = StartedWriter(pool, max_wait_s=settings.max_batch_wait_s)
        notifications = Publisher(sqs, aws, notify_url)
        activity = Activity(
            log,
            interval_s=settings.log_summary_s,
            names=("started", *(f"results_{outcome.value}" for outcome in Recorded)),
        )

        async def handle(message: ReceivedMessage) -> None:
            envelope = decode_envelope(message.body)
            with handling("persist", envelope, message):
                await handle_job(envelope)

        async def handle_job(envelope: Envelope) -> None:
            if envelope.type == MessageType.JOB_STARTED:
                started = await claims.payload(envelope, JobStarted)
                bind_model(started.model)
                await starts.mark(StartRequest(envelope.job_id, envelope.tenant, started))
                activity.count("started")
                return
            if envelope.type != MessageType.JOB_RESULT:
                raise PoisonMessage(
                    f"unexpected {envelope.type.value} message in the results queue"
                )
            result = await claims.payload(envelope, JobResult)
            bind_model(result.model)
            outcome = await writer.record(WriteRequest(envelope.job_id, envelope.tenant, result))
            RESULTS.labels(outcome.value).inc()
            activity.count(f"results_{outcome.value}")
            log.debug("result", job_id=str(envelope.job_id), outcome=outcome.value)
            if outcome == Recorded.DUPLICATE:
                log.debug("duplicate result ignored", job_id=str(envelope.job_id))
            if outcome == Recorded.DISCARDED:
                log.debug("result for a cancelled job discarded", job_id=str(envelope.job_id))
                return
            if result.callback_url:
                event = "job.succeeded" if result.status == JobStatus.SUCCEEDED else "job.failed"
                notification = await claims.seal(
                    MessageType.JOB_NOTIFICATION,
                    job_id=envelope.job_id,
                    tenant=envelope.tenant,
                    traceparent=traceparent(),
                    payload=Notification(event=event, callback_url=result.callback_url),
                )
                await notifications.publish(notification.model_dump_json())

        consumer = SqsConsumer.for_service(
            settings, sqs, results_url, handle, concurrency=settings.concurrency
        )
        activity.watch(consumer.stats.totals)
        async with anyio.create_task_group() as tg:
            writer.start(tg)
            starts.start(tg)
            notifications.start(tg)
            tg.start_soon(activity.run)
            log.info("ready", queue=topology.results_queue.name)
            await consumer.run(stopping)
            tg.cancel_scope.cancel()
