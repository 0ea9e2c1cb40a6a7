"""What every ``conveyor`` sub-command shares: running a coroutine, the operator's database."""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import typer

from shared.config import AdminSettings, load_settings
from shared.errors import ConfigError, ConveyorError

__all__ = ["admin_database", "run", "use_running_stack", "when"]


def use_running_stack() -> Path | None:
    """Take the running dev stack's environment (``make dev``), if there is one.

    Its values win over the shell's for the names it sets (a stale ``CONVEYOR_API_KEY`` from
    an earlier stack must not send a command to the wrong place); ``CONVEYOR_STACK_ENV=none``
    turns this off, ``CONVEYOR_STACK_ENV=path`` picks a file. Says on stderr which it used.
    """
    from emulator.stackfile import find_stack_env, read_env_file

    try:
        path = find_stack_env()
        if path is None:
            return None
        values = read_env_file(path)
    except (ConveyorError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    os.environ.update(values)
    where = values.get("CONVEYOR_API_URL", values.get("AWS_ENDPOINT_URL", ""))
    typer.echo(f"using the dev stack at {where} ({path})", err=True)
    return path


def run(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn``; a ConveyorError becomes ``error: ...`` on stderr and exit status 1."""
    try:
        anyio.run(fn)
    except ConveyorError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


@asynccontextmanager
async def admin_database() -> AsyncIterator[asyncpg.Connection]:
    """A connection to ADMIN_DATABASE_URL (or DATABASE_URL), closed afterwards."""
    settings = load_settings(AdminSettings)
    if settings.database_url is None:
        raise ConfigError(
            "ADMIN_DATABASE_URL or DATABASE_URL is not set: expected the URL of Conveyor's "
            "PostgreSQL, e.g. postgresql://user:password@host:5432/conveyor"
        )
    try:
        conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The message, not the URL: the URL can hold a password.
        raise ConfigError(f"cannot connect to the database: {type(exc).__name__}: {exc}") from exc
    try:
        yield conn
    finally:
        await conn.close()


def when(moment: datetime.datetime | None, absent: str = "") -> str:
    """A timestamp for a table cell, in UTC to the minute."""
    if moment is None:
        return absent
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
