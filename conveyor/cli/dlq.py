"""``conveyor dlq``: see what is in the dead-letter queues and move messages back.

Runs as the operator (``ADMIN_AWS_*`` or ``AWS_*`` credentials) against ``AWS_ENDPOINT_URL``
and the stack named by ``CONVEYOR_PREFIX`` and ``CONVEYOR_MODELS``. A queue is named by its
logical key (``results``, ``notify``, ``infer-<model>``) or its physical name
(``conveyor-results``).
"""

from __future__ import annotations

import datetime
import sys
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from conveyor.cli.support import run
from shared.config import AdminSettings, load_settings

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="See what is in the dead-letter queues and move messages back to their queues.",
)

QueueName = Annotated[
    str, typer.Argument(help="A queue: results, notify, infer-<model>, or a physical name.")
]


@dlq_app.command("list")
def list_() -> None:
    """Every queue of the stack: messages in its DLQ (and in the queue itself)."""
    from shared.aws import AwsClients
    from shared.sqs.dlq import dlq_depths

    async def go() -> None:
        settings = _settings()
        async with AwsClients(settings.aws()) as clients:
            depths = await dlq_depths(clients, settings.topology())
        table = Table(title=f"dead-letter queues of {settings.conveyor_prefix!r}")
        table.add_column("queue", no_wrap=True)
        table.add_column("dlq", no_wrap=True)
        table.add_column("in dlq", justify="right")
        table.add_column("dlq in flight", justify="right")
        table.add_column("in queue", justify="right")
        for depth in depths:
            table.add_row(
                Text(depth.key),
                Text(depth.dlq),
                Text(str(depth.dlq_messages), style="bold red" if depth.dlq_messages else ""),
                str(depth.dlq_in_flight),
                str(depth.source_messages),
            )
        _console().print(table)

    run(go)


@dlq_app.command()
def show(
    queue: QueueName,
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many messages.")] = 10,
    bodies: Annotated[bool, typer.Option(help="Also print each message's body.")] = False,
) -> None:
    """Sample QUEUE's DLQ without consuming it: receive counts, ages, sizes and reasons."""
    from shared.aws import AwsClients
    from shared.sqs.dlq import peek, resolve_dlq

    async def go() -> None:
        settings = _settings()
        async with AwsClients(settings.aws()) as clients:
            target = await resolve_dlq(clients, settings.topology(), queue)
            messages = await peek(clients, target.dlq_url, limit=limit)
        console = _console()
        if not messages:
            console.print(Text(f"{target.spec.dlq_name} is empty"))
            return
        table = Table(title=f"{target.spec.dlq_name}: {len(messages)} message(s) sampled")
        table.add_column("message id", no_wrap=True)
        table.add_column("receives", justify="right")
        table.add_column("sent (UTC)", no_wrap=True)
        table.add_column("first received (UTC)", no_wrap=True)
        table.add_column("bytes", justify="right")
        table.add_column("reason")
        for message in messages:
            table.add_row(
                Text(message.message_id),
                str(message.receive_count),
                _when(message.sent_at),
                _when(message.first_received_at),
                str(message.body_size),
                Text(message.reason),
            )
        console.print(table)
        if bodies:
            for message in messages:
                console.print(Text(f"--- {message.message_id}"))
                console.print(Text(message.body))

    run(go)


@dlq_app.command()
def redrive(
    queue: QueueName,
    max_messages: Annotated[
        int, typer.Option("--max", min=1, help="Move at most this many messages.")
    ] = 1000,
    timeout: Annotated[
        float, typer.Option(min=1, help="Stop moving after this many seconds.")
    ] = 300,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Move messages from QUEUE's DLQ back to QUEUE, to be processed again."""
    from shared.aws import AwsClients
    from shared.sqs.dlq import dlq_depth, redrive, resolve_dlq

    async def go() -> None:
        settings = _settings()
        async with AwsClients(settings.aws()) as clients:
            target = await resolve_dlq(clients, settings.topology(), queue)
            depth = await dlq_depth(clients, target.spec)
            spec = target.spec
            if depth.dlq_messages == 0:
                typer.echo(f"{spec.dlq_name} holds no visible messages: nothing to redrive")
                return
            question = (
                f"move up to {min(max_messages, depth.dlq_messages)} of the "
                f"{depth.dlq_messages} message(s) in {spec.dlq_name} back to {spec.name}?"
            )
            if not yes and not await anyio.to_thread.run_sync(typer.confirm, question):
                typer.echo("nothing moved", err=True)
                raise typer.Exit(1)
            result = await redrive(
                clients,
                dlq_url=target.dlq_url,
                source_url=target.source_url,
                dlq_arn=target.dlq_arn,
                max_messages=max_messages,
                timeout_s=timeout,
            )
        typer.echo(
            f"moved {result.moved} message(s) from {spec.dlq_name} to {spec.name} "
            f"({result.method.value}); failed {result.failed}"
        )
        if result.fallback_reason:
            typer.echo(f"StartMessageMoveTask not used: {result.fallback_reason}")
        if result.undeleted:
            typer.echo(
                f"warning: {result.undeleted} sent message(s) could not be deleted from "
                f"{spec.dlq_name}; they will reappear there (consumers ignore duplicates)",
                err=True,
            )
        if not result.complete:
            typer.echo(
                f"warning: stopped early ({result.error or 'time limit'}); run it again",
                err=True,
            )
        if result.failed:
            typer.echo(f"error: {result.failed} message(s) stayed in {spec.dlq_name}", err=True)
            raise typer.Exit(1)

    run(go)


def _settings() -> AdminSettings:
    from shared.telemetry import configure_logging

    settings = load_settings(AdminSettings)
    configure_logging(settings.log_level, settings.log_format)  # to stderr, apart from output
    return settings


def _console() -> Console:
    # Piped output gets a wide fixed width, so that names are never cut.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _when(moment: datetime.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


if __name__ == "__main__":
    dlq_app()
