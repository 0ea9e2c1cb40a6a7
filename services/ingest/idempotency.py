"""Idempotency keys of ``POST /v1/jobs``: the ``Idempotency-Key`` header, scoped per tenant.

    first use of a key         the job is recorded; the key, a SHA-256 of the request and the
                               answer are saved in the same transaction
    same key, same body        the saved answer again (202, same body), ``Idempotent-Replayed``
    same key, another body     422 naming Idempotency-Key
    same key, first in flight  the second waits for the first's transaction (at most
                               :data:`IN_FLIGHT_WAIT_S`), then gets the saved answer; 409 if the
                               first is still in flight then

Claiming is ``INSERT ... ON CONFLICT``: concurrent requests with one key queue on the unique
(tenant, key) index, so exactly one records a job. Keys are kept ``INGEST_IDEMPOTENCY_TTL_S``
(at least 24 h); an expired key is claimed anew, and the relay prunes expired rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from shared.db import Connection

__all__ = [
    "IN_FLIGHT_WAIT_S",
    "KEY_HEADER",
    "KEY_PATTERN",
    "REPLAYED_HEADER",
    "Saved",
    "claim",
    "complete",
    "prune",
    "request_hash",
]

KEY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
KEY_PATTERN: Final = r"^[\x20-\x7e]{1,255}$"
"""1 to 255 printable ASCII characters."""
IN_FLIGHT_WAIT_S: Final = 2.0
PRUNE_BATCH: Final = 1000


@dataclass(frozen=True)
class Saved:
    """What a key already holds: the hash of its request and, once done, its answer."""

    request_hash: bytes
    status: int | None
    body: str | None


def request_hash(body: Any) -> bytes:
    """SHA-256 of the canonical JSON of ``body`` (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


async def claim(
    conn: Connection, tenant: str, key: str, digest: bytes, ttl_s: float
) -> Saved | None:
    """Claim ``key`` for this request: None when it is ours (new, or expired and taken anew),
    else what it holds. Waits for a concurrent claim of the same key to end, at most
    :data:`IN_FLIGHT_WAIT_S` (then ``asyncpg.LockNotAvailableError``)."""
    for _ in range(2):  # a second time only if the key was pruned between the two statements
        await conn.execute(f"SET LOCAL lock_timeout = '{int(IN_FLIGHT_WAIT_S * 1000)}ms'")
        claimed = await conn.fetchval(
            """
            INSERT INTO idempotency_keys AS k (tenant_id, key, request_hash) VALUES ($1, $2, $3)
            ON CONFLICT (tenant_id, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, response_status = NULL,
                    response_body = NULL, created_at = now(), completed_at = NULL
                WHERE k.created_at < now() - make_interval(secs => $4)
            RETURNING true
            """,
            tenant,
            key,
            digest,
            ttl_s,
        )
        await conn.execute("SET LOCAL lock_timeout = 0")
        if claimed:
            return None
        row = await conn.fetchrow(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys "
            "WHERE tenant_id = $1 AND key = $2",
            tenant,
            key,
        )
        if row is not None:
            return Saved(
                request_hash=bytes(row["request_hash"]),
                status=row["response_status"],
                body=row["response_body"],
            )
    raise RuntimeError(f"idempotency key {key!r} could be neither claimed nor read")


async def complete(conn: Connection, tenant: str, key: str, status: int, body: str) -> None:
    """Save the answer of the request that claimed ``key`` (in its transaction)."""
    await conn.execute(
        """
        UPDATE idempotency_keys
        SET response_status = $3, response_body = $4, completed_at = now()
        WHERE tenant_id = $1 AND key = $2
        """,
        tenant,
        key,
        status,
        body,
    )


async def prune(conn: Connection, ttl_s: float) -> int:
    """Delete up to :data:`PRUNE_BATCH` keys older than ``ttl_s``."""
    status: str = await conn.execute(
        """
        DELETE FROM idempotency_keys WHERE (tenant_id, key) IN (
            SELECT tenant_id, key FROM idempotency_keys
            WHERE created_at < now() - make_interval(secs => $1)
            ORDER BY created_at LIMIT $2
        )
        """,
        ttl_s,
        PRUNE_BATCH,
    )
    return int(status.rsplit(" ", 1)[-1])
