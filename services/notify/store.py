"""The delivery log and the notification's data, in PostgreSQL.

``webhook_deliveries`` holds one row per attempt (migration 0002). The log is what makes notify
idempotent over SQS's at-least-once delivery: a notification whose event already succeeded is
skipped, and the attempt count survives redeliveries and restarts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.notify.delivery import DeliveryOutcome, iso_utc
from shared import vectors

__all__ = [
    "Connection",
    "DeliveryState",
    "already_delivered",
    "attempts_so_far",
    "claim_delivery",
    "delivery_state",
    "load_notification_data",
    "record_attempt",
    "release_delivery",
]

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A plain connection or one acquired from a pool."""


_RECORD = """
INSERT INTO webhook_deliveries
    (job_id, webhook_id, event, attempt, url, status_code, error, succeeded, duration_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
_RECORD_AND_RELEASE = """
WITH released AS (DELETE FROM webhook_leases WHERE job_id = $1 AND event = $3)
INSERT INTO webhook_deliveries
    (job_id, webhook_id, event, attempt, url, status_code, error, succeeded, duration_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""


async def record_attempt(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    webhook_id: str,
    event: str,
    attempt: int,
    url: str,
    outcome: DeliveryOutcome,
    release: bool = False,
) -> None:
    """Log one delivery attempt and what it came to; with ``release``, give up the lease on
    this job's event in the same statement (:func:`release_delivery`)."""
    await conn.execute(
        _RECORD_AND_RELEASE if release else _RECORD,
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


async def load_notification_data(conn: Connection, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The webhook's ``data`` object for a job, JSON-ready; None when the job does not exist.

    Every key is always present. ``outputs`` is null unless the job succeeded; ``error``,
    ``finished_at`` and ``model_version`` are null when unknown.
    """
    state = await delivery_state(conn, job_id, "")  # no event: only the data is wanted
    return None if state is None else state.data


def _notification_data(row: asyncpg.Record) -> dict[str, Any]:
    stored = None
    if row["status"] == "succeeded":
        stored = vectors.stored(row["vectors"], row["dimensions"], row["outputs"])
    outputs = None if stored is None else vectors.unpack(*stored)
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


@dataclass(frozen=True)
class DeliveryState:
    """What notify needs before an attempt, read in one query (:func:`delivery_state`)."""

    model: str
    delivered: bool
    """An attempt for this event succeeded (:func:`already_delivered`)."""
    attempts: int
    """Attempts logged for this event so far (:func:`attempts_so_far`)."""
    data: dict[str, Any]
    """The webhook's ``data`` (:func:`load_notification_data`)."""


async def delivery_state(conn: Connection, job_id: uuid.UUID, event: str) -> DeliveryState | None:
    """The job's model, its event's delivery log and the webhook's data in one round trip
    instead of four; None when there is no such job."""
    row = await conn.fetchrow(
        """
        SELECT j.id, j.status, j.model, j.error, j.created_at, j.finished_at,
               coalesce(r.model_version, j.model_version) AS model_version,
               r.vectors, r.dimensions, r.outputs::text AS outputs,
               log.delivered, log.attempts
        FROM jobs AS j
        LEFT JOIN results AS r ON r.job_id = j.id
        CROSS JOIN LATERAL (
            SELECT coalesce(bool_or(d.succeeded), false) AS delivered, count(*) AS attempts
            FROM webhook_deliveries AS d WHERE d.job_id = j.id AND d.event = $2
        ) AS log
        WHERE j.id = $1
        """,
        job_id,
        event,
    )
    if row is None:
        return None
    return DeliveryState(
        model=row["model"],
        delivered=bool(row["delivered"]),
        attempts=int(row["attempts"]),
        data=_notification_data(row),
    )


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
