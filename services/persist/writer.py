"""Recording results: once per job, batched across messages into one transaction.

A result for a job is recorded once: the ``results`` row has the job id as its key (a
conflict means "already done") and the job's status only moves from a non-final state to a
final one. A finished job is announced with ``pg_notify('job_finished', <job id>)``, which the
ingest API's ``?wait=`` long-poll listens for; PostgreSQL delivers it at commit.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from enum import StrEnum

import asyncpg
from anyio.abc import TaskGroup

from shared.batching import Batcher
from shared.db import Connection
from shared.messages import JobResult, JobStatus, PoisonMessage

__all__ = ["Recorded", "ResultWriter", "WriteRequest"]


class Recorded(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    """The job already had its final state: nothing was written (a redelivery)."""


@dataclass(frozen=True)
class WriteRequest:
    job_id: uuid.UUID
    tenant: str
    result: JobResult


_FINAL = [s.value for s in JobStatus if s.final]


class ResultWriter:
    def __init__(
        self, pool: asyncpg.Pool, *, max_items: int = 64, max_wait_s: float = 0.01
    ) -> None:
        self._pool = pool
        self._batcher: Batcher[WriteRequest, Recorded] = Batcher(
            self._write, max_items=max_items, max_wait_s=max_wait_s, concurrency=2
        )

    def start(self, tg: TaskGroup) -> None:
        self._batcher.start(tg)

    async def record(self, request: WriteRequest) -> Recorded:
        return await self._batcher.submit(request)

    async def _write(self, batch: list[WriteRequest]) -> list[Recorded | BaseException]:
        outcomes: list[Recorded | BaseException] = []
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, tenant_id, status FROM jobs WHERE id = ANY($1::uuid[]) FOR UPDATE",
                [r.job_id for r in batch],
            )
            jobs = {row["id"]: row for row in rows}
            fresh: list[WriteRequest] = []
            for request in batch:
                job = jobs.get(request.job_id)
                if job is None or job["tenant_id"] != request.tenant:
                    outcomes.append(PoisonMessage(f"result for unknown job {request.job_id}"))
                elif job["status"] in _FINAL or request.job_id in {r.job_id for r in fresh}:
                    outcomes.append(Recorded.DUPLICATE)
                else:
                    fresh.append(request)
                    outcomes.append(Recorded.NEW)
            if fresh:
                await self._finalise(conn, fresh)
        return outcomes

    @staticmethod
    async def _finalise(conn: Connection, fresh: list[WriteRequest]) -> None:
        succeeded = [r for r in fresh if r.result.status == JobStatus.SUCCEEDED]
        await conn.executemany(
            """
            INSERT INTO results (job_id, outputs, model_version, batch_size)
            VALUES ($1, $2::jsonb, $3, $4)
            ON CONFLICT (job_id) DO NOTHING
            """,
            [
                (
                    r.job_id,
                    json.dumps(r.result.outputs),
                    r.result.model_version,
                    r.result.batch_size,
                )
                for r in succeeded
            ],
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
