"""Consuming one SQS queue: receive in batches, handle concurrently, delete after the effect.

    receiver ──(bounded stream: the backpressure)──> N workers ──> batched deletes
        └── heartbeat: extends the visibility of every message still held

- A message is deleted (``DeleteMessageBatch``) only after its handler returned.
- A handler that raises makes only its own message visible again after a backoff
  (``ChangeMessageVisibility``): :class:`~shared.sqs.retry.RetryLater` chooses the delay,
  any other error uses the :class:`~shared.sqs.retry.RetryPolicy`. :class:`PoisonMessage`
  gives the message straight back, logged once, and the queue's redrive policy moves it to the
  DLQ after ``maxReceiveCount`` deliveries. A failing message never stops the worker.
- Shutdown (the ``stopping`` event): stop receiving (the poll in progress completes, at most
  ``wait_s``), give back messages not yet started (visibility 0), let started ones finish within
  ``grace_s``, give back those that did not, then log one summary line.
- Metrics: each message's handling time by outcome (``conveyor_hop_duration_seconds``, the
  consumer's name as the hop), and a failure on a message's last delivery allowed by the
  queue's redrive policy as a move to the DLQ (``conveyor_dlq_moves_total``). The log context a
  handler binds (:func:`shared.observe.handling`) holds until the consumer is done with its
  message, then is restored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from shared.aws.errors import aws_errors
from shared.batching import Batcher
from shared.config import AwsSettings, CommonSettings
from shared.errors import AccessDenied, AwsError, ResourceNotFound
from shared.liveness import LIVENESS
from shared.messages import PoisonMessage
from shared.metrics import DLQ_MOVES, HOP_DURATION
from shared.sqs.retry import RetryLater, RetryPolicy
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

__all__ = ["ConsumerStats", "Handler", "ReceivedMessage", "SqsConsumer"]

MAX_RECEIVE = 10  # an SQS limit


@dataclass
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    received_at: float
    """When it was received, on anyio's clock (for the heartbeat)."""
    received_unix: float = field(default_factory=time.time)
    """When it was received, as a Unix time (to compare with the envelope's timestamps)."""


Handler = Callable[[ReceivedMessage], Awaitable[None]]


@dataclass
class ConsumerStats:
    received: int = 0
    succeeded: int = 0
    retried: int = 0
    poison: int = 0
    given_back: int = 0
    delete_failures: int = 0

    def summary(self) -> str:
        return (
            f"received={self.received} succeeded={self.succeeded} retried={self.retried} "
            f"failed={self.poison} given_back={self.given_back}"
        )

    def totals(self) -> dict[str, int]:
        """Every count since start, by name (for :class:`shared.activity.Activity`)."""
        return asdict(self)


