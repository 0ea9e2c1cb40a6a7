"""Recording results: once per job, batched across messages into one transaction.

A result for a job is recorded once: the ``results`` row has the job id as its key (a
conflict means "already done") and the job's status only moves from a non-final state to a
final one. A finished job is announced with ``pg_notify('job_finished', <job id>)``, which the
ingest API's ``?wait=`` long-poll listens for; PostgreSQL delivers it at commit. Each job
made final here is measured end to end, from its acceptance (``jobs.created_at``) to the
commit (``conveyor_job_end_to_end_duration_seconds``, :mod:`services.persist.metrics`).

``job.started`` marks (queued -> running) are batched the same way, one statement per batch
(:class:`StartedWriter`).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import asyncpg
from anyio.abc import TaskGroup

from services.persist.metrics import JOB_DURATION
from shared.batching import Batcher
from shared.db import Connection, transaction, with_connection
from shared.messages import JobResult, JobStarted, JobStatus, PoisonMessage
from shared.metrics import seconds_since

__all__ = [
    "Recorded",
    "ResultWriter",
    "StartRequest",
    "StartedWriter",
    "WriteRequest",
    "mark_running",
    "mark_running_many",
]


class Recorded(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    """The job already had this final state: nothing was written (a redelivery)."""
    DISCARDED = "discarded"
    """The job ended otherwise (cancelled): this result is dropped and not notified."""


@dataclass(frozen=True)
class WriteRequest:
    job_id: uuid.UUID
    tenant: str
    result: JobResult


_FINAL = [s.value for s in JobStatus if s.final]


class ResultWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_items: int = 64,
        max_wait_s: float = 0.01,
        models: Collection[str] | None = None,
    ) -> None:
        """``models``: the model names the metrics may use as labels (others are ``other``);
        None keeps every name."""
        self._pool = pool
        self._models = None if models is None else frozenset(models)
        self._batcher: Batcher[WriteRequest, Recorded] = Batcher(
            self._write, max_items=max_items, max_wait_s=max_wait_s, concurrency=2
        )

    def start(self, tg: TaskGroup) -> None:
        self._batcher.start(tg)

    async def record(self, request: WriteRequest) -> Recorded:
        return await self._batcher.submit(request)

    async def _write(self, batch: list[WriteRequest]) -> list[Recorded | BaseException]:
        accepted: dict[uuid.UUID, datetime.datetime] = {}
        # One transaction for the batch, retried whole across a database restart.
        outcomes = await transaction(self._pool, lambda conn: self._write_in(conn, batch, accepted))
        committed = datetime.datetime.now(datetime.UTC)
        for request, outcome in zip(batch, outcomes, strict=True):
            created = accepted.get(request.job_id)
            if outcome is Recorded.NEW and created is not None:
                model = request.result.model
                if self._models is not None and model not in self._models:
                    model = "other"
                JOB_DURATION.labels(model, request.result.status.value).observe(
                    seconds_since(created, committed)
                )
        return outcomes

    async def _write_in(
        self,
        conn: Connection,
        batch: list[WriteRequest],
        accepted: dict[uuid.UUID, datetime.datetime],
    ) -> list[Recorded | BaseException]:
        """``accepted`` gets each job's acceptance time (for the end-to-end figure)."""
        outcomes: list[Recorded | BaseException] = []
        rows = await conn.fetch(
            "SELECT id, tenant_id, status, created_at FROM jobs "
            "WHERE id = ANY($1::uuid[]) FOR UPDATE",
            [r.job_id for r in batch],
        )
        accepted.update((row["id"], row["created_at"]) for row in rows)
        jobs = {row["id"]: row for row in rows}
        fresh: list[WriteRequest] = []
        for request in batch:
            job = jobs.get(request.job_id)
            if job is None or job["tenant_id"] != request.tenant:
                outcomes.append(PoisonMessage(f"result for unknown job {request.job_id}"))
            elif job["status"] == request.result.status.value or request.job_id in {
                r.job_id for r in fresh
            }:
                outcomes.append(Recorded.DUPLICATE)
            elif job["status"] in _FINAL:
                outcomes.append(Recorded.DISCARDED)
            else:
                fresh.append(request)
                outcomes.append(Recorded.NEW)
        if fresh:
            await self._finalise(conn, fresh)
        return outcomes

    @staticmethod
    async def _finalise(conn: Connection, fresh: list[WriteRequest]) -> None:
        rows = []
        for r in fresh:
            if r.result.status != JobStatus.SUCCEEDED:
                continue
            vectors = r.result.packed()  # stored as they came: no number is parsed or printed
            rows.append(
                (
                    r.job_id,
                    None if vectors is None else vectors.data,
                    None if vectors is None else vectors.dim,
                    r.result.model_version,
                    r.result.batch_size,
                )
            )
        await conn.executemany(
            """
            INSERT INTO results (job_id, vectors, dimensions, model_version, batch_size)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (job_id) DO NOTHING
            """,
            rows,
        )
        await conn.executemany(
            """
            UPDATE jobs
               SET status = $2, error = $3, model_version = $4,
                   started_at = COALESCE(started_at, $5), finished_at = $6,
                   updated_at = now(), version = version + 1
             WHERE id = $1 AND status <> ALL($7::text[])
            """,
            [
                (
                    r.job_id,
                    r.result.status.value,
                    r.result.error,
                    r.result.model_version,
                    r.result.started_at,
                    r.result.finished_at,
                    _FINAL,
                )
                for r in fresh
            ],
        )
        await conn.executemany(
            "SELECT pg_notify('job_finished', $1::text)", [(str(r.job_id),) for r in fresh]
        )


