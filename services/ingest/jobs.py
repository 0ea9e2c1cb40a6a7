"""The ingest service's queries on the ``jobs`` and ``results`` tables.

Every read is scoped to the caller's tenant (``WHERE id = $1 AND tenant_id = $2``): another
tenant's job is indistinguishable from a job that does not exist.
"""

from __future__ import annotations

import datetime
import json
import uuid

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ConfigDict

from shared.messages import JobStatus

__all__ = ["Conn", "JobOutputs", "JobView", "get_job", "insert_job", "mark_enqueue_failed"]

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one borrowed from a pool."""


class JobOutputs(BaseModel):
    """What a succeeded job produced: one vector per input, in input order."""

    model_config = ConfigDict(frozen=True)

    outputs: list[list[float]]


class JobView(BaseModel):
    """A job as its owner sees it (the response of ``GET /v1/jobs/{job_id}``)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    id: uuid.UUID
    status: JobStatus
    model: str
    model_version: str | None
    inputs_count: int
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    error: str | None
    result: JobOutputs | None
    """The outputs once the job succeeded; null before, and for a failed job."""


async def insert_job(
    conn: Conn,
    *,
    job_id: uuid.UUID,
    tenant: str,
    model: str,
    inputs_count: int,
    callback_url: str | None,
) -> None:
    """Record a newly accepted job as ``queued``."""
    await conn.execute(
        """
        INSERT INTO jobs (id, tenant_id, model, status, inputs_count, callback_url)
        VALUES ($1, $2, $3, 'queued', $4, $5)
        """,
        job_id,
        tenant,
        model,
        inputs_count,
        callback_url,
    )


_GET_JOB = """
SELECT j.id, j.status, j.model, coalesce(j.model_version, r.model_version) AS model_version,
       j.inputs_count, j.created_at, j.started_at, j.finished_at, j.error, r.outputs
FROM jobs j
LEFT JOIN results r ON r.job_id = j.id
WHERE j.id = $1 AND j.tenant_id = $2
"""


async def get_job(conn: Conn, job_id: uuid.UUID, tenant: str) -> JobView | None:
    """The job ``job_id`` of ``tenant`` with its outputs, or None (also for another tenant's)."""
    row = await conn.fetchrow(_GET_JOB, job_id, tenant)
    if row is None:
        return None
    outputs = row["outputs"]
    if isinstance(outputs, str):  # jsonb arrives as text unless the pool set a codec
        outputs = json.loads(outputs)
    return JobView(
        id=row["id"],
        status=JobStatus(row["status"]),
        model=row["model"],
        model_version=row["model_version"],
        inputs_count=row["inputs_count"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        result=None if outputs is None else JobOutputs(outputs=outputs),
    )


async def mark_enqueue_failed(conn: Conn, job_id: uuid.UUID, error: str) -> bool:
    """Fail a job whose request message could not be sent; True if it was still queued.

    Like every finalisation, it announces itself on the ``job_finished`` channel.
    """
    row = await conn.fetchrow(
        """
        WITH failed AS (
            UPDATE jobs
            SET status = 'failed', error = $2, finished_at = now(), updated_at = now(),
                version = version + 1
            WHERE id = $1 AND status = 'queued'
            RETURNING id
        )
        SELECT id, pg_notify('job_finished', id::text) FROM failed
        """,
        job_id,
        error,
    )
    return row is not None
