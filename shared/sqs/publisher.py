"""Publishing to one SQS queue, batched across concurrent callers.

``await publisher.publish(body)`` from any number of tasks; behind it, messages are grouped
into ``SendMessageBatch`` calls of at most 10 entries and 1 MiB in total (SQS limits), waiting
at most a few milliseconds for company. Each caller learns the fate of its own message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyio.abc import TaskGroup

from shared.aws.errors import aws_errors
from shared.batching import Batcher
from shared.config import AwsSettings
from shared.errors import AwsError

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

__all__ = ["MAX_BATCH_BYTES", "MAX_MESSAGE_BYTES", "Outgoing", "Publisher"]

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_ENTRIES = 10


@dataclass(frozen=True)
class Outgoing:
    body: str
    delay_s: int = 0

    @property
    def size(self) -> int:
        return len(self.body.encode())


class Publisher:
    def __init__(
        self,
        sqs: SQSClient,
        aws: AwsSettings,
        queue_url: str,
        *,
        max_wait_s: float = 0.005,
        concurrency: int = 4,
    ) -> None:
        self._sqs = sqs
        self._aws = aws
        self.queue_url = queue_url
        self._batcher: Batcher[Outgoing, str] = Batcher(
            self._send_batch,
            max_items=MAX_BATCH_ENTRIES,
            max_cost=MAX_BATCH_BYTES,
            cost=lambda m: m.size,
            max_wait_s=max_wait_s,
            concurrency=concurrency,
        )

    def start(self, tg: TaskGroup) -> None:
        self._batcher.start(tg)

    async def publish(self, body: str, *, delay_s: int = 0) -> str:
        """Send one message; returns its SQS message id. Raises AwsError if it was refused."""
        message = Outgoing(body, delay_s)
        if message.size > MAX_MESSAGE_BYTES:
            raise ValueError(
                f"message of {message.size} bytes exceeds the SQS limit of {MAX_MESSAGE_BYTES}; "
                "large payloads must go through the claim-check bucket"
            )
        return await self._batcher.submit(message)

    async def _send_batch(self, batch: list[Outgoing]) -> list[str | BaseException]:
        entries: list[Any] = [
            {"Id": str(i), "MessageBody": m.body, "DelaySeconds": m.delay_s}
            for i, m in enumerate(batch)
        ]
        with aws_errors(self._aws, resource=self.queue_url):
            response = await self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
        results: list[str | BaseException] = [
            AwsError("SendMessageBatch gave no answer for this entry") for _ in batch
        ]
        for ok in response.get("Successful", []):
            results[int(ok["Id"])] = ok["MessageId"]
        for failed in response.get("Failed", []):
            results[int(failed["Id"])] = AwsError(
                f"SendMessageBatch refused an entry: {failed.get('Message', '')}",
                operation="SendMessageBatch",
                code=failed.get("Code", ""),
            )
        return results
