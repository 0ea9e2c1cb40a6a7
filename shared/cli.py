"""``conveyor``: the command line for developers and operators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

from shared.cli_support import run
from shared.config import AdminSettings, load_settings
from shared.errors import ConfigError

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
def dev(
    port: Annotated[int, typer.Option(help="The API's port on 127.0.0.1.")] = 8000,
) -> None:
    """Run the whole stack offline: emulator, PostgreSQL, the default model, four services."""
    from emulator.cli import run_dev_command

    run_dev_command(http_port=port)


@app.command()
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


@app.command()
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


ApiUrl = Annotated[str, typer.Option(envvar="CONVEYOR_API_URL", help="The ingest API's base URL.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="CONVEYOR_API_KEY",
        help="The API key (cvk_...); `conveyor keys create` makes one.",
        show_default=False,
    ),
]


@app.command()
def submit(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to embed.")],
    model: Annotated[
        str | None, typer.Option(help="Default: the first of CONVEYOR_MODELS.")
    ] = None,
    callback_url: Annotated[str | None, typer.Option(help="Webhook for the outcome.")] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the result (0: return at once).")
    ] = 0,
    api: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Submit a job and print its id (or, with --wait, its result)."""
    if model is None:
        model = load_settings(AdminSettings).conveyor_models[0]
    body = {"model": model, "inputs": texts, "callback_url": callback_url}
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api, timeout=wait + 30, headers=auth) as http:
        response = http.post("/v1/jobs", json=body)
        _check(response)
        job_id = response.json()["id"]
        if wait <= 0:
            typer.echo(job_id)
            return
        _print_job(http, job_id, wait)


@app.command()
def status(
    job_id: str,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a final state.")] = 0,
    api: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Print a job's status and result."""
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api, timeout=wait + 30, headers=auth) as http:
        _print_job(http, job_id, wait)


def _print_job(http: httpx.Client, job_id: str, wait: float) -> None:
    response = http.get(f"/v1/jobs/{job_id}", params={"wait": wait} if wait > 0 else None)
    _check(response)
    job = response.json()
    result = job.get("result") or {}
    outputs = result.get("outputs") or []
    # Whole vectors are long: show their shape and first values; --json style for the rest.
    summary = {k: v for k, v in job.items() if k != "result"}
    if outputs:
        summary["outputs"] = [
            f"{len(vector)} dims: [{', '.join(f'{x:.4f}' for x in vector[:4])}, ...]"
            for vector in outputs
        ]
    typer.echo(json.dumps(summary, indent=2))


def _check(response: httpx.Response) -> None:
    if response.is_error:
        typer.echo(f"error: HTTP {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)


def _register_subcommands() -> None:
    from services.infer.models_cli import models_app
    from services.ingest.keys_cli import keys_app
    from services.notify.webhooks_cli import webhooks_app
    from shared.dlq_cli import dlq_app

    app.add_typer(models_app, name="models", help="Push and list models in the models bucket.")
    app.add_typer(dlq_app, name="dlq", help="Inspect dead-letter queues and redrive them.")
    app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys.")
    app.add_typer(
        webhooks_app,
        name="webhooks",
        help="Register webhook endpoints and rotate their signing secrets.",
    )


_register_subcommands()

if __name__ == "__main__":
    app()
