"""Dead-letter queues: how deep each one is, what lies in one, and moving messages back.

    depths = await dlq_depths(clients, topology)
    target = await resolve_dlq(clients, topology, "results")   # or "conveyor-results"
    sample = await peek(clients, target.dlq_url, limit=10)      # nothing is consumed
    result = await redrive(clients, dlq_url=target.dlq_url, source_url=target.source_url,
                           dlq_arn=target.dlq_arn, max_messages=100)

:func:`redrive` asks SQS to move the messages (``StartMessageMoveTask``). Where the endpoint
does not implement that call (moto), it moves them itself: receive from the DLQ, send the same
body and message attributes to the source with ``SendMessageBatch``, then delete from the DLQ
exactly the entries whose send succeeded. A message is never deleted before its copy is sent,
so a crash between the two can only *duplicate* it (the copy in the source, the original back
in the DLQ when its visibility runs out); every consumer is idempotent, so that is safe.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import aioboto3
import anyio
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from shared.aws.clients import AwsClients
from shared.aws.errors import aws_errors, translate
from shared.aws.queues import resolve_queue_url
from shared.config import AwsSettings
from shared.errors import AwsError, TopologyError
from shared.messages import PoisonMessage, decode_envelope
from shared.sqs.publisher import MAX_BATCH_BYTES
from shared.telemetry import get_logger
from shared.topology import QueueSpec, Topology

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

__all__ = [
    "DeadMessage",
    "DlqDepth",
    "DlqTarget",
    "RedriveMethod",
    "RedriveResult",
    "dlq_depth",
    "dlq_depths",
    "find_queue",
    "not_implemented_reason",
    "peek",
    "redrive",
    "resolve_dlq",
]

MAX_BATCH: Final = 10
PEEK_HOLD_S: Final = 20
"""How long peeked messages are hidden at most; they are given back (visibility 0) at once."""
MOVE_HOLD_S: Final = 60
"""Visibility of messages being moved by hand: longer than one send plus one delete."""
WAIT_S: Final = 1
"""Long poll of one receive: it asks every SQS host, so an empty answer means an empty queue."""
POLL_S: Final = 1.0
"""How often a running StartMessageMoveTask is checked."""
DECODABLE_REASON: Final = "exceeded maxReceiveCount (handler kept failing)"

_log = get_logger(__name__)


# -- which queue ---------------------------------------------------------------------------


def find_queue(topology: Topology, name: str) -> QueueSpec:
    """The queue called ``name``: its logical key (``results``, ``infer-<model>``,
    ``notify``), its physical name (``conveyor-results``), or either of its DLQ's names."""
    for spec in topology.queues:
        if name in (spec.key, spec.name, spec.dlq_name, f"{spec.key}-dlq"):
            return spec
    known = ", ".join(f"{q.key} ({q.name})" for q in topology.queues)
    raise TopologyError(f"no queue {name!r} in stack {topology.prefix!r}; known queues: {known}")


@dataclass(frozen=True)
class DlqTarget:
    """A source queue and its DLQ, resolved at the endpoint."""

    spec: QueueSpec
    source_url: str
    dlq_url: str
    dlq_arn: str


async def resolve_dlq(clients: AwsClients, topology: Topology, name: str) -> DlqTarget:
    """Find ``name`` in the topology (see :func:`find_queue`) and resolve both queues."""
    spec = find_queue(topology, name)
    sqs, aws = await clients.sqs(), clients.settings
    source_url = await resolve_queue_url(sqs, aws, spec.name)
    dlq_url = await resolve_queue_url(sqs, aws, spec.dlq_name)
    with aws_errors(aws, resource=spec.dlq_name):
        response = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    return DlqTarget(spec, source_url, dlq_url, response["Attributes"]["QueueArn"])


# -- depths --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqDepth:
    key: str
    source: str
    dlq: str
    dlq_messages: int
    """Visible messages in the DLQ (approximate, as SQS counts)."""
    dlq_in_flight: int
    """DLQ messages received and not yet given back (someone is peeking or redriving)."""
    source_messages: int
    """Visible messages in the source queue, for context."""


async def dlq_depths(clients: AwsClients, topology: Topology) -> list[DlqDepth]:
    """How many messages wait in every DLQ of the topology (and in each source)."""
    return [await dlq_depth(clients, spec) for spec in topology.queues]


