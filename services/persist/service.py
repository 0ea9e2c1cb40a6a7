"""persist: records each job's result and final state, then asks notify to tell the client.

A ``job.started`` message moves the job from queued to running (a no-op once it is further).
For each result: record it (once; batched into shared transactions), then, when the job has a
callback URL, publish a notification. Only then is the message deleted. A redelivered result
finds the job final and records nothing, but still publishes the notification, because the
first attempt may have died before publishing it; notify drops a notification that was
already delivered. A result for a cancelled job is discarded and not notified.
"""

from __future__ import annotations

import anyio

from services.persist.writer import Recorded, ResultWriter, WriteRequest, mark_running
from shared.aws import AwsClients, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import PersistSettings
from shared.db import open_pool
from shared.messages import (
    JobResult,
    JobStarted,
    JobStatus,
    MessageType,
    Notification,
    PoisonMessage,
    decode_envelope,
)
from shared.sqs import Publisher, ReceivedMessage, SqsConsumer
from shared.telemetry import get_logger

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
        writer = ResultWriter(pool, max_wait_s=settings.max_batch_wait_s)
        notifications = Publisher(sqs, aws, notify_url)

        async def handle(message: ReceivedMessage) -> None:
            envelope = decode_envelope(message.body)
            if envelope.type == MessageType.JOB_STARTED:
                started = await claims.payload(envelope, JobStarted)
                await mark_running(pool, envelope.job_id, envelope.tenant, started)
                return
            if envelope.type != MessageType.JOB_RESULT:
                raise PoisonMessage(
                    f"unexpected {envelope.type.value} message in the results queue"
                )
            result = await claims.payload(envelope, JobResult)
            outcome = await writer.record(WriteRequest(envelope.job_id, envelope.tenant, result))
            log.debug("result", job_id=str(envelope.job_id), outcome=outcome.value)
            if outcome == Recorded.DUPLICATE:
                log.info("duplicate result ignored", job_id=str(envelope.job_id))
            if outcome == Recorded.DISCARDED:
                log.info("result for a cancelled job discarded", job_id=str(envelope.job_id))
                return
            if result.callback_url:
                event = "job.succeeded" if result.status == JobStatus.SUCCEEDED else "job.failed"
                notification = await claims.seal(
                    MessageType.JOB_NOTIFICATION,
                    job_id=envelope.job_id,
                    tenant=envelope.tenant,
                    traceparent=envelope.traceparent,
                    payload=Notification(event=event, callback_url=result.callback_url),
                )
                await notifications.publish(notification.model_dump_json())

        consumer = SqsConsumer.for_service(
            settings, sqs, results_url, handle, concurrency=settings.concurrency
        )
        async with anyio.create_task_group() as tg:
            writer.start(tg)
            notifications.start(tg)
            log.info("ready", queue=topology.results_queue.name)
            await consumer.run(stopping)
            tg.cancel_scope.cancel()
