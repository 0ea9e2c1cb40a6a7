"""The ``outbox`` table: messages written with the job they announce, sent later by the relay.

    (insert)     with the job, in the same statement (:func:`services.ingest.jobs.insert_job`):
                 one row holding the envelope's JSON body
    claim        the oldest unsent rows of the relay's queues, locked (FOR UPDATE SKIP
                 LOCKED), so that relays of several replicas never hold the same row
    mark_sent    the rows SQS accepted; mark_failed the others (attempts, last error)
    unsent       how many rows wait to be sent to a queue (backpressure counts them)
    prune        sent rows older than the retention, a bounded number at a time

A row is marked sent in the transaction that claimed it, after SQS accepted it: a crash in
between sends it again, so consumers dedupe (they do: every effect downstream is idempotent).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from shared.db import Connection

__all__ = ["OutboxRow", "claim", "mark_failed", "mark_sent", "prune", "unsent"]

PRUNE_BATCH: Final = 1000


@dataclass(frozen=True)
class OutboxRow:
    id: int
    job_id: uuid.UUID
    queue: str
    """The destination queue's name (with the stack's prefix)."""
    model: str
    body: str
    attempts: int


async def claim(conn: Connection, queues: list[str], limit: int) -> list[OutboxRow]:
    """The oldest unsent rows for ``queues`` not held by another relay; locked until the
    transaction ends."""
    rows = await conn.fetch(
        """
        SELECT id, job_id, queue, model, body, attempts FROM outbox
        WHERE sent_at IS NULL AND queue = ANY($1::text[])
        ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
        """,
        queues,
        limit,
    )
    return [
        OutboxRow(
            id=r["id"],
            job_id=r["job_id"],
            queue=r["queue"],
            model=r["model"],
            body=r["body"],
            attempts=r["attempts"],
        )
        for r in rows
    ]


async def mark_sent(conn: Connection, ids: list[int]) -> None:
    await conn.execute(
        "UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL "
        "WHERE id = ANY($1::bigint[])",
        ids,
    )


async def mark_failed(conn: Connection, ids: list[int], error: str) -> None:
    await conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])",
        ids,
        error[:1000],
    )


async def unsent(conn: Connection, queue: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE queue = $1 AND sent_at IS NULL", queue
    )
    return count


async def prune(conn: Connection, retention_s: float) -> int:
    """Delete up to :data:`PRUNE_BATCH` rows sent more than ``retention_s`` ago."""
    status: str = await conn.execute(
        """
        DELETE FROM outbox WHERE id IN (
            SELECT id FROM outbox
            WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)
            ORDER BY sent_at LIMIT $2
        )
        """,
        retention_s,
        PRUNE_BATCH,
    )
    return int(status.rsplit(" ", 1)[-1])
