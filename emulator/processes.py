"""Running services as separate processes, exactly as their containers run them.

``python -m services.<name>`` with an environment and nothing else; output is read line by
line (kept for tests, echoed with a prefix for ``conveyor dev``); "ready" is the line the
service logs once its queues are resolved. Closing the supervisor sends SIGTERM to every
process, waits for its grace period, and kills what is left: nothing outlives it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.text import TextReceiveStream

__all__ = ["ServiceProcess", "ServiceSpec", "Supervisor"]

_READY = re.compile(r"\bready\b")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    """A label, unique among running processes: ``infer`` or ``infer-2``."""
    module: str
    env: dict[str, str]
    args: tuple[str, ...] = ()


@dataclass
class ServiceProcess:
    spec: ServiceSpec
    process: Process
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20_000))
    ready: anyio.Event = field(default_factory=anyio.Event)
    exited: anyio.Event = field(default_factory=anyio.Event)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


def _base_env() -> dict[str, str]:
    """What a child needs from this process: PATH, locale, HOME, and the import path."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Supervisor:
    def __init__(self, *, on_line: Callable[[str, str], None] | None = None) -> None:
        self._on_line = on_line
        self._stack = AsyncExitStack()
        self._tg: TaskGroup | None = None
        self.processes: dict[str, ServiceProcess] = {}

    async def __aenter__(self) -> Self:
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
            env={**_base_env(), **spec.env},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        service = ServiceProcess(spec, process)
        self.processes[spec.name] = service
        self._tg.start_soon(self._pump, service)
        if ready_within_s is not None:
            await self.wait_ready(spec.name, ready_within_s)
        return service

    async def wait_ready(self, name: str, within_s: float) -> None:
        service = self.processes[name]
        with anyio.move_on_after(within_s):
            async with anyio.create_task_group() as race:

                async def ready() -> None:
                    await service.ready.wait()
                    race.cancel_scope.cancel()

                async def exited() -> None:
                    await service.exited.wait()
                    race.cancel_scope.cancel()

                race.start_soon(ready)
                race.start_soon(exited)
        if not service.ready.is_set():
            tail = "\n".join(list(service.lines)[-30:])
            raise RuntimeError(
                f"{name} did not become ready within {within_s}s "
                f"(exit code {service.returncode}); last output:\n{tail}"
            )

    async def stop(
        self, name: str, *, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30
    ) -> int:
        """Signal a process and wait for it; SIGKILL after ``timeout_s``. Returns the exit code."""
        service = self.processes[name]
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

    async def stop_all(self, timeout_s: float = 30) -> None:
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

    def _line(self, service: ServiceProcess, line: str) -> None:
        service.lines.append(line)
        if not service.ready.is_set() and _READY.search(line):
            service.ready.set()
        if self._on_line is not None:
            self._on_line(service.spec.name, line)