async def dlq_depth(clients: AwsClients, spec: QueueSpec) -> DlqDepth:
    """How many messages wait in one queue's DLQ (and in the queue)."""
    sqs, aws = await clients.sqs(), clients.settings
    source = await _counts(sqs, aws, await resolve_queue_url(sqs, aws, spec.name), spec.name)
    dlq_url = await resolve_queue_url(sqs, aws, spec.dlq_name)
    dlq = await _counts(sqs, aws, dlq_url, spec.dlq_name)
    return DlqDepth(spec.key, spec.name, spec.dlq_name, dlq[0], dlq[1], source[0])


async def _counts(sqs: SQSClient, aws: AwsSettings, url: str, name: str) -> tuple[int, int]:
    """(visible, in flight) messages of one queue."""
    with aws_errors(aws, resource=name):
        response = await sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    attributes = response.get("Attributes", {})
    return (
        int(attributes.get("ApproximateNumberOfMessages", "0")),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", "0")),
    )


# -- peek ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadMessage:
    message_id: str
    receive_count: int
    """SQS's ApproximateReceiveCount, which includes the peek's own receive."""
    first_received_at: datetime.datetime | None
    sent_at: datetime.datetime | None
    body_size: int
    """In bytes (UTF-8)."""
    reason: str
    """Why it is dead: the decoding error of poison, or the redrive limit and what it was."""
    message_type: str | None
    job_id: str | None
    body: str = field(repr=False)


