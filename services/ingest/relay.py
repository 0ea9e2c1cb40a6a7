"""The outbox relay: sends what ``POST /v1/jobs`` wrote to the ``outbox`` table to SQS.

One pass (:meth:`Relay.relay_once`) is one transaction: claim up to ``batch`` unsent rows
bound for the relay's queues (``FOR UPDATE SKIP LOCKED``, so relays of several replicas share
the work; the queue names carry the stack's prefix, so stacks sharing a database do not take
each other's rows), send each to its queue (concurrently, so the per-queue
:class:`~shared.sqs.Publisher` batches them into ``SendMessageBatch`` calls of 10), mark the
accepted rows sent and count an attempt on the others, commit. Rows SQS refused stay unsent
and the relay backs off (``backoff_s``, doubling up to its maximum); the API keeps accepting
jobs meanwhile, since it never calls SQS.

Delivery is at least once: a crash (or a lost connection) between the send and the commit
sends those rows again. Every consumer downstream dedupes by job id.

Waking up: a relay polls every ``poll_s`` (0.2 s by default), and the API of the same process
wakes it at once after each accepted job (:meth:`Relay.wake`). The poll is what other
replicas' rows and a lost wake-up cost at most; it is one query on a partial index of unsent
rows, and needs no connection held to LISTEN (nor its reconnection logic). Every
``maintenance_every_s`` the relay also runs its maintenance tasks: pruning sent rows older than
the retention, and whatever the service adds (expired idempotency keys).

Each send is a ``relay send`` span in the job's trace (a child of the ``POST /v1/jobs`` span
named by the stored envelope), and the message leaves with that span's ``traceparent`` and
the send's time as ``created_at``: the envelope's timestamp says when it was sent, so infer's
time in queue is the queue's, not the outbox's. Each send is timed as hop ``relay``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import asyncpg
from anyio.abc import TaskStatus
from opentelemetry import trace

from services.ingest import outbox
from services.ingest.metrics import OUTBOX_RELAYED
from services.ingest.outbox import OutboxRow
from shared.claimcheck import ClaimCheck
from shared.db import Connection
from shared.messages import Envelope, JobRequest
from shared.metrics import HOP_DURATION
from shared.sqs import Publisher
from shared.telemetry import get_logger
from shared.tracing import context_from, traceparent, tracer

__all__ = ["Maintenance", "Relay", "RelayPolicy", "Send", "sqs_send"]

Send = Callable[[str, str], Awaitable[object]]
"""Send a message body to a queue: ``await send(queue_name, body)``; raises if refused."""
Maintenance = Callable[[Connection], Awaitable[int]]
"""A periodic clean-up in its own transaction; answers how many rows it removed."""

log = get_logger("ingest")

# Failures of the database that a later pass may cure.
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
MAX_MAINTENANCE_PASSES = 100
"""Batches one maintenance run may remove per task (100 x 1,000 rows a minute)."""


@dataclass(frozen=True)
class RelayPolicy:
    poll_s: float = 0.2
    batch: int = 100
    backoff_s: tuple[float, float] = (0.2, 5.0)
    """The first wait after a failed pass, and the most it doubles to."""
    send_timeout_s: float = 30.0
    """The longest one pass may spend sending (its rows stay locked meanwhile)."""
    retention_s: float = 3600.0
    """How long sent rows are kept (for inspection) before they are pruned."""
    maintenance_every_s: float = 60.0


def sqs_send(publishers: Mapping[str, Publisher], claims: ClaimCheck, threshold_bytes: int) -> Send:
    """Send through the publisher of the queue (``publishers`` by queue name); a body over
    ``threshold_bytes`` is claim-checked (its payload goes to the payloads bucket, the message
    carries the reference)."""

    async def send(queue: str, body: str) -> object:
        envelope = Envelope.model_validate_json(body)
        began = time.perf_counter()
        outcome = "failed"
        with tracer().start_as_current_span(
            "relay send",
            context=context_from(envelope.traceparent),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "conveyor.job_id": str(envelope.job_id),
                "messaging.system": "aws_sqs",
                "messaging.destination.name": queue,
            },
        ):
            try:
                # Sent now, from this span: the receiver's queue wait and parent span.
                envelope = envelope.model_copy(
                    update={
                        "traceparent": traceparent(),
                        "created_at": datetime.datetime.now(datetime.UTC),
                    }
                )
                body = envelope.model_dump_json()
                if len(body.encode()) > threshold_bytes:
                    sealed = await claims.seal(
                        envelope.type,
                        job_id=envelope.job_id,
                        tenant=envelope.tenant,
                        traceparent=envelope.traceparent,
                        payload=JobRequest.model_validate(envelope.payload),
                    )
                    body = sealed.model_dump_json()
                sent = await publishers[queue].publish(body)
                outcome = "sent"
                return sent
            finally:
                HOP_DURATION.labels("relay", outcome).observe(time.perf_counter() - began)

    return send


class Relay:
    """The loop that empties the outbox; :meth:`run` until cancelled or :meth:`shutdown`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        queues: Sequence[str],
        send: Send,
        policy: RelayPolicy | None = None,
        *,
        maintenance: Sequence[Maintenance] = (),
    ) -> None:
        self._pool = pool
        self.queues = list(queues)
        """The names of the queues this relay sends to: it claims their rows only."""
        self._send = send
        self.policy = policy or RelayPolicy()
        self._maintenance: tuple[Maintenance, ...] = (self._prune, *maintenance)
        self._wake = anyio.Event()
        self._stopping = False
        self.stopped = anyio.Event()
        """Set when :meth:`run` has returned (or was cancelled)."""
        self.sent = 0
        """Rows sent and marked sent, since start."""
        self.failed = 0
        """Send attempts that failed (the rows stay unsent), since start."""

    def wake(self) -> None:
        """A row was added: look now rather than at the next poll."""
        self._wake.set()

    def shutdown(self) -> None:
        """Finish the pass in progress, make one last pass, and return from :meth:`run`."""
        self._stopping = True
        self.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await self._loop()
        finally:
            self.stopped.set()
        log.info("outbox relay stopped", sent=self.sent, failed=self.failed)

    async def _loop(self) -> None:
        policy = self.policy
        delay = policy.backoff_s[0]
        next_maintenance = anyio.current_time()
        while True:
            stopping = self._stopping
            self._wake = anyio.Event()
            try:
                sent, failed = await self.relay_once()
            except _DB_ERRORS as exc:
                log.warning("outbox relay: database failed", error=type(exc).__name__)
                sent, failed = 0, 1
            if stopping:
                break
            if anyio.current_time() >= next_maintenance:
                await self.maintain()
                next_maintenance = anyio.current_time() + policy.maintenance_every_s
            if failed:
                await anyio.sleep(delay)
                delay = min(delay * 2, policy.backoff_s[1])
                continue
            delay = policy.backoff_s[0]
            if sent < policy.batch:  # a full batch: more may be waiting, go on at once
                with anyio.move_on_after(policy.poll_s):
                    await self._wake.wait()

    async def relay_once(self) -> tuple[int, int]:
        """One pass in one transaction: (rows sent, rows that failed)."""
        first = ""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await outbox.claim(conn, self.queues, self.policy.batch)
            if not rows:
                return 0, 0
            errors = await self._send_all(rows)
            sent = [row.id for row in rows if row.id not in errors]
            if sent:
                await outbox.mark_sent(conn, sent)
            if errors:
                first = next(iter(errors.values()))
                await outbox.mark_failed(conn, list(errors), first)
        self.sent += len(sent)
        self.failed += len(errors)
        OUTBOX_RELAYED.labels("sent").inc(len(sent))
        OUTBOX_RELAYED.labels("failed").inc(len(errors))
        if errors:
            log.warning(
                "outbox relay: sends failed; they stay in the outbox",
                failed=len(errors),
                sent=len(sent),
                error=first,
            )
        return len(sent), len(errors)

    async def _send_all(self, rows: list[OutboxRow]) -> dict[int, str]:
        """Send every row concurrently; the errors of those that failed, by row id."""
        errors: dict[int, str] = {row.id: "not sent within the pass's time" for row in rows}

        async def one(row: OutboxRow) -> None:
            try:
                await self._send(row.queue, row.body)
            except Exception as exc:  # any failure leaves the row for a later pass
                errors[row.id] = f"{type(exc).__name__}: {exc}"
            else:
                del errors[row.id]

        with anyio.move_on_after(self.policy.send_timeout_s):
            async with anyio.create_task_group() as tg:
                for row in rows:
                    tg.start_soon(one, row)
        return errors

    async def maintain(self) -> None:
        """Run each maintenance task until it has nothing left to remove (bounded), one batch
        per transaction; failures are logged.

        One batch per run would prune at most a batch a minute, fewer rows than a busy stack
        writes: the tables would grow without end under sustained load.
        """
        for task in self._maintenance:
            removed = 0
            try:
                for _ in range(MAX_MAINTENANCE_PASSES):
                    async with self._pool.acquire() as conn, conn.transaction():
                        batch = await task(conn)
                    removed += batch
                    if not batch:
                        break
            except _DB_ERRORS as exc:
                log.warning("outbox relay: maintenance failed", error=type(exc).__name__)
            if removed:
                log.info("outbox relay: pruned", rows=removed)

    async def _prune(self, conn: Connection) -> int:
        return await outbox.prune(conn, self.policy.retention_s)
