"""The delivery log and the notification's data, in PostgreSQL.

``webhook_deliveries`` holds one row per attempt (migration 0002). The log is what makes notify
idempotent over SQS's at-least-once delivery: a notification whose event already succeeded is
skipped, and the attempt count survives redeliveries and restarts.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.notify.delivery import DeliveryOutcome, iso_utc

__all__ = [
    "Connection",
    "already_delivered",
    "attempts_so_far",
    "claim_delivery",
    "job_model",
    "load_notification_data",
    "record_attempt",
    "release_delivery",
]

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A plain connection or one acquired from a pool."""


async def record_attempt(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    webhook_id: str,
    event: str,
    attempt: int,
    url: str,
    outcome: DeliveryOutcome,
) -> None:
    """Log one delivery attempt and what it came to."""
    await conn.execute(
        """
        INSERT INTO webhook_deliveries
            (job_id, webhook_id, event, attempt, url, status_code, error, succeeded, duration_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        """,
        job_id,
        webhook_id,
        event,
        attempt,
        url,
        outcome.status_code,
        outcome.error,
        outcome.succeeded,
        outcome.duration_ms,
    )


async def attempts_so_far(conn: Connection, job_id: uuid.UUID, event: str) -> int:
    """How many attempts the log holds for this job's event (0 when none)."""
    count = await conn.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE job_id = $1 AND event = $2",
        job_id,
        event,
    )
    return int(count)


async def already_delivered(conn: Connection, job_id: uuid.UUID, event: str) -> bool:
    """Whether an attempt for this job's event succeeded: a duplicate message is then skipped."""
    found = await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM webhook_deliveries WHERE job_id = $1 AND event = $2 AND succeeded
        )
        """,
        job_id,
        event,
    )
    return bool(found)


async def job_model(conn: Connection, job_id: uuid.UUID) -> str | None:
    """The job's model (for its log lines), or None when there is no such job."""
    model: str | None = await conn.fetchval("SELECT model FROM jobs WHERE id = $1", job_id)
    return model


async def load_notification_data(conn: Connection, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The webhook's ``data`` object for a job, JSON-ready; None when the job does not exist.

    Every key is always present. ``outputs`` is null unless the job succeeded; ``error``,
    ``finished_at`` and ``model_version`` are null when unknown.
    """
    row = await conn.fetchrow(
        """
        SELECT j.id, j.status, j.model, j.error, j.created_at, j.finished_at,
               coalesce(r.model_version, j.model_version) AS model_version,
               r.outputs::text AS outputs
        FROM jobs AS j
        LEFT JOIN results AS r ON r.job_id = j.id
        WHERE j.id = $1
        """,
        job_id,
    )
    if row is None:
        return None
    succeeded = row["status"] == "succeeded"
    # jsonb read as text and parsed here, whatever codecs the connection has set up.
    outputs = json.loads(row["outputs"]) if succeeded and row["outputs"] is not None else None
    return {
        "job_id": str(row["id"]),
        "status": row["status"],
        "model": row["model"],
        "model_version": row["model_version"],
        "created_at": iso_utc(row["created_at"]),
        "finished_at": iso_utc(row["finished_at"]) if row["finished_at"] else None,
        "error": row["error"],
        "outputs": outputs,
    }


async def claim_delivery(conn: Connection, job_id: uuid.UUID, event: str, lease_s: float) -> bool:
    """Take the lease to deliver this job's event; False while another worker holds it."""
    taken = await conn.fetchval(
        """
        INSERT INTO webhook_leases (job_id, event, lease_until)
        VALUES ($1, $2, now() + make_interval(secs => $3))
        ON CONFLICT (job_id, event) DO UPDATE SET lease_until = EXCLUDED.lease_until
            WHERE webhook_leases.lease_until < now()
        RETURNING true
        """,
        job_id,
        event,
        lease_s,
    )
    return bool(taken)


async def release_delivery(conn: Connection, job_id: uuid.UUID, event: str) -> None:
    await conn.execute("DELETE FROM webhook_leases WHERE job_id = $1 AND event = $2", job_id, event)