async def peek(
    clients: AwsClients, dlq_url: str, *, limit: int = 10, hold_s: int = PEEK_HOLD_S
) -> list[DeadMessage]:
    """Up to ``limit`` messages of a DLQ, without consuming them.

    Messages are received with a short visibility timeout and, once the sample is taken, given
    back at once (visibility 0), also on cancellation. At most ``ceil(limit / 10) + 2`` receive
    calls are made, so a sample may hold fewer than ``limit`` messages of a busy queue.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    sqs, aws = await clients.sqs(), clients.settings
    sample: dict[str, DeadMessage] = {}
    held: list[str] = []
    try:
        for _ in range(math.ceil(limit / MAX_BATCH) + 2):
            if len(sample) >= limit:
                break
            with aws_errors(aws, resource=dlq_url):
                response = await sqs.receive_message(
                    QueueUrl=dlq_url,
                    MaxNumberOfMessages=min(MAX_BATCH, limit - len(sample)),
                    VisibilityTimeout=hold_s,
                    WaitTimeSeconds=WAIT_S,
                    MessageSystemAttributeNames=["All"],
                )
            messages = response.get("Messages", [])
            if not messages:
                break
            for raw in messages:
                held.append(raw["ReceiptHandle"])
                if len(sample) < limit:
                    sample.setdefault(raw["MessageId"], _describe(raw))
    finally:
        with anyio.CancelScope(shield=True):
            await _give_back(sqs, aws, dlq_url, held)
    return list(sample.values())


def _describe(raw: MessageTypeDef) -> DeadMessage:
    body = raw.get("Body", "")
    attributes = raw.get("Attributes", {})
    message_type = job_id = None
    try:
        envelope = decode_envelope(body)
    except PoisonMessage as exc:
        reason = str(exc)
    else:
        message_type, job_id = envelope.type.value, str(envelope.job_id)
        reason = f"{DECODABLE_REASON}: {message_type} job {job_id}"
    return DeadMessage(
        message_id=raw["MessageId"],
        receive_count=int(attributes.get("ApproximateReceiveCount", "0")),
        first_received_at=_timestamp(attributes.get("ApproximateFirstReceiveTimestamp")),
        sent_at=_timestamp(attributes.get("SentTimestamp")),
        body_size=len(body.encode()),
        reason=reason,
        message_type=message_type,
        job_id=job_id,
        body=body,
    )


def _timestamp(millis: str | None) -> datetime.datetime | None:
    if not millis:
        return None
    return datetime.datetime.fromtimestamp(int(millis) / 1000, datetime.UTC)


async def _give_back(sqs: SQSClient, aws: AwsSettings, url: str, handles: Sequence[str]) -> None:
    """Visibility 0 for ``handles``; a failure only means they come back a little later."""
    for start in range(0, len(handles), MAX_BATCH):
        entries: list[Any] = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for i, handle in enumerate(handles[start : start + MAX_BATCH])
        ]
        try:
            with aws_errors(aws, resource=url):
                await sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        except AwsError as exc:
            _log.warning("giving messages back failed", queue=url, error=str(exc))


# -- redrive -------------------------------------------------------------------------------


class RedriveMethod(StrEnum):
    MOVE_TASK = "message-move-task"
    """SQS moved the messages itself (``StartMessageMoveTask``)."""
    RECEIVE_SEND_DELETE = "receive-send-delete"
    """Moved by hand, where the endpoint lacks the move task (moto)."""


@dataclass(frozen=True)
class RedriveResult:
    method: RedriveMethod
    moved: int
    """Messages sent back to the source (for a move task: SQS's approximate count)."""
    failed: int = 0
    """Messages the source refused; they stay in the DLQ."""
    undeleted: int = 0
    """Sent to the source but not deleted from the DLQ: they reappear there (a later redrive
    sends them again, which idempotent consumers absorb)."""
    complete: bool = True
    """False when the time limit (or an error) stopped the move before the DLQ was drained or
    ``max_messages`` reached; a move task still running carries on by itself."""
    fallback_reason: str | None = None
    """Why the move task was not used."""
    error: str | None = None
    """What stopped the move early, or why the move task failed."""


async def redrive(
    clients: AwsClients,
    *,
    dlq_url: str,
    source_url: str,
    dlq_arn: str,
    max_messages: int,
    batch: int = MAX_BATCH,
    timeout_s: float = 300.0,
) -> RedriveResult:
    """Move up to ``max_messages`` messages from a DLQ back to its source, within ``timeout_s``.

    First ``StartMessageMoveTask`` (to the queue each message came from: in this topology, the
    DLQ's only source), when the DLQ holds no more than ``max_messages`` (a task cannot be
    bounded). Where the endpoint does not implement it, or it would move too many, messages
    move by hand in batches of ``batch``: receive, ``SendMessageBatch`` (same body, same message
    attributes) to ``source_url``, then ``DeleteMessageBatch`` of only the entries that were
    sent. Nothing is ever lost: a crash between send and delete duplicates a message, and
    consumers are idempotent. A message the source refuses stays in the DLQ.
    """
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
    sqs, aws = await clients.sqs(), clients.settings
    deadline = anyio.current_time() + timeout_s
    log = _log.bind(dlq=dlq_url.rsplit("/", 1)[-1], max_messages=max_messages)
    visible, _ = await _counts(sqs, aws, dlq_url, dlq_url)
    reason: str | None
    if visible > max_messages:
        reason = f"the DLQ holds {visible} messages, more than max_messages={max_messages}"
    else:
        reason = await _start_move_task(aws, dlq_arn)
    if reason is None:
        log.info("StartMessageMoveTask started")
        result = await _await_move_task(sqs, aws, dlq_arn, deadline)
    else:
        log.info("StartMessageMoveTask not used: receive, send and delete", reason=reason)
        mover = _Mover(sqs, aws, dlq_url, source_url, batch)
        result = await mover.run(max_messages, deadline, reason)
    log.info(
        "redrive done",
        method=result.method.value,
        moved=result.moved,
        failed=result.failed,
        undeleted=result.undeleted,
        complete=result.complete,
    )
    return result


@asynccontextmanager
async def _single_attempt_sqs(aws: AwsSettings) -> AsyncIterator[SQSClient]:
    """An SQS client that does not retry: an emulator answers an unknown call with HTTP 500,
    which the shared clients would retry with backoff for seconds before giving up."""
    session = aioboto3.Session(
        aws_access_key_id=aws.access_key_id,
        aws_secret_access_key=aws.secret_access_key,
        region_name=aws.region,
    )
    config = AioConfig(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 1},
        max_pool_connections=1,
    )
    async with session.client("sqs", endpoint_url=aws.endpoint_url, config=config) as sqs:
        yield sqs


async def _start_move_task(aws: AwsSettings, dlq_arn: str) -> str | None:
    """None when SQS took the move; otherwise why the endpoint cannot run it.

    Other errors (access denied, a task already running...) are raised, translated.
    """
    async with _single_attempt_sqs(aws) as sqs:
        try:
            await sqs.start_message_move_task(SourceArn=dlq_arn)
        except ClientError as exc:
            reason = not_implemented_reason(exc)
            if reason is None:
                raise translate(exc, aws, resource=dlq_arn) from exc
            return reason
    return None


