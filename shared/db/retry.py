"""Bounded retries of whole transactions across PostgreSQL restarts and dropped connections.

asyncpg pools do not retry: a query in flight when the server restarts raises
(``ConnectionDoesNotExistError``, ``AdminShutdownError`` 57P01, ``CannotConnectNowError`` 57P03,
``OSError`` while reconnecting). Every unit of work here is one idempotent transaction, so it is
safe to run again from the start: :func:`transaction` does that with exponential backoff and
jitter (stamina), within a bounded number of attempts and time. Other errors (constraint
violations, bad SQL) are not retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import stamina

from shared.db.pool import Connection

__all__ = ["RETRYABLE", "transaction", "with_connection"]

T = TypeVar("T")

RETRYABLE: tuple[type[Exception], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionFailureError,
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing" while it reconnects
    # A pooled connection whose server vanished mid-operation can be left "in progress";
    # the pool discards it on release, and the next attempt gets a fresh one.
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


async def transaction(
    pool: asyncpg.Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    attempts: int = 8,
    timeout_s: float = 60.0,
) -> T:
    """Run ``work(conn)`` inside one transaction; on a connection failure, run it again."""

    async def once(conn: Connection) -> T:
        async with conn.transaction():
            return await work(conn)

    return await with_connection(pool, once, attempts=attempts, timeout_s=timeout_s)


async def with_connection(
    pool: asyncpg.Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    attempts: int = 8,
    timeout_s: float = 60.0,
) -> T:
    """Run ``work(conn)`` (idempotent, any transactions its own) with the same retries."""
    async for attempt in stamina.retry_context(
        on=RETRYABLE, attempts=attempts, timeout=timeout_s, wait_initial=0.2, wait_max=5.0
    ):
        with attempt:
            async with pool.acquire() as conn:
                return await work(conn)
    raise AssertionError("unreachable: stamina re-raises after the last attempt")
