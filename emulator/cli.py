"""The emulator's command-line entry (``python -m emulator`` and ``conveyor emulator``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, get_args

import anyio
import typer

from emulator.backend import BackendUnavailable
from emulator.harness import AwsBackendName, EmulatorOptions, PostgresBackendName
from emulator.serve import serve
from shared.aws.provision import AccessKey
from shared.config import AdminSettings, load_settings
from shared.errors import ConveyorError

__all__ = ["emulator_command", "main", "run_dev_command", "run_emulator"]


def emulator_command(
    env_file: Annotated[
        Path | None,
        typer.Option(help="Also write the export lines to this file (mode 0600; removed at exit)."),
    ] = None,
    aws: Annotated[str, typer.Option(help="moto, localstack or external")] = "moto",
    postgres: Annotated[
        str | None, typer.Option(help="embedded, url or container (default: embedded)")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(envvar="DATABASE_URL", help="Use this PostgreSQL.")
    ] = None,
    postgres_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="The embedded PostgreSQL also listens on 127.0.0.1 at this port (0: any free "
            "one), passwords required, and the services' URLs use it: for service containers "
            "on the host network (compose/offline.yaml).",
        ),
    ] = None,
) -> None:
    """Start the offline AWS topology and PostgreSQL; print `export` lines; run until Ctrl-C."""
    run_emulator(
        env_file=env_file,
        aws=aws,
        postgres=postgres,
        database_url=database_url,
        postgres_port=postgres_port,
    )


def main() -> None:
    """``python -m emulator``: the one command, under its own name."""
    app = typer.Typer(add_completion=False)
    app.command()(emulator_command)
    app(prog_name="python -m emulator")


def run_emulator(
    *,
    env_file: Path | None,
    aws: str,
    postgres: str | None,
    database_url: str | None,
    postgres_port: int | None = None,
) -> None:
    if aws not in get_args(AwsBackendName):
        sys.exit(f"--aws must be one of {', '.join(get_args(AwsBackendName))}, not {aws!r}")
    if postgres is not None and postgres not in get_args(PostgresBackendName):
        sys.exit(f"--postgres must be one of {', '.join(get_args(PostgresBackendName))}")
    try:
        settings = load_settings(AdminSettings)
        admin = None
        if settings.aws_access_key_id and settings.aws_secret_access_key:
            admin = AccessKey(
                settings.aws_access_key_id, settings.aws_secret_access_key.get_secret_value()
            )
        options = EmulatorOptions(
            topology=settings.topology(),
            aws=aws,  # type: ignore[arg-type]
            region=settings.aws_region,
            postgres=postgres,  # type: ignore[arg-type]
            database_url=database_url,
            postgres_port=postgres_port,
            external_url=str(settings.aws_endpoint_url) if settings.aws_endpoint_url else None,
            external_admin=admin,
        )
        anyio.run(serve, options, env_file)
    except (ConveyorError, BackendUnavailable) as exc:
        sys.exit(f"emulator: {exc}")
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        sys.exit(130)


def run_dev_command(*, http_port: int) -> None:
    from emulator.dev import run_dev

    try:
        settings = load_settings(AdminSettings)
        options = EmulatorOptions(topology=settings.topology(), region=settings.aws_region)
        anyio.run(lambda: run_dev(options, http_port=http_port))
    except (ConveyorError, BackendUnavailable, RuntimeError) as exc:
        sys.exit(f"dev: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