_UNSUPPORTED_CODES: Final = frozenset(
    {
        "NotImplemented",
        "NotImplementedException",
        "InvalidAction",
        "UnknownOperation",
        "UnknownOperationException",
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
    }
)
_XML_CODE: Final = re.compile(r"<Code>([^<]+)</Code>")


def not_implemented_reason(exc: ClientError) -> str | None:
    """Why ``exc`` means "this endpoint cannot run StartMessageMoveTask", or None.

    By error code first; then anything that reads as not implemented, such as an HTML error
    page instead of an AWS error (moto answers an unknown action with a bare HTTP 500).
    """
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if (found := _XML_CODE.search(message)) is not None:
        code = found[1]
    if code in _UNSUPPORTED_CODES:
        return f"the endpoint answered {code}: {message[:200]}"
    text = message.lower()
    if status == 501 or "not implemented" in text or "not been implemented" in text:
        return f"the endpoint does not implement StartMessageMoveTask (HTTP {status}, {code})"
    if text.lstrip().startswith(("<!doctype html", "<html")):
        return (
            f"the endpoint answered HTTP {status} with an HTML page instead of an AWS error: "
            "it does not implement StartMessageMoveTask"
        )
    return None


async def _await_move_task(
    sqs: SQSClient, aws: AwsSettings, dlq_arn: str, deadline: float, poll_s: float = POLL_S
) -> RedriveResult:
    """Follow the newest move task of the DLQ until it ends or the time is up."""
    while True:
        with aws_errors(aws, resource=dlq_arn):
            response = await sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=1)
        tasks = response.get("Results", [])
        task = tasks[0] if tasks else {}
        status = task.get("Status", "")
        if status == "RUNNING" and anyio.current_time() < deadline:
            await anyio.sleep(poll_s)
            continue
        moved = task.get("ApproximateNumberOfMessagesMoved", 0)
        to_move = task.get("ApproximateNumberOfMessagesToMove", moved)
        method = RedriveMethod.MOVE_TASK
        if status == "COMPLETED":
            return RedriveResult(method, moved=moved)
        if status == "RUNNING":
            return RedriveResult(
                method,
                moved=moved,
                complete=False,
                error=f"the move task is still running ({moved} of {to_move} moved) and "
                "carries on by itself",
            )
        return RedriveResult(
            method,
            moved=moved,
            failed=max(0, to_move - moved),
            complete=False,
            error=task.get("FailureReason") or f"the move task ended {status or 'unseen'}",
        )


