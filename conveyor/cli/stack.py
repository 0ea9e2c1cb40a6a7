"""``conveyor dev``, ``provision``, ``migrate``: standing a stack up."""

from __future__ import annotations

from typing import Annotated

import typer

from conveyor.cli.support import run
from shared.config import AdminSettings, load_settings
from shared.errors import ConfigError

__all__ = ["dev", "migrate", "provision"]


def dev(
    port: Annotated[int, typer.Option(help="The API's port on 127.0.0.1.")] = 8000,
) -> None:
    """Run the whole stack offline: emulator, PostgreSQL, the default model, four services."""
    from emulator.cli import run_dev_command

    run_dev_command(http_port=port)


def provision() -> None:
    """Create the topology's queues, DLQs and buckets; apply the schema migrations.

    Uses ADMIN_AWS_* (or AWS_*) credentials, AWS_ENDPOINT_URL, AWS_REGION and CONVEYOR_*;
    migrates the database at ADMIN_DATABASE_URL (or DATABASE_URL) when one is set.
    """
    from shared.aws import AwsClients
    from shared.aws.provision import provision as apply

    async def go() -> None:
        settings = load_settings(AdminSettings)
        async with AwsClients(settings.aws()) as clients:
            done = await apply(clients, settings.topology())
        for name, url in sorted(done.queue_urls.items()):
            typer.echo(f"queue  {name}  {url}")
        for bucket in settings.topology().buckets:
            typer.echo(f"bucket {bucket.name}")
        if settings.database_url is not None:
            await _migrate(settings.database_url.get_secret_value())

    run(go)


def migrate() -> None:
    """Apply the schema migrations to ADMIN_DATABASE_URL (or DATABASE_URL)."""

    async def go() -> None:
        settings = load_settings(AdminSettings)
        if settings.database_url is None:
            raise ConfigError("ADMIN_DATABASE_URL or DATABASE_URL is not set")
        await _migrate(settings.database_url.get_secret_value())

    run(go)


async def _migrate(url: str) -> None:
    import asyncpg

    from shared.db import migrate as apply_migrations

    conn = await asyncpg.connect(url)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (up to date)"
    typer.echo(f"migrations applied: {names}")
