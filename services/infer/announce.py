"""A job's ``running`` announcement, made only for a job that runs long enough to show it.

``job.started`` moves a job from queued to running. For a small embedding job it is most of
the cost: one more message through SQS and persist than the result, which follows it within
milliseconds and carries ``started_at`` anyway. So infer announces a job only when its batch
has been on the model for INFER_STARTED_AFTER_S (0: every job, before it runs), as Celery
reports its STARTED state only on request (``task_track_started``). Time spent waiting for
the batch's turn does not count: it is the worker's prefetch, as in Celery, where a task
reserved by a worker is not yet STARTED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from shared.telemetry import get_logger

__all__ = ["announced"]

T = TypeVar("T")

log = get_logger("infer")


async def announced(
    work: Callable[[], Awaitable[T]],
    announce: Callable[[], Awaitable[object]],
    after_s: float,
    *,
    running: anyio.Event | None = None,
) -> T:
    """``await work()``, calling ``announce()`` once it has run ``after_s`` seconds; with
    ``after_s`` 0, before it starts. With ``running``, the clock starts when that is set (the
    job's batch reached the model) rather than at once: a job that only waits its turn, as
    every job held by a saturated worker does, is not announced for it. An announcement still
    under way when the work ends is cancelled: the result that follows says more. A late
    announcement that fails is logged and the work goes on; what ``work`` raises is raised as
    it is."""
    if after_s <= 0:
        await announce()
        return await work()

    async def later() -> None:
        if running is not None:
            await running.wait()
        await anyio.sleep(after_s)
        try:
            await announce()
        except Exception as exc:  # the result still records when the job started
            log.warning("running announcement failed", error=f"{type(exc).__name__}: {exc}")

    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        try:
            result = await work()
        except Exception as exc:  # raised below as is, not inside an ExceptionGroup
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result
