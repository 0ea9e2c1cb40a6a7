"""The asyncpg pool every service opens, with the settings all of them want."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import SecretStr

__all__ = ["Connection", "open_pool"]

# What queries take: a plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy


@asynccontextmanager
async def open_pool(
    url: SecretStr | str, *, min_size: int = 1, max_size: int = 10
) -> AsyncIterator[asyncpg.Pool]:
    dsn = url.get_secret_value() if isinstance(url, SecretStr) else url
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=30, timeout=10
    )
    try:
        yield pool
    finally:
        await pool.close()
