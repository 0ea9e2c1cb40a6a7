"""Waiting for a job to finish: the ``job_finished`` listener and the requests it wakes.

The ``job_finished`` contract
-----------------------------
Whoever moves a job to a final status (succeeded, failed, cancelled) runs, in the same
transaction, ``SELECT pg_notify('job_finished', <job id>::text)`` — the persist service when it
finalises a job, :func:`services.ingest.jobs.cancel_job` here. PostgreSQL delivers a
notification only after its transaction commits, so a woken reader sees the final row. The
API holds one connection from the pool (the pool needs ``max_size >= 2``) that LISTENs on the
channel and wakes the requests waiting for that job. A lost notification costs at most
:data:`RECHECK_S`: every waiting request also re-reads its job that often. A dropped listener
connection is re-acquired with bounded backoff, and every waiter is woken when it is back.
"""

import contextlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import anyio
import asyncpg
from anyio.abc import TaskStatus

from services.ingest import jobs
from shared.telemetry import get_logger

__all__ = ["CHANNEL", "RECHECK_S", "JobWaiters", "Watch"]

CHANNEL: Final = "job_finished"
RECHECK_S: Final = 1.0
"""How often a waiting status read re-reads its job, notification or not."""
ANSWER_TIMEOUT_S: Final = 2.0
"""How long the listener connection may take to answer (a ping, UNLISTEN, its release)."""

log = get_logger("ingest")

# Failures of the listener connection that a reconnect may cure.
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Watch:
    """One waiting request's wake-up call; re-armed after each wake-up."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, at_most_s: float) -> None:
        """Until woken or ``at_most_s`` seconds pass."""
        with anyio.move_on_after(at_most_s):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()


class JobWaiters:
    """Requests waiting for their job to finish, woken by ``NOTIFY job_finished``.

    Waiters live in memory only while a request waits (:meth:`watch` removes its own on exit),
    so the registry is bounded by the requests in flight. :meth:`run` holds the LISTEN
    connection for the lifespan of the app.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ping_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._pool = pool
        self._ping_s = ping_s
        self._backoff_s = backoff_s
        self._watches: dict[str, set[Watch]] = {}
        self.listening = False
        """Whether the LISTEN connection is up (else waiters fall back to re-reading)."""

    def __len__(self) -> int:
        return sum(len(watches) for watches in self._watches.values())

    @contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[Watch]:
        """Register before reading the job, so a notification in between is not lost."""
        key = str(job_id)
        watch = Watch()
        self._watches.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[key]

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object, /) -> None:
        for watch in self._watches.get(str(payload), ()):
            watch.wake()

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """LISTEN until cancelled, reconnecting with bounded backoff.

        Signals started after the first attempt, connected or not: the API serves without
        the listener (waiters re-read every second) and /readyz reports the database.
        """
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        delay, max_delay = self._backoff_s
        while True:
            try:
                conn = await self._pool.acquire()
            except _DB_ERRORS as exc:
                log.warning("job_finished listener cannot connect", error=type(exc).__name__)
            else:
                try:
                    await self._listen(conn, ready)
                    delay = self._backoff_s[0]
                    log.warning("job_finished listener connection lost; reconnecting")
                except _DB_ERRORS as exc:
                    log.warning("job_finished listener failed", error=type(exc).__name__)
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(ANSWER_TIMEOUT_S):
                        await self._pool.release(conn)
            ready()
            await anyio.sleep(delay)
            delay = min(delay * 2, max_delay)

    async def _listen(self, conn: jobs.Conn, ready: Callable[[], None]) -> None:
        """Hold ``conn`` listening until it closes or stops answering."""
        lost = anyio.Event()

        def on_close(_conn: object, /) -> None:
            lost.set()

        conn.add_termination_listener(on_close)
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            self.listening = True
            log.info("job_finished listener ready")
            self._wake_all()  # whatever finished while nobody listened
            ready()
            while not lost.is_set():
                with anyio.move_on_after(self._ping_s):
                    await lost.wait()
                if not lost.is_set():
                    await self._ping(conn)
        finally:
            self.listening = False
            # A lost connection has been detached from the pool, listeners and all.
            if not lost.is_set():
                conn.remove_termination_listener(on_close)
                with (
                    contextlib.suppress(*_DB_ERRORS),
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(ANSWER_TIMEOUT_S),
                ):
                    await conn.remove_listener(CHANNEL, self._on_notify)

    @staticmethod
    async def _ping(conn: jobs.Conn) -> None:
        """A half-open TCP connection only shows itself when asked something."""
        try:
            with anyio.fail_after(ANSWER_TIMEOUT_S):
                await conn.execute("SELECT 1")
        except _DB_ERRORS:
            conn.terminate()  # give nothing doubtful back to the pool
            raise
