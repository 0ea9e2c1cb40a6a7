"""The ingest service's queries on the ``jobs`` and ``results`` tables.

Every read is scoped to the caller's tenant (``WHERE id = $1 AND tenant_id = $2``): another
tenant's job is indistinguishable from a job that does not exist.
"""

from __future__ import annotations

import datetime
import uuid
from enum import StrEnum

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ConfigDict

from shared import vectors
from shared.messages import JobStatus

__all__ = [
    "Conn",
    "EncodingFormat",
    "JobOutputs",
    "JobView",
    "cancel_job",
    "get_job",
    "insert_job",
]

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one borrowed from a pool."""


class EncodingFormat(StrEnum):
    """How ``GET /v1/jobs/{job_id}`` writes the vectors (``encoding_format``)."""

    FLOAT = "float"
    """Each vector a list of numbers."""
    BASE64 = "base64"
    """Each vector the base64 of its float32 values, little-endian (as OpenAI's embeddings
    API does): about a quarter of the size, and nothing to parse
    (``numpy.frombuffer(base64.b64decode(text), "<f4")``)."""


class JobOutputs(BaseModel):
    """What a succeeded job produced: one vector per input, in input order."""

    model_config = ConfigDict(frozen=True)

    outputs: list[list[float]] | list[str]
    """Numbers, or base64 text with ``encoding_format=base64``."""


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
    queue: str,
    message: str,
) -> bool:
    """Record a newly accepted job as ``queued`` with its message in the outbox
    (:mod:`services.ingest.outbox`), both in one statement; False if a job of that id is
    already there (a retried statement whose first attempt committed), and then no message is
    added either.

    One statement is atomic on its own: without an idempotency key a submission needs no
    transaction around it, which saves two round trips (BEGIN, COMMIT) per job."""
    inserted = await conn.fetchval(
        """
        WITH job AS (
            INSERT INTO jobs (id, tenant_id, model, status, inputs_count, callback_url)
            VALUES ($1, $2, $3, 'queued', $4, $5)
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        )
        INSERT INTO outbox (job_id, queue, model, body)
        SELECT id, $6, $3, $7 FROM job
        RETURNING true
        """,
        job_id,
        tenant,
        model,
        inputs_count,
        callback_url,
        queue,
        message,
    )
    return inserted is not None


_GET_JOB = """
SELECT j.id, j.status, j.model, coalesce(j.model_version, r.model_version) AS model_version,
       j.inputs_count, j.created_at, j.started_at, j.finished_at, j.error,
       r.vectors, r.dimensions, r.outputs::text AS outputs
FROM jobs j
LEFT JOIN results r ON r.job_id = j.id
WHERE j.id = $1 AND j.tenant_id = $2
"""


async def get_job(
    conn: Conn,
    job_id: uuid.UUID,
    tenant: str,
    encoding: EncodingFormat = EncodingFormat.FLOAT,
) -> JobView | None:
    """The job ``job_id`` of ``tenant`` with its outputs, or None (also for another tenant's)."""
    row = await conn.fetchrow(_GET_JOB, job_id, tenant)
    if row is None:
        return None
    stored = vectors.stored(row["vectors"], row["dimensions"], row["outputs"])
    outputs: list[list[float]] | list[str] | None = None
    if stored is not None:
        outputs = (
            vectors.rows_base64(*stored)
            if encoding is EncodingFormat.BASE64
            else vectors.unpack(*stored)
        )
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


async def cancel_job(conn: Conn, job_id: uuid.UUID, tenant: str) -> bool:
    """Cancel ``tenant``'s job if it is queued or running; True if it was.

    Like every finalisation it announces itself on ``job_finished``; its message, if still
    unsent and not being sent right now, is dropped from the outbox. A result that arrives
    later is discarded by persist (the job is final).
    """
    row = await conn.fetchrow(
        """
        WITH cancelled AS (
            UPDATE jobs SET status = 'cancelled', finished_at = now()
            WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running')
            RETURNING id
        )
        SELECT id, pg_notify('job_finished', id::text) FROM cancelled
        """,
        job_id,
        tenant,
    )
    if row is None:
        return False
    await conn.execute(
        """
        DELETE FROM outbox WHERE id IN (
            SELECT id FROM outbox WHERE job_id = $1 AND sent_at IS NULL FOR UPDATE SKIP LOCKED
        )
        """,
        job_id,
    )
    return True
