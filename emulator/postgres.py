"""PostgreSQL for the harness: embedded (pgserver, default), a given URL, or a container."""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import urllib.parse
import warnings
from pathlib import Path
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

    The socket lies in the server's own directory (mode 0700), where only this user and the
    server reach it, so it trusts whoever connects. With ``tcp_port`` (0: a free one) it also
    listens on 127.0.0.1 for what cannot reach that socket (service containers on the host
    network); TCP logins must give their password (scram-sha-256), so the operator's login,
    which has none, stays on the socket. :attr:`tcp_url` is then the base of service URLs.
    """

    name = "embedded"

    def __init__(self, tcp_port: int | None = None) -> None:
        self._server: Any = None
        self._dir: str | None = None
        self._tcp_port = tcp_port
        self.tcp_url: str | None = None

    async def start(self) -> str:
        self._dir = tempfile.mkdtemp(prefix="conveyor-pg-")
        self._server = await anyio.to_thread.run_sync(self._start_blocking, self._dir)
        if self._tcp_port is not None:
            url = await self._listen_on_loopback(self._tcp_port)
        else:
            url = str(self._server.get_uri())
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await conn.close()
        if self._tcp_port is None:
            return str(self._server.get_uri(DATABASE))
        return _with_database(url, DATABASE)

    async def _listen_on_loopback(self, port: int) -> str:
        """Require passwords over TCP, restart listening on 127.0.0.1:``port`` as well."""
        if port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self._tcp_port = port
        hba = Path(self._server.pgdata) / "pg_hba.conf"
        hba.write_text(
            "".join(
                (
                    re.sub(r"\btrust$", "scram-sha-256", line.rstrip())
                    if line.startswith("host")
                    else line
                )
                + "\n"
                for line in hba.read_text().splitlines()
            )
        )
        await self.restart()
        socket_dir = self._server.get_postmaster_info().socket_dir
        self.tcp_url = f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
        # The socket file is named after the port: the operator's URL names both.
        return f"postgresql://postgres:@/postgres?host={socket_dir}&port={port}"

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
        # The options of the first start (no TCP, the same Unix socket directory), or loopback.
        if self._tcp_port is None:
            options = f'-h "" -k {socket_dir}'
        else:
            options = f"-h 127.0.0.1 -p {self._tcp_port} -k {socket_dir}"
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


def _with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of the one it names."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{database}"))
