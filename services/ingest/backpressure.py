"""Backpressure: refuse new jobs for a model whose backlog is over the limit (429).

A model's backlog is what waits for it: the messages of its queue (``ApproximateNumberOfMessages``
plus ``ApproximateNumberOfMessagesNotVisible``, through an injected :data:`QueueDepth`) and its
unsent outbox rows (which grow while SQS is away, so an outage ends in 429s rather than an
unbounded outbox). The figure is read at most once per ``cache_s`` per model, by one request
while the others wait for it. A queue that does not answer counts as its last known depth
(zero before the first answer): the outbox exists so that jobs are accepted through an outage,
and its own rows still count. The queue is then not asked again for
:data:`RETRY_AFTER_FAILURE_S` (the outbox's rows still are, every ``cache_s``): a read that
timed out held its request for ``DEPTH_TIMEOUT_S``, and retrying it as often as the figure
expires made every submission of an outage wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import asyncpg

from services.ingest import outbox
from shared.errors import ConveyorError
from shared.telemetry import get_logger
from shared.topology import Topology

__all__ = ["Backpressure", "QueueDepth"]

QueueDepth = Callable[[str], Awaitable[int]]
"""The messages in a model's queue, visible and in flight: ``await depth(model)``."""

DEPTH_TIMEOUT_S: Final = 2.0
RETRY_AFTER_FAILURE_S: Final = 15.0
"""How long after a failed read of a queue's depth its last known depth stands in for it."""

log = get_logger("ingest")


class Backpressure:
    def __init__(
        self,
        pool: asyncpg.Pool,
        topology: Topology,
        depth: QueueDepth | None,
        *,
        limit: int,
        cache_s: float,
    ) -> None:
        self._pool = pool
        self._topology = topology
        self._depth = depth
        self.limit = limit
        self.cache_s = cache_s
        self._cached: dict[str, tuple[float, int]] = {}
        self._last_depth: dict[str, int] = {}
        self._depth_failed_at: dict[str, float] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def over_limit(self, model: str) -> int | None:
        """The model's backlog when it exceeds the limit, else None."""
        backlog = await self.backlog(model)
        return backlog if backlog > self.limit else None

    async def backlog(self, model: str) -> int:
        """Queue depth plus unsent outbox rows, at most ``cache_s`` old."""
        lock = self._locks.setdefault(model, anyio.Lock())
        async with lock:
            now = anyio.current_time()
            cached = self._cached.get(model)
            if cached is not None and now - cached[0] < self.cache_s:
                return cached[1]
            queued = await self._queue_depth(model)
            async with self._pool.acquire() as conn:
                unsent = await outbox.unsent(conn, self._topology.infer_queue(model).name)
            self._cached[model] = (anyio.current_time(), queued + unsent)
            return queued + unsent

    async def _queue_depth(self, model: str) -> int:
        if self._depth is None:
            return 0
        failed_at = self._depth_failed_at.get(model)
        if failed_at is not None and anyio.current_time() - failed_at < RETRY_AFTER_FAILURE_S:
            return self._last_depth.get(model, 0)
        try:
            with anyio.fail_after(DEPTH_TIMEOUT_S):
                depth = await self._depth(model)
        except (ConveyorError, TimeoutError) as exc:
            self._depth_failed_at[model] = anyio.current_time()
            log.warning(
                "queue depth unknown",
                model=model,
                error=str(exc) or type(exc).__name__,
                retry_in_s=RETRY_AFTER_FAILURE_S,
            )
            return self._last_depth.get(model, 0)
        self._depth_failed_at.pop(model, None)
        self._last_depth[model] = depth
        return depth
