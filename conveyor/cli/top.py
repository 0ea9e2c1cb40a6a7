"""``conveyor top``: a live view of the stack (read-only: the observer's permissions).

Runs as the observer: ``OBSERVER_AWS_*`` (or ``AWS_*``) credentials, whose IAM policy may only
read queue depths (``Topology.observer_statements``), and ``OBSERVER_DATABASE_URL`` (or
``DATABASE_URL``), a login of the read-only ``conveyor_observer`` role. Without a database it
shows the queues only.
"""

from __future__ import annotations

import sys
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.live import Live

from conveyor.cli.support import run

__all__ = ["top"]


def top(
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one view and exit (for scripts).")
    ] = False,
) -> None:
    """Watch the stack: queues and DLQs, jobs per state, latency per hop, webhooks."""
    import asyncpg

    from conveyor.top import render, take_snapshot
    from conveyor.top.snapshot import QueueUrls
    from shared.aws import AwsClients
    from shared.config import ObserverSettings, load_settings

    async def go() -> None:
        settings = load_settings(ObserverSettings)
        topology, aws = settings.topology(), settings.aws()
        console = Console()
        if not console.is_terminal:  # a file or a pipe: no width to fit, keep rows whole
            console = Console(width=160)
        url = settings.database_url.get_secret_value() if settings.database_url else None
        async with AwsClients(aws) as clients:
            sqs = await clients.sqs()
            conn = await asyncpg.connect(url, timeout=10) if url else None
            try:
                urls = QueueUrls()
                if once:
                    console.print(render(await take_snapshot(sqs, aws, topology, conn, urls)))
                    return
                first = render(await take_snapshot(sqs, aws, topology, conn, urls))
                with Live(first, console=console, auto_refresh=False, screen=False) as live:
                    while True:
                        await anyio.sleep(interval)
                        snapshot = await take_snapshot(sqs, aws, topology, conn, urls)
                        live.update(render(snapshot), refresh=True)
            finally:
                if conn is not None:
                    await conn.close()

    try:
        run(go)
    except KeyboardInterrupt:  # Ctrl-C is how one leaves a live view
        sys.exit(0)