class _Mover:
    """The hand-made move: receive, send to the source, delete what was sent."""

    def __init__(
        self, sqs: SQSClient, aws: AwsSettings, dlq_url: str, source_url: str, batch: int
    ) -> None:
        self._sqs, self._aws = sqs, aws
        self._dlq_url, self._source_url, self._batch = dlq_url, source_url, batch
        self.moved = self.failed = self.undeleted = 0
        self._sent: set[str] = set()
        """Message ids already sent (a failed delete can make one reappear)."""
        self._refused: list[str] = []
        """Receipt handles of messages the source refused: held until the end, then given back,
        so that this run does not receive them again and again."""
        self._refused_ids: set[str] = set()

    async def run(self, max_messages: int, deadline: float, reason: str) -> RedriveResult:
        complete, error = True, None
        try:
            # Bounded in rounds and in time; a round that receives nothing ends the move.
            for _ in range(2 * math.ceil(max_messages / self._batch) + 2):
                want = min(self._batch, max_messages - self.moved - self.failed)
                if want <= 0:
                    break
                if anyio.current_time() >= deadline:
                    complete = False
                    break
                if not await self._round(want):
                    break
        except AwsError as exc:
            if self.moved == self.failed == 0:
                raise
            complete, error = False, str(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await _give_back(self._sqs, self._aws, self._dlq_url, self._refused)
        return RedriveResult(
            RedriveMethod.RECEIVE_SEND_DELETE,
            moved=self.moved,
            failed=self.failed,
            undeleted=self.undeleted,
            complete=complete,
            fallback_reason=reason,
            error=error,
        )

    async def _round(self, want: int) -> bool:
        """One receive and what follows; False when the DLQ had nothing to give."""
        with aws_errors(self._aws, resource=self._dlq_url):
            response = await self._sqs.receive_message(
                QueueUrl=self._dlq_url,
                MaxNumberOfMessages=want,
                VisibilityTimeout=MOVE_HOLD_S,
                WaitTimeSeconds=WAIT_S,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
        messages = response.get("Messages", [])
        if not messages:
            return False
        again = [m for m in messages if m["MessageId"] in self._sent]
        for message in messages:  # refused once in this run (seen again after a long run)
            if message["MessageId"] in self._refused_ids:
                self._refused.append(message["ReceiptHandle"])
        done = self._sent | self._refused_ids
        chunks = _chunks([m for m in messages if m["MessageId"] not in done])
        sent: list[MessageTypeDef] = []
        try:
            for index, chunk in enumerate(chunks):
                try:
                    sent.extend(await self._send(chunk))
                except AwsError:
                    for untried in chunks[index + 1 :]:  # given back at the end, untouched
                        self._refused.extend(m["ReceiptHandle"] for m in untried)
                    raise
        finally:
            # Whatever was sent leaves the DLQ, even when a later send failed or we are
            # cancelled: a copy must not linger in both queues longer than it has to.
            with anyio.CancelScope(shield=True):
                self.undeleted -= len(again)  # counted when their first delete failed
                self.undeleted += await self._delete([*again, *sent])
        return True

    async def _send(self, messages: list[MessageTypeDef]) -> list[MessageTypeDef]:
        """Send copies to the source; returns the messages that were accepted."""
        entries = [_copy(str(i), m) for i, m in enumerate(messages)]
        try:
            with aws_errors(self._aws, resource=self._source_url):
                response = await self._sqs.send_message_batch(
                    QueueUrl=self._source_url, Entries=entries
                )
        except AwsError:
            self._refuse(messages)
            raise
        ok = {int(entry["Id"]) for entry in response.get("Successful", [])}
        for failed in response.get("Failed", []):
            _log.warning(
                "source refused a message", code=failed.get("Code"), error=failed.get("Message")
            )
        self._refuse([m for i, m in enumerate(messages) if i not in ok])
        self.moved += len(ok)
        sent = [m for i, m in enumerate(messages) if i in ok]
        self._sent.update(m["MessageId"] for m in sent)
        return sent

    def _refuse(self, messages: list[MessageTypeDef]) -> None:
        self.failed += len(messages)
        self._refused.extend(m["ReceiptHandle"] for m in messages)
        self._refused_ids.update(m["MessageId"] for m in messages)

    async def _delete(self, messages: list[MessageTypeDef]) -> int:
        """Delete sent messages from the DLQ; returns how many stay there (to reappear)."""
        failures = 0
        for start in range(0, len(messages), MAX_BATCH):
            chunk = messages[start : start + MAX_BATCH]
            entries: list[Any] = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
            ]
            try:
                with aws_errors(self._aws, resource=self._dlq_url):
                    response = await self._sqs.delete_message_batch(
                        QueueUrl=self._dlq_url, Entries=entries
                    )
            except AwsError as exc:
                _log.warning("delete from the DLQ failed", error=str(exc), count=len(chunk))
                failures += len(chunk)
                continue
            failures += len(response.get("Failed", []))
        return failures


def _copy(entry_id: str, message: MessageTypeDef) -> Any:
    """A SendMessageBatch entry with the message's body and message attributes."""
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": message.get("Body", "")}
    attributes = {
        name: {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
        for name, value in message.get("MessageAttributes", {}).items()
    }
    if attributes:
        entry["MessageAttributes"] = attributes
    system = message.get("Attributes", {})
    if "MessageGroupId" in system:  # a FIFO queue
        entry["MessageGroupId"] = system["MessageGroupId"]
        entry["MessageDeduplicationId"] = system.get("MessageDeduplicationId", message["MessageId"])
    return entry


def _size(message: MessageTypeDef) -> int:
    size = len(message.get("Body", "").encode())
    for name, value in message.get("MessageAttributes", {}).items():
        size += len(name.encode()) + len(value.get("DataType", "").encode())
        size += len(value.get("StringValue", "").encode()) + len(value.get("BinaryValue", b""))
    return size


def _chunks(messages: list[MessageTypeDef]) -> list[list[MessageTypeDef]]:
    """Split into SendMessageBatch calls within the 1 MiB request limit."""
    chunks: list[list[MessageTypeDef]] = []
    total = 0
    for message in messages:
        size = _size(message)
        if not chunks or total + size > MAX_BATCH_BYTES:
            chunks.append([])
            total = 0
        chunks[-1].append(message)
        total += size
    return chunks
