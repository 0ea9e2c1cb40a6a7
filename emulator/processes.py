"""Running services as separate processes, exactly as their containers run them.

``python -m services.<name>`` with an environment and nothing else; output is read line by
line (kept for tests, echoed with a prefix for ``conveyor dev``). A process is ready when it
logs "ready" (its queues are resolved) and, where its spec names a ``ready_url``, that URL
answers 200 while the process is still alive: the port is really its own.

With a :class:`RestartPolicy`, a process that exits without being asked to is reported at once
(name, exit code or signal) and started again after a backoff; more restarts in a window than
the policy allows is a crash loop: the supervisor gives up and sets :attr:`Supervisor.failed`
with the reason. Closing the supervisor sends SIGTERM to every process, waits for its grace
period, and kills what is left: nothing outlives it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import httpx
from anyio.abc import Process, TaskGroup
from anyio.streams.text import TextReceiveStream

from shared.lifeline import SUPERVISOR_PID

__all__ = ["RestartPolicy", "ServiceProcess", "ServiceSpec", "Supervisor", "describe_exit"]

_READY = re.compile(r"\bready\b")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    """A label, unique among running processes: ``infer`` or ``infer-2``."""
    module: str
    env: dict[str, str]
    args: tuple[str, ...] = ()
    ready_url: str | None = None
    """Also ready only once this URL answers 200 (ingest: its ``/readyz``)."""
    started_pattern: str | None = None
    """A line that counts as started though not ready: the process is waiting for something
    outside it (an infer worker for a model not pushed yet). Ready still means ready."""


@dataclass(frozen=True)
class RestartPolicy:
    """How a supervisor restarts a process that exits unexpectedly (plain data)."""

    max_restarts: int = 5
    """Restarts allowed within ``window_s``; one more is a crash loop."""
    window_s: float = 60.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def backoff_s(self, recent_restarts: int) -> float:
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2**recent_restarts))


def describe_exit(code: int | None) -> str:
    """``exit code 1`` or ``killed by SIGKILL``: how a process ended, for people."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class ServiceProcess:
    spec: ServiceSpec
    process: Process
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20_000))
    """Every line it printed, across restarts (a restarted process continues the same log)."""
    logged_ready: anyio.Event = field(default_factory=anyio.Event)
    """It printed its "ready" line."""
    waiting: str | None = None
    """The line that matched the spec's ``started_pattern``, until it is ready."""
    ready: anyio.Event = field(default_factory=anyio.Event)
    """Ready as :meth:`Supervisor.wait_ready` checks it (the line, and the URL if any)."""
    exited: anyio.Event = field(default_factory=anyio.Event)
    started: anyio.Event = field(default_factory=anyio.Event)
    """It said it is waiting (``started_pattern``): up, not yet ready."""
    stopping: bool = False
    """Asked to stop (``Supervisor.stop``): its exit is expected, not a crash."""

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