class SqsConsumer:
    def __init__(
        self,
        sqs: SQSClient,
        aws: AwsSettings,
        queue_url: str,
        handler: Handler,
        *,
        name: str,
        concurrency: int = 16,
        wait_s: int = 5,
        grace_s: float = 20.0,
        retry: RetryPolicy | None = None,
        visibility_timeout_s: int | None = None,
    ) -> None:
        self._sqs = sqs
        self._aws = aws
        self.queue_url = queue_url
        self._handler = handler
        self.name = name
        self.concurrency = concurrency
        self.wait_s = wait_s
        self.grace_s = grace_s
        self.retry = retry or RetryPolicy()
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receive_count: int | None = None
        """The queue's redrive ``maxReceiveCount`` (read at start; None: no DLQ)."""
        self.stats = ConsumerStats()
        self._loop = f"{name} {queue_url.rsplit('/', 1)[-1]}"
        """This consumer's name in :data:`~shared.liveness.LIVENESS`."""
        self._held: dict[str, ReceivedMessage] = {}
        self._log = get_logger(name).bind(queue=queue_url.rsplit("/", 1)[-1])
        self._deleter: Batcher[ReceivedMessage, None] = Batcher(
            self._delete_batch, max_items=MAX_RECEIVE, max_wait_s=0.05, concurrency=4
        )

    @classmethod
    def for_service(
        cls,
        settings: CommonSettings,
        sqs: SQSClient,
        queue_url: str,
        handler: Handler,
        *,
        concurrency: int,
    ) -> SqsConsumer:
        """A consumer with the service's own name, credentials, poll and grace settings."""
        return cls(
            sqs,
            settings.aws(),
            queue_url,
            handler,
            name=settings.service,
            concurrency=concurrency,
            wait_s=settings.sqs_wait_s,
            grace_s=settings.shutdown_grace_s,
        )

    # -- the run loop --------------------------------------------------------------------

    async def run(
        self, stopping: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._read_queue_attributes()
        async with anyio.create_task_group() as services:
            self._deleter.start(services)
            services.start_soon(self._heartbeat)
            with anyio.CancelScope() as handling:
                services.start_soon(self._cancel_after_grace, stopping, handling)
                send, receive = anyio.create_memory_object_stream[ReceivedMessage](0)
                try:
                    async with anyio.create_task_group() as workers:
                        workers.start_soon(self._receive_loop, send, stopping)
                        for _ in range(self.concurrency):
                            workers.start_soon(self._worker, receive.clone(), stopping)
                        receive.close()
                        task_status.started()
                finally:
                    LIVENESS.forget(self._loop)  # stopped on purpose: not a dead loop
            # Every message received was deleted, retried or given back.
            services.cancel_scope.cancel()
        self._log.info("consumer stopped", summary=self.stats.summary())

    async def _cancel_after_grace(self, stopping: anyio.Event, handling: anyio.CancelScope) -> None:
        await stopping.wait()
        await anyio.sleep(self.grace_s)
        if self._held:
            self._log.warning("grace period over, cancelling handlers", held=len(self._held))
        handling.cancel()

    async def _receive_loop(
        self, send: MemoryObjectSendStream[ReceivedMessage], stopping: anyio.Event
    ) -> None:
        failures = 0
        LIVENESS.beat(self._loop)  # watched from its start
        async with send:
            while not stopping.is_set():
                try:
                    batch = await self._receive_batch()
                    failures = 0
                    LIVENESS.beat(self._loop)
                except (AccessDenied, ResourceNotFound):
                    raise
                except AwsError as exc:
                    LIVENESS.beat(self._loop)  # alive, and retrying: SQS is the problem
                    failures += 1
                    delay = min(0.5 * 2**failures, 10.0)
                    self._log.warning("receive failed", error=str(exc), retry_in_s=delay)
                    with anyio.move_on_after(delay):
                        await stopping.wait()
                    continue
                for index, message in enumerate(batch):
                    if not await self._hand_over(send, message, stopping):
                        await self._give_back(batch[index:])
                        break
        # A stop while no worker was free: the rest of the batch went back above.

    async def _hand_over(
        self,
        send: MemoryObjectSendStream[ReceivedMessage],
        message: ReceivedMessage,
        stopping: anyio.Event,
    ) -> bool:
        """Wait for a free worker (the backpressure), unless a stop comes first."""
        if stopping.is_set():
            return False
        try:
            send.send_nowait(message)  # a worker waits already: no race to set up
        except anyio.WouldBlock:
            pass
        else:
            return True
        delivered = False
        async with anyio.create_task_group() as race:

            async def hand() -> None:
                nonlocal delivered
                await send.send(message)
                delivered = True
                race.cancel_scope.cancel()

            async def stop() -> None:
                await stopping.wait()
                race.cancel_scope.cancel()

            race.start_soon(hand)
            race.start_soon(stop)
        return delivered

    async def _worker(
        self, receive: MemoryObjectReceiveStream[ReceivedMessage], stopping: anyio.Event
    ) -> None:
        async with receive:
            async for message in receive:
                if stopping.is_set():
                    await self._give_back([message])
                    continue
                await self._handle(message)

    async def _handle(self, message: ReceivedMessage) -> None:
        log = self._log.bind(message_id=message.message_id, receive_count=message.receive_count)
        context = structlog.contextvars.get_contextvars()
        began = time.perf_counter()
        outcome = "succeeded"
        try:
            await self._handler(message)
        except anyio.get_cancelled_exc_class():
            outcome = "given_back"
            with anyio.CancelScope(shield=True):
                await self._give_back([message])
            raise
        except PoisonMessage as exc:
            outcome = "poison"
            self._count_dlq_move(message, "poison")
            self.stats.poison += 1
            if message.receive_count <= 1:  # logged once, not on every redelivery
                log.error(
                    "poison message, the redrive policy will move it to the DLQ", error=str(exc)
                )
            await self._set_visibility(message, 0)
        except RetryLater as exc:
            outcome = "retried"
            self._count_dlq_move(message, "retries_exhausted")
            self.stats.retried += 1
            log.debug("retry later", reason=str(exc), delay_s=exc.delay_s)
            await self._set_visibility(message, exc.delay_s)
        except Exception as exc:  # a failing message must never stop the worker
            outcome = "retried"
            self._count_dlq_move(message, "retries_exhausted")
            self.stats.retried += 1
            delay = self.retry.delay_s(message.receive_count)
            log.warning("handler failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
            await self._set_visibility(message, delay)
        else:
            try:
                await self._deleter.submit(message)
                self.stats.succeeded += 1
            except AwsError as exc:
                # The effect is done; SQS will deliver again and the handler is idempotent.
                self.stats.delete_failures += 1
                log.warning("delete failed", error=str(exc))
        finally:
            self._held.pop(message.receipt_handle, None)
            LIVENESS.beat(self._loop)  # a full hand-over waits on handlers: they progress
            HOP_DURATION.labels(self.name, outcome).observe(time.perf_counter() - began)
            # What the handler bound (job_id, trace_id...) was about this message only.
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**context)

    def _count_dlq_move(self, message: ReceivedMessage, reason: str) -> None:
        """A failure on the last delivery the redrive policy allows: SQS moves the message
        to the DLQ instead of delivering it again."""
        limit = self.max_receive_count
        if limit is not None and message.receive_count >= limit:
            DLQ_MOVES.labels(self.queue_url.rsplit("/", 1)[-1], reason).inc()

    # -- SQS calls -----------------------------------------------------------------------

    async def _receive_batch(self) -> list[ReceivedMessage]:
        with aws_errors(self._aws, resource=self.queue_url):
            response = await self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=MAX_RECEIVE,
                WaitTimeSeconds=self.wait_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        now, wall = anyio.current_time(), time.time()
        batch = []
        for raw in response.get("Messages", []):
            message = ReceivedMessage(
                message_id=raw["MessageId"],
                receipt_handle=raw["ReceiptHandle"],
                body=raw.get("Body", ""),
                receive_count=int(raw.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                received_at=now,
                received_unix=wall,
            )
            self._held[message.receipt_handle] = message
            batch.append(message)
        self.stats.received += len(batch)
        return batch

    async def _delete_batch(self, batch: list[ReceivedMessage]) -> list[BaseException | None]:
        entries: list[Any] = [
            {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(batch)
        ]
        with aws_errors(self._aws, resource=self.queue_url):
            response = await self._sqs.delete_message_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
        results: list[BaseException | None] = [None] * len(batch)
        for failed in response.get("Failed", []):
            results[int(failed["Id"])] = AwsError(
                f"DeleteMessageBatch refused an entry: {failed.get('Message', '')}",
                code=failed.get("Code", ""),
            )
        return results

    async def _set_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        try:
            with aws_errors(self._aws, resource=self.queue_url):
                await self._sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message.receipt_handle,
                    VisibilityTimeout=seconds,
                )
        except AwsError as exc:  # it comes back anyway when its visibility runs out
            self._log.warning("visibility change failed", error=str(exc))

    async def _give_back(self, messages: list[ReceivedMessage]) -> None:
        """Visibility 0: another worker may take these at once."""
        for start in range(0, len(messages), MAX_RECEIVE):
            chunk = messages[start : start + MAX_RECEIVE]
            await self._change_batch(chunk, 0)
            for message in chunk:
                self._held.pop(message.receipt_handle, None)
            self.stats.given_back += len(chunk)

    async def _change_batch(self, messages: list[ReceivedMessage], seconds: int) -> None:
        entries: list[Any] = [
            {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
            for i, m in enumerate(messages)
        ]
        try:
            with aws_errors(self._aws, resource=self.queue_url):
                await self._sqs.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
        except AwsError as exc:
            self._log.warning("visibility change failed", error=str(exc), count=len(messages))

    async def _read_queue_attributes(self) -> None:
        """The queue's visibility timeout (unless given) and its redrive policy's limit."""
        try:
            with aws_errors(self._aws, resource=self.queue_url):
                response = await self._sqs.get_queue_attributes(
                    QueueUrl=self.queue_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
                )
        except AwsError:
            if self.visibility_timeout_s is None:  # needed; the rest is only for metrics
                raise
            return
        attributes = response.get("Attributes", {})
        if self.visibility_timeout_s is None:
            self.visibility_timeout_s = int(attributes["VisibilityTimeout"])
        try:
            redrive = json.loads(attributes.get("RedrivePolicy", "null")) or {}
            self.max_receive_count = int(redrive["maxReceiveCount"])
        except (ValueError, TypeError, KeyError):
            self.max_receive_count = None

    async def _heartbeat(self) -> None:
        """Extend every held message before its visibility runs out (long jobs, queued work)."""
        timeout = self.visibility_timeout_s or 30
        interval = max(timeout / 3, 1.0)
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            due = [m for m in list(self._held.values()) if now - m.received_at >= interval]
            for start in range(0, len(due), MAX_RECEIVE):
                chunk = due[start : start + MAX_RECEIVE]
                await self._change_batch(chunk, timeout)
                for message in chunk:
                    message.received_at = now