@dataclass(frozen=True)
class StartRequest:
    job_id: uuid.UUID
    tenant: str
    started: JobStarted


# One statement for a batch: queued -> running; a job already running or final (messages race,
# a redelivery) or another tenant's is left alone.
_MARK_RUNNING = """
UPDATE jobs AS j
   SET status = 'running', started_at = v.started_at, model_version = v.model_version
  FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])
       AS v(id, tenant_id, started_at, model_version)
 WHERE j.id = v.id AND j.tenant_id = v.tenant_id AND j.status = 'queued'
RETURNING j.id
"""


async def mark_running_many(pool: asyncpg.Pool, requests: list[StartRequest]) -> list[bool]:
    """Each request's job moved queued -> running (True), or was not queued (False)."""

    async def update(conn: Connection) -> set[uuid.UUID]:
        rows = await conn.fetch(
            _MARK_RUNNING,
            [r.job_id for r in requests],
            [r.tenant for r in requests],
            [r.started.started_at for r in requests],
            [r.started.model_version for r in requests],
        )
        return {row["id"] for row in rows}

    # A single statement is its own transaction: retried whole, it changes nothing twice.
    moved = await with_connection(pool, update)
    return [r.job_id in moved for r in requests]


async def mark_running(
    pool: asyncpg.Pool, job_id: uuid.UUID, tenant: str, started: JobStarted
) -> bool:
    """queued -> running for one job; a no-op for a job already running or final."""
    return (await mark_running_many(pool, [StartRequest(job_id, tenant, started)]))[0]


class StartedWriter:
    """``job.started`` marks batched across concurrent handlers, one statement per batch."""

    def __init__(self, pool: asyncpg.Pool, *, max_items: int = 64, max_wait_s: float = 0.01):
        self._pool = pool
        self._batcher: Batcher[StartRequest, bool] = Batcher(
            self._write, max_items=max_items, max_wait_s=max_wait_s, concurrency=2
        )

    def start(self, tg: TaskGroup) -> None:
        self._batcher.start(tg)

    async def mark(self, request: StartRequest) -> bool:
        return await self._batcher.submit(request)

    async def _write(self, batch: list[StartRequest]) -> list[bool | BaseException]:
        return list(await mark_running_many(self._pool, batch))