def child_env(env: dict[str, str]) -> dict[str, str]:
    """A child's whole environment: what it needs from this process (PATH, locale, HOME) and
    ``env``. The repository is always on its import path, before any ``PYTHONPATH`` given."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT")
    base = {k: v for k, v in os.environ.items() if k in keep}
    # SUPERVISOR_PID: a service dies with this process (shared.lifeline), even a SIGKILLed one.
    merged = {**base, **env, "PYTHONUNBUFFERED": "1", SUPERVISOR_PID: str(os.getpid())}
    merged["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    return merged


class Supervisor:
    def __init__(
        self,
        *,
        on_line: Callable[[str, str], None] | None = None,
        on_event: Callable[[str, str], None] | None = None,
        restart: RestartPolicy | None = None,
    ) -> None:
        """``on_line(name, line)``: each line a process prints; ``on_event(name, message)``:
        what the supervisor does about it (an unexpected exit, a restart, giving up)."""
        self._on_line = on_line
        self._on_event = on_event
        self._restart = restart
        self._stack = AsyncExitStack()
        self._tg: TaskGroup | None = None
        self._closing = False
        self._restarts: dict[str, list[float]] = {}
        self._was_ready: set[str] = set()
        """Names that have been ready once: only those are restarted (a first start that
        fails is the starter's error to report, not a crash to retry)."""
        self.processes: dict[str, ServiceProcess] = {}
        self.failed = anyio.Event()
        """Set when a process crash-loops (or cannot be restarted): :attr:`failure` says why."""
        self.failure: str | None = None

    async def __aenter__(self) -> Self:
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        try:
            with anyio.CancelScope(shield=True):
                await self.stop_all()
        finally:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await self._stack.__aexit__(exc_type, exc, tb)

    async def start(
        self, spec: ServiceSpec, *, ready_within_s: float | None = 120
    ) -> ServiceProcess:
        """Start a process; by default wait until it logs "ready" (or fail if it exits first)."""
        if self._tg is None:
            raise RuntimeError("use the supervisor with `async with`")
        running = self.processes.get(spec.name)
        if running is not None and running.returncode is None:
            raise RuntimeError(f"{spec.name} is already running")
        process = await anyio.open_process(
            [sys.executable, "-m", spec.module, *spec.args],
            env=child_env(spec.env),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        service = ServiceProcess(spec, process)
        if running is not None:
            service.lines = running.lines
        self.processes[spec.name] = service
        self._tg.start_soon(self._pump, service)
        if ready_within_s is not None:
            await self.wait_ready(spec.name, ready_within_s)
        return service

    async def wait_ready(self, name: str, within_s: float, *, ready_only: bool = False) -> None:
        """Wait until ``name`` is ready, or (unless ``ready_only``) has said it is waiting for
        something outside it (its spec's ``started_pattern``); raise if it exits first."""
        service = self.processes[name]
        with anyio.move_on_after(within_s):
            async with anyio.create_task_group() as race:

                async def ready() -> None:
                    await service.logged_ready.wait()
                    if service.spec.ready_url is not None:
                        await self._wait_url(service, service.spec.ready_url)
                    if not service.exited.is_set():
                        service.ready.set()
                        self._was_ready.add(name)
                    race.cancel_scope.cancel()

                async def exited() -> None:
                    await service.exited.wait()
                    race.cancel_scope.cancel()

                async def waiting() -> None:
                    await service.started.wait()
                    race.cancel_scope.cancel()

                race.start_soon(ready)
                race.start_soon(exited)
                if not ready_only:
                    race.start_soon(waiting)
        if service.waiting is not None and not ready_only and not service.exited.is_set():
            self._was_ready.add(name)  # up, and waiting: a crash now is restarted
        elif not service.ready.is_set():
            tail = "\n".join(list(service.lines)[-30:])
            how = (
                "exited before it was ready"
                if service.exited.is_set()
                else f"was not ready within {within_s:g}s"
            )
            raise RuntimeError(
                f"{name} {how} ({describe_exit(service.returncode)})\nlast output:\n{tail}"
            )

    @staticmethod
    async def _wait_url(service: ServiceProcess, url: str) -> None:
        """Ready means the URL answers 200 while this process lives, not only a log line.
        The caller bounds the time; this returns early if the process exits."""
        async with httpx.AsyncClient(timeout=2) as http:
            while not service.exited.is_set():
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)

    async def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a process as a crash would (it is not marked as stopping: a supervisor with
        a restart policy brings it back). Tests use it to play the failure."""
        service = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            service.process.send_signal(sig)
        await service.exited.wait()

    async def wait_restarted(self, name: str, after: ServiceProcess, within_s: float) -> None:
        """Wait until ``name`` runs again, as a process other than ``after``, and is ready."""
        with anyio.fail_after(within_s):
            while True:
                current = self.processes[name]
                if current is not after and current.ready.is_set():
                    return
                if self.failed.is_set():
                    raise RuntimeError(self.failure)
                await anyio.sleep(0.05)

    async def stop(
        self, name: str, *, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30
    ) -> int:
        """Signal a process and wait for it; SIGKILL after ``timeout_s``. Returns the exit code."""
        service = self.processes[name]
        service.stopping = True
        if service.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                service.process.send_signal(sig)
        with anyio.move_on_after(timeout_s):
            await service.exited.wait()
        if not service.exited.is_set():
            service.process.kill()
            await service.exited.wait()
        code = service.returncode
        assert code is not None
        return code

    def begin_shutdown(self) -> None:
        """From now on an exit is expected, not a crash: a terminal's Ctrl-C reaches the
        processes themselves too, and they may exit before they are asked to."""
        self._closing = True

    async def stop_all(self, timeout_s: float = 30) -> None:
        self._closing = True

        async def stop(name: str) -> None:
            await self.stop(name, timeout_s=timeout_s)

        async with anyio.create_task_group() as tg:
            for name, service in self.processes.items():
                if not service.exited.is_set():
                    tg.start_soon(stop, name)

    async def _pump(self, service: ServiceProcess) -> None:
        stream = service.process.stdout
        assert stream is not None
        buffer = ""
        try:
            async for chunk in TextReceiveStream(stream, errors="replace"):
                buffer += chunk
                *complete, buffer = buffer.split("\n")
                for line in complete:
                    self._line(service, line)
            if buffer:
                self._line(service, buffer)
        finally:
            with anyio.CancelScope(shield=True):
                await service.process.wait()
                await service.process.aclose()
            service.exited.set()
        if not service.stopping and not self._closing:
            self._unexpected_exit(service)

    def _event(self, name: str, message: str) -> None:
        if self._on_event is not None:
            self._on_event(name, message)

    def _unexpected_exit(self, service: ServiceProcess) -> None:
        name = service.spec.name
        how = describe_exit(service.returncode)
        policy = self._restart
        if policy is None or name not in self._was_ready:
            self._event(name, f"exited unexpectedly ({how})")
            return
        now = time.monotonic()
        recent = [t for t in self._restarts.get(name, []) if now - t < policy.window_s]
        if len(recent) >= policy.max_restarts:
            self.failure = (
                f"{name} keeps crashing: {how}, after {len(recent)} restarts "
                f"in {policy.window_s:g}s"
            )
            self._event(name, f"exited unexpectedly ({how}); giving up: crash loop")
            self.failed.set()
            return
        recent.append(now)
        self._restarts[name] = recent
        delay = policy.backoff_s(len(recent) - 1)
        self._event(
            name,
            f"exited unexpectedly ({how}); restarting in {delay:g}s "
            f"(restart {len(recent)} of at most {policy.max_restarts} per {policy.window_s:g}s)",
        )
        assert self._tg is not None
        self._tg.start_soon(self._restart_later, service.spec, delay)

    async def _restart_later(self, spec: ServiceSpec, delay: float) -> None:
        await anyio.sleep(delay)
        if self._closing:
            return
        try:
            await self.start(spec)
        except RuntimeError as exc:
            if self.processes[spec.name].exited.is_set():
                return  # it died again before ready: that exit is handled (and counted) too
            self.failure = f"{spec.name} did not come back: {str(exc).splitlines()[0]}"
            self._event(spec.name, self.failure)
            self.failed.set()
            return
        waiting = self.processes[spec.name].waiting
        self._event(spec.name, "restarted, waiting" if waiting else "restarted and ready")

    def _line(self, service: ServiceProcess, line: str) -> None:
        service.lines.append(line)
        if not service.logged_ready.is_set():
            if _READY.search(line):
                service.logged_ready.set()
                service.waiting = None
                if service.spec.ready_url is None:  # nothing more to check
                    service.ready.set()
                    self._was_ready.add(service.spec.name)
            elif (
                service.spec.started_pattern is not None
                and service.waiting is None
                and re.search(service.spec.started_pattern, line)
            ):
                service.waiting = line
                service.started.set()
        if self._on_line is not None:
            self._on_line(service.spec.name, line)
