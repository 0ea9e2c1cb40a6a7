"""``conveyor``: the command line for developers and operators."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer

from shared.config import AdminSettings, load_settings
from shared.errors import ConveyorError

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

EnvFile = Annotated[
    Path | None,
    typer.Option(help="Also write the export lines to this file (mode 0600; removed at exit)."),
]


@app.command()
def emulator(
    env_file: EnvFile = None,
    aws: Annotated[str, typer.Option(help="moto, localstack or external")] = "moto",
    postgres: Annotated[
        str | None, typer.Option(help="embedded, url or container (default: embedded)")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(envvar="DATABASE_URL", help="Use this PostgreSQL.")
    ] = None,
) -> None:
    """Start the offline AWS topology and PostgreSQL; print `export` lines; run until Ctrl-C."""
    from emulator.cli import run_emulator

    run_emulator(env_file=env_file, aws=aws, postgres=postgres, database_url=database_url)


@app.command()
def dev(env_file: EnvFile = None) -> None:
    """Run the whole stack offline (for now: the emulator and PostgreSQL)."""
    from emulator.cli import run_emulator

    run_emulator(env_file=env_file, aws="moto", postgres=None, database_url=None)


@app.command()
def provision() -> None:
    """Create the topology's queues, DLQs and buckets at the configured endpoint.

    Uses ADMIN_AWS_* (or AWS_*) credentials, AWS_ENDPOINT_URL, AWS_REGION and CONVEYOR_*.
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

    _run(go)


def _run(fn: object) -> None:
    try:
        anyio.run(fn)  # type: ignore[arg-type]
    except ConveyorError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    app()
