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
    migrates the database at ADMIN_DATABASE_URL (or DATABASE_URL) when one is set, and makes
    the login of each service whose INGEST_/PERSIST_/NOTIFY_DATABASE_URL is set.
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
            await _migrate(settings)

    run(go)


def migrate() -> None:
    """Apply the schema migrations to ADMIN_DATABASE_URL (or DATABASE_URL); make the login of
    each service whose INGEST_/PERSIST_/NOTIFY_DATABASE_URL is set."""

    async def go() -> None:
        await _migrate(load_settings(AdminSettings))

    run(go)


async def _migrate(settings: AdminSettings) -> None:
    """Migrate as the operator, then give each service whose URL is set its login role."""
    import asyncpg

    from shared.db import migrate as apply_migrations
    from shared.db.roles import GROUPS, credentials_of, ensure_login

    if settings.database_url is None:
        raise ConfigError("ADMIN_DATABASE_URL or DATABASE_URL is not set")
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        applied = await apply_migrations(conn)
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (up to date)"
        typer.echo(f"migrations applied: {names}")
        for service, url in settings.service_database_urls().items():
            user, password = credentials_of(url.get_secret_value())
            try:
                await ensure_login(conn, service, user, password)
            except ValueError as exc:
                variable = AdminSettings.env_names(f"{service}_database_url")
                raise ConfigError(f"{variable}: {exc}") from None
            typer.echo(f"database login {user} for {service} (role {GROUPS[service]})")
    finally:
        await conn.close()
