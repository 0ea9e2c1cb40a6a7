"""``conveyor``: the command line for developers and operators."""

from __future__ import annotations

import typer

from conveyor.cli import jobs, plan, render, stack, top
from conveyor.cli.dlq import dlq_app
from conveyor.cli.keys import keys_app
from conveyor.cli.models import models_app
from conveyor.cli.support import use_running_stack
from conveyor.cli.webhooks import webhooks_app
from emulator.cli import emulator_command

__all__ = ["app"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Conveyor: run the stack offline, submit jobs, and operate queues, models and keys.",
)

# These start a stack of their own: a running one's environment must not leak into them.
_STARTS_A_STACK = {"dev", "emulator"}


@app.callback()
def _find_stack(ctx: typer.Context) -> None:
    """Every other command talks to the running `make dev` stack when there is one."""
    if ctx.invoked_subcommand not in _STARTS_A_STACK:
        use_running_stack()


app.command("emulator")(emulator_command)
app.command()(stack.dev)
app.command()(stack.provision)
app.command()(stack.migrate)
app.command()(jobs.submit)
app.command()(jobs.status)
app.command()(plan.plan)
app.add_typer(
    render.render_app,
    name="render",
    help="Render the topology for AWS and EKS, and its dashboard and alerts.",
)
app.command()(top.top)
app.add_typer(models_app, name="models", help="Push and list models in the models bucket.")
app.add_typer(dlq_app, name="dlq", help="Inspect dead-letter queues and redrive them.")
app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys.")
app.add_typer(
    webhooks_app,
    name="webhooks",
    help="Register webhook endpoints and rotate their signing secrets.",
)
