"""persist: records each job's result and final state, then asks notify to tell the client.

For each message of the results queue: record the result (once; batched into shared
transactions), then, when the job has a callback URL, publish a notification. Only then is the
message deleted. A redelivered result finds the job final and records nothing, but still
publishes the notification, because the first attempt may have died before publishing it;
notify drops a notification that was already delivered.
"""

from __future__ import annotations

import anyio

from services.persist.writer import ResultWriter, WriteRequest
from shared.aws import AwsClients, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import PersistSettings
from shared.db import open_pool
from shared.messages import JobResult, JobStatus, MessageType, Notification
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
            envelope, result = await claims.read(message.body, MessageType.JOB_RESULT, JobResult)
            outcome = await writer.record(WriteRequest(envelope.job_id, envelope.tenant, result))
            log.debug("result", job_id=str(envelope.job_id), outcome=outcome.value)
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
