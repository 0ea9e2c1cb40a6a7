"""``make dev`` / ``conveyor dev``: the whole stack offline, in one command.

The emulator and PostgreSQL start, the default model is pushed to the models bucket, the four
services start as separate processes (``python -m services.<name>``, environment only, as
their containers would), their logs stream here with a prefix, and Ctrl-C stops the services
(SIGTERM, their grace period), then the emulator.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import anyio
import asyncpg
from rich.console import Console

from emulator.harness import Emulator, EmulatorOptions, Stack
from emulator.processes import ServiceSpec, Supervisor
from shared.apikeys import create_key

__all__ = ["run_dev", "service_specs"]

_COLOURS = {"ingest": "cyan", "infer": "magenta", "persist": "green", "notify": "yellow"}


def service_specs(
    stack: Stack, *, http_port: int, extra: dict[str, dict[str, str]] | None = None
) -> list[ServiceSpec]:
    """One spec per service, each with only its own environment."""
    extra = extra or {}
    specs = []
    for name in ("persist", "notify", "infer", "ingest"):
        env = stack.service_env(name)
        if name == "ingest":
            env["INGEST_HTTP_PORT"] = str(http_port)
        env.update(extra.get(name, {}))
        specs.append(ServiceSpec(name, f"services.{name}", env))
    return specs


async def run_dev(options: EmulatorOptions, *, http_port: int = 8000) -> None:
    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()

    def echo(name: str, line: str) -> None:
        colour = _COLOURS.get(name.split("-")[0], "white")
        console.print(f"[{colour}]{name:>7}[/] | {line}", markup=True, soft_wrap=True)

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Emulator(options) as stack, Supervisor(on_line=echo) as supervisor:
            async with anyio.create_task_group() as tg:
                for spec in service_specs(stack, http_port=http_port):
                    tg.start_soon(supervisor.start, spec)
            # A key for this throw-away stack's database, so printing it is fine here.
            conn = await asyncpg.connect(stack.database_url)
            try:
                api_key, _ = await create_key(conn, "dev", "make dev")
            finally:
                await conn.close()
            api = f"http://127.0.0.1:{http_port}"
            body = json.dumps({"model": stack.topology.models[0], "inputs": ["hello"]})
            console.print(
                f"\n[bold]Conveyor is up[/] in {time.perf_counter() - started:.0f}s\n"
                f"  API:      {api}  (docs: {api}/docs)\n"
                f"  API key:  export CONVEYOR_API_KEY={api_key}  (tenant dev)\n"
                f"  submit:   curl -s -X POST {api}/v1/jobs "
                f"-H 'Authorization: Bearer {api_key}' "
                f"-H 'content-type: application/json' -d '{body}'\n"
                "  or:       conveyor submit 'some text' --wait 10\n"
                "  status:   conveyor status <job id>\n"
                "  Ctrl-C stops everything.\n",
                soft_wrap=True,  # the terminal wraps: the key and the commands copy whole
            )
            async for _ in signals:
                break
            console.print("stopping the services ...")
    print("stopped", file=sys.stderr)  # noqa: T201
