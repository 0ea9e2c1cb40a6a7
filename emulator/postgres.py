"""PostgreSQL for the harness: embedded (pgserver, default), a given URL, or a container."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from typing import Any

import anyio
import asyncpg

from emulator.backend import BackendUnavailable
from emulator.docker import docker_unavailable_reason

__all__ = ["ContainerPostgres", "EmbeddedPostgres", "ExternalPostgres"]

DATABASE = "conveyor"


class EmbeddedPostgres:
    """A private PostgreSQL 16 from the pgserver wheel, on a Unix socket in a temp directory.

    Starts in about a second, also as root (pgserver switches to its own system user).
    ``aclose`` stops the server and deletes its directory.
    """

    name = "embedded"

    def __init__(self) -> None:
        self._server: Any = None
        self._dir: str | None = None

    async def start(self) -> str:
        self._dir = tempfile.mkdtemp(prefix="conveyor-pg-")
        self._server = await anyio.to_thread.run_sync(self._start_blocking, self._dir)
        conn = await asyncpg.connect(self._server.get_uri())
        try:
            await conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await conn.close()
        return str(self._server.get_uri(DATABASE))

    @staticmethod
    def _start_blocking(directory: str) -> Any:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset; harmless here.
            warnings.simplefilter("ignore")
            import pgserver

            return pgserver.get_server(directory, cleanup_mode="delete")  # type: ignore[attr-defined]

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast: connections are cut), stay down ``down_s``, start it again.

        For fault tests: what a failover or a crash looks like to the services.
        """
        from pgserver._commands import create_command_function

        pg_ctl = create_command_function("pg_ctl")  # as pgserver itself runs pg_ctl

        server = self._server
        if server is None:
            raise RuntimeError("the embedded PostgreSQL is not running")

        def ctl(*args: str) -> None:
            pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=30)

        socket_dir = server.get_postmaster_info().socket_dir
        await anyio.to_thread.run_sync(ctl, "-w", "-m", "fast", "stop")
        await anyio.sleep(down_s)
        # The options of the first start: no TCP, the same Unix socket directory.
        options = f'-h "" -k {socket_dir}'
        await anyio.to_thread.run_sync(ctl, "-w", "-l", str(server.log), "-o", options, "start")

    async def aclose(self) -> None:
        server, self._server = self._server, None
        directory, self._dir = self._dir, None
        with anyio.CancelScope(shield=True):
            if server is not None:
                await anyio.to_thread.run_sync(server.cleanup)
            if directory is not None:
                await anyio.to_thread.run_sync(shutil.rmtree, directory, True)


class ExternalPostgres:
    """A server someone else runs, named by ``DATABASE_URL``."""

    name = "url"

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> str:
        return self.url

    async def aclose(self) -> None:
        return None


class ContainerPostgres:
    """PostgreSQL in a container (testcontainers), where a Docker engine answers."""

    name = "container"

    def __init__(self, image: str = "postgres:16-alpine") -> None:
        self.image = image
        self._container: Any = None

    async def start(self) -> str:
        reason = docker_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"the container PostgreSQL backend needs Docker: {reason}")
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer(self.image, dbname=DATABASE, driver=None)
        self._container = container
        await anyio.to_thread.run_sync(container.start)
        return str(container.get_connection_url())

    async def aclose(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(container.stop)
