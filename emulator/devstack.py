"""The whole stack as processes on a provisioned :class:`~emulator.harness.Stack`.

    async with Emulator() as stack, DevStack(stack, DevOptions(http_port=0)) as dev:
        dev.api_url, dev.api_key      # the ingest API, ready, and a key for it
        await dev.supervisor.kill("infer")   # a crash: the supervisor restarts it

``make dev``, the whole-stack tests and the benchmarks all start the stack through this one
class, so that what the tests exercise is what a developer runs:

- one process per service (``python -m services.<name>``), and one infer worker per model
  (``infer`` for the first, ``infer-<model>`` for each other), each with only its own
  environment: the stack's values for that service, the user's variables its settings read
  (:mod:`emulator.passthrough`), and ``extra`` (tests);
- everything the stack writes lives in one temporary directory (the models cache of each
  infer worker, the services' own ``TMPDIR``, ``stack.env``), removed at exit, so a SIGKILLed
  worker leaves nothing behind;
- ready means ready: every worker logged "ready" and ingest answers ``GET /readyz`` 200 on the
  announced address, which was checked free before anything started;
- supervised: a process that dies is reported and restarted with backoff; a crash loop sets
  ``supervisor.failed`` with the reason (:class:`~emulator.processes.RestartPolicy`).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import asyncpg

from emulator.harness import Stack
from emulator.passthrough import pass_through
from emulator.processes import RestartPolicy, ServiceSpec, Supervisor
from emulator.stackfile import ENV_FILE_NAME, publish, unpublish, write_env_file
from shared.apikeys import create_key
from shared.errors import ConveyorError

__all__ = ["DevOptions", "DevStack", "DevStackError", "check_port_free", "infer_worker_name"]

SERVICES_IN_START_ORDER = ("persist", "notify", "infer", "ingest")
INFER_WAITING = "waiting for a deployed version of the model"
"""What an infer worker logs while its model has no version (services.infer.registry)."""


class DevStackError(ConveyorError):
    """The stack could not start, or stopped working: the message is the one-line reason."""


@dataclass(frozen=True)
class DevOptions:
    http_port: int = 8000
    """The API's port on 127.0.0.1; 0 picks a free one."""
    user_env: Mapping[str, str] = field(default_factory=dict)
    """The user's environment, passed through to each service as its settings allow."""
    extra: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Imposed on top, per service (``infer``: every infer worker) or per process name."""
    transform: Callable[[ServiceSpec], ServiceSpec] | None = None
    """Change a spec before it starts (tests: run a service under a fault injector)."""
    restart: RestartPolicy | None = field(default_factory=RestartPolicy)
    tenant: str = "dev"
    """The tenant of the API key made for this stack."""
    publish: bool = False
    """Record ``stack.env`` where the ``conveyor`` command finds it (``make dev``)."""
    ready_within_s: float = 120
    on_line: Callable[[str, str], None] | None = None
    on_event: Callable[[str, str], None] | None = None


def infer_worker_name(stack: Stack, model: str) -> str:
    return "infer" if model == stack.topology.models[0] else f"infer-{model}"


def check_port_free(port: int) -> None:
    """Raise DevStackError if something already listens on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DevStackError(
                    f"port {port} on 127.0.0.1 is already in use: stop what holds it, "
                    "or choose another port (make dev PORT=8080)"
                ) from None
            raise DevStackError(f"cannot use port {port} on 127.0.0.1: {exc}") from None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DevStack:
    def __init__(self, stack: Stack, options: DevOptions | None = None) -> None:
        self.stack = stack
        self.options = options or DevOptions()
        self.http_port = self.options.http_port
        self.state_dir = Path()
        self.env_file = Path()
        self.api_key = ""
        self.specs: dict[str, ServiceSpec] = {}
        self.ignored: set[str] = set()
        """User variables left out because the stack imposes that value (names only)."""
        self.supervisor = Supervisor(
            on_line=self.options.on_line,
            on_event=self.options.on_event,
            restart=self.options.restart,
        )
        self._published = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def service_specs(self) -> dict[str, ServiceSpec]:
        """One spec per process, in start order; each with only its own environment."""
        specs: dict[str, ServiceSpec] = {}
        for service in SERVICES_IN_START_ORDER:
            models = self.stack.topology.models if service == "infer" else (None,)
            for model in models:
                name = service if model is None else infer_worker_name(self.stack, model)
                imposed = self.stack.service_env(service)
                if service == "ingest":
                    imposed["INGEST_HTTP_PORT"] = str(self.http_port)
                if model is not None:
                    imposed["INFER_MODEL"] = model
                passed = pass_through(service, self.options.user_env, imposed)
                self.ignored |= passed.ignored
                env = {**passed.env, **imposed}
                # Whatever a service or torch writes to its temporary directory stays inside
                # the stack's, and goes with it.
                env["TMPDIR"] = str(self.state_dir / "tmp")
                if model is not None:
                    # In the stack's directory: nothing survives a SIGKILLed worker.
                    env.setdefault("INFER_CACHE_DIR", str(self.state_dir / "models" / name))
                    # torch shares the machine with the other services and the emulator,
                    # which spend about 2 texts' worth of model CPU per job: each batch gets
                    # the model's share of the CPUs (services/infer/threads.py, ThreadShare).
                    # The user's INFER_SHARED_JOB_COST (0: all CPUs) wins.
                    env.setdefault("INFER_SHARED_JOB_COST", "2")
                env.update(self.options.extra.get(service, {}))
                if name != service:
                    env.update(self.options.extra.get(name, {}))
                ready_url = f"{self.api_url}/readyz" if service == "ingest" else None
                spec = ServiceSpec(
                    name,
                    f"services.{service}",
                    env,
                    ready_url=ready_url,
                    # Up, though its model has no version yet: ingest refuses the model's
                    # jobs (409) until one is pushed, then this worker loads it.
                    started_pattern=INFER_WAITING if service == "infer" else None,
                )
                if self.options.transform is not None:
                    spec = self.options.transform(spec)
                specs[name] = spec
        return specs

    async def __aenter__(self) -> Self:
        if self.http_port == 0:
            self.http_port = _free_port()
        check_port_free(self.http_port)
        self.state_dir = Path(tempfile.mkdtemp(prefix="conveyor-dev-"))
        (self.state_dir / "tmp").mkdir()
        try:
            await self.supervisor.__aenter__()
            self.specs = self.service_specs()
            await self._start_all()
            self.api_key = await self._make_api_key()
            self.env_file = self.state_dir / ENV_FILE_NAME
            write_env_file(self.env_file, self.environment())
            if self.options.publish:
                publish(self.env_file, api_url=self.api_url)
                self._published = True
        except BaseException:
            # Our own failure, not the supervisor's: it just stops what it started.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start_all(self) -> None:
        # One at a time would cost seconds each; together, the first failure is reported.
        failures: list[str] = []

        async def start(spec: ServiceSpec) -> None:
            try:
                await self.supervisor.start(spec, ready_within_s=self.options.ready_within_s)
            except RuntimeError as exc:
                failures.append(str(exc).splitlines()[0])

        async with anyio.create_task_group() as tg:
            for spec in self.specs.values():
                tg.start_soon(start, spec)
        if failures:
            raise DevStackError("; ".join(sorted(failures)))

    async def _make_api_key(self) -> str:
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            key, _ = await create_key(conn, self.options.tenant, "conveyor dev")
        finally:
            await conn.close()
        return key

    def environment(self) -> dict[str, str]:
        """What ``stack.env`` holds: every identity's values, the API and its key."""
        env = self.stack.export_env()
        env["CONVEYOR_API_URL"] = self.api_url
        env["CONVEYOR_API_KEY"] = self.api_key
        return env

    def waiting_models(self) -> list[str]:
        """Models whose worker is up but waits for a version to be pushed."""
        return [
            model
            for model in self.stack.topology.models
            if self.supervisor.processes[infer_worker_name(self.stack, model)].waiting
        ]

    def tail(self, name: str, lines: int = 40) -> str:
        """The last lines a process printed, for failure messages."""
        return "\n".join(list(self.supervisor.processes[name].lines)[-lines:])

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._published:
                self._published = False
                unpublish(self.env_file)
            await self.supervisor.__aexit__(exc_type, exc, tb)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.state_dir)
