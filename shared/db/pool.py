"""The asyncpg pool every service opens, with the settings all of them want.

Every open pool is watched by a Prometheus collector, read at each scrape:

    conveyor_db_pool_connections        connections open now
    conveyor_db_pool_idle_connections   of those, the idle ones (free to acquire)
    conveyor_db_pool_max_connections    the most the pool may open

Saturation is ``(connections - idle) / max``: at 1, a query waits for a connection. A process
normally holds one pool; with several (tests), the figures are their sums.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr

__all__ = ["Connection", "PooledConnection", "open_pool"]

# What queries take: a plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy

_OPEN: list[asyncpg.Pool] = []


class PooledConnection(asyncpg.Connection):
    """A pool's connection, given back without asyncpg's reset query.

    On every release asyncpg sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;``: a round trip and four statements per borrowed connection, which is most jobs'
    cost in ingest and persist. Nothing here leaves session state on a pooled connection:
    settings are ``SET LOCAL``, advisory locks are transaction-scoped, cursors live in
    transactions, and the one listener (:mod:`services.ingest.waiting`) unlistens before it
    gives its connection back. asyncpg still rolls back an open transaction and drops listener
    callbacks on release; only the query is skipped. Code that adds session state must clear it
    itself, or use a connection of its own.
    """

    def get_reset_query(self) -> str:
        return ""


class _PoolCollector(Collector):
    """Reads the open pools' sizes when Prometheus scrapes (in the metrics server's thread:
    plain reads of counts asyncpg keeps)."""

    def collect(self) -> Iterator[Metric]:
        pools = list(_OPEN)
        figures = (
            ("connections", "Connections the asyncpg pool holds open", asyncpg.Pool.get_size),
            ("idle_connections", "Open connections free to acquire", asyncpg.Pool.get_idle_size),
            (
                "max_connections",
                "The most connections the pool may open",
                asyncpg.Pool.get_max_size,
            ),
        )
        for name, documentation, read in figures:
            yield GaugeMetricFamily(
                f"conveyor_db_pool_{name}", documentation, value=sum(read(p) for p in pools)
            )


REGISTRY.register(_PoolCollector())


@asynccontextmanager
async def open_pool(
    url: SecretStr | str, *, min_size: int = 1, max_size: int = 10
) -> AsyncIterator[asyncpg.Pool]:
    dsn = url.get_secret_value() if isinstance(url, SecretStr) else url
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        timeout=10,
        connection_class=PooledConnection,
    )
    _OPEN.append(pool)
    try:
        yield pool
    finally:
        _OPEN.remove(pool)
        await pool.close()
