"""``conveyor``: the command line for developers and operators."""

from __future__ import annotations

import typer

from conveyor.cli import jobs, stack
from conveyor.cli.dlq import dlq_app
from conveyor.cli.keys import keys_app
from conveyor.cli.models import models_app
from conveyor.cli.webhooks import webhooks_app
from emulator.cli import emulator_command

__all__ = ["app"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Conveyor: run the stack offline, submit jobs, and operate queues, models and keys.",
)

app.command("emulator")(emulator_command)
app.command()(stack.dev)
app.command()(stack.provision)
app.command()(stack.migrate)
app.command()(jobs.submit)
app.command()(jobs.status)
app.add_typer(models_app, name="models", help="Push and list models in the models bucket.")
app.add_typer(dlq_app, name="dlq", help="Inspect dead-letter queues and redrive them.")
app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys.")
app.add_typer(
    webhooks_app,
    name="webhooks",
    help="Register webhook endpoints and rotate their signing secrets.",
)
