"""What every ``conveyor`` sub-command shares: running a coroutine, the operator's database."""

from __future__ import annotations

import datetime
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import asyncpg
import typer

from shared.config import AdminSettings, load_settings
from shared.errors import ConfigError, ConveyorError

__all__ = ["admin_database", "run", "when"]


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
