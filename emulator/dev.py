"""``make dev`` / ``conveyor dev``: the whole stack offline, in one command.

The port is checked first; then the emulator and PostgreSQL start, the default model is
pushed, and the services start through :class:`~emulator.devstack.DevStack` (one process per
service, one infer worker per model, each with only its own environment, supervised). "up" is
printed only when ingest answers ``/readyz`` on the announced address. The stack's environment
goes to ``stack.env`` in its temporary directory, where every ``conveyor`` command finds it.
Ctrl-C (or SIGTERM) stops the services (their grace period), then the emulator; a crash loop
stops everything with the reason and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import anyio
from rich.console import Console
from rich.markup import escape

from emulator.devstack import DevOptions, DevStack, DevStackError, check_port_free
from emulator.harness import Emulator, EmulatorOptions, Stack

__all__ = ["run_dev"]

_COLOURS = {"ingest": "cyan", "infer": "magenta", "persist": "green", "notify": "yellow"}


def _conveyor_command() -> str:
    """How to call ``conveyor`` from here: the venv's script, relative where that is shorter."""
    script = Path(sys.executable).parent / "conveyor"
    with_path = shlex.quote(str(script))
    try:
        relative = script.relative_to(Path.cwd())
    except ValueError:
        return with_path
    return shlex.quote(str(relative))


async def run_dev(
    options: EmulatorOptions,
    *,
    http_port: int = 8000,
    user_env: Mapping[str, str] | None = None,
) -> None:
    """Run until Ctrl-C/SIGTERM; raise DevStackError if the stack cannot start or keeps
    failing (the caller turns it into a one-line reason and a non-zero exit)."""
    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    check_port_free(http_port)  # before seconds of start-up, not after

    def echo(name: str, line: str) -> None:
        colour = _COLOURS.get(name.split("-")[0], "white")
        console.print(f"[{colour}]{name:>7}[/] | {escape(line)}", markup=True, soft_wrap=True)

    def event(name: str, message: str) -> None:
        console.print(f"[bold red]{name:>7}[/] ! {escape(message)}", markup=True, soft_wrap=True)

    dev_options = DevOptions(
        http_port=http_port,
        user_env=dict(os.environ if user_env is None else user_env),
        publish=True,
        on_line=echo,
        on_event=event,
    )
    failure: str | None = None
    interrupted = False
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            running: list[DevStack] = []

            async def until_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    break
                interrupted = True
                for dev in running:
                    dev.supervisor.begin_shutdown()
                console.print("stopping ...")
                tg.cancel_scope.cancel()

            # Listening from the start: a Ctrl-C during start-up stops it there.
            tg.start_soon(until_signal)
            try:
                async with Emulator(options) as stack, DevStack(stack, dev_options) as dev:
                    running.append(dev)
                    _banner(console, stack, dev, time.perf_counter() - started)
                    await dev.supervisor.failed.wait()
                    failure = dev.supervisor.failure
                    console.print("stopping the services ...")
            except DevStackError as exc:
                if not interrupted:  # a service cut short by the same Ctrl-C is no failure
                    failure = str(exc)
            tg.cancel_scope.cancel()
    # Raised here, outside the task group, so that it is itself and not a group of one.
    if failure is not None:
        raise DevStackError(failure)
    print("stopped", file=sys.stderr)  # noqa: T201


def _banner(console: Console, stack: Stack, dev: DevStack, elapsed_s: float) -> None:
    if dev.ignored:
        port_hint = " (the port: PORT=...)" if "INGEST_HTTP_PORT" in dev.ignored else ""
        console.print(
            "[yellow]note:[/] the stack sets these itself and ignores your values: "
            f"{', '.join(sorted(dev.ignored))}{port_hint}",
            soft_wrap=True,
        )
    conveyor = _conveyor_command()
    api = dev.api_url
    body = json.dumps({"model": stack.topology.models[0], "inputs": ["hello"]})
    workers = ", ".join(name for name in dev.specs if name.startswith("infer"))
    # A key for this throw-away stack's database, so printing it is fine here.
    console.print(
        f"\n[bold]Conveyor is up[/] in {elapsed_s:.0f}s "
        f"(models: {', '.join(stack.topology.models)}; workers: {workers})\n"
        f"  API:      {api}  (docs: {api}/docs)\n"
        f"  API key:  {dev.api_key}  (tenant dev)\n"
        f"  stack:    {dev.env_file}  (mode 0600; `conveyor` commands use it by "
        "themselves; removed at exit)\n"
        f"  submit:   {conveyor} submit 'some text' --wait 10\n"
        f"  or:       curl -s -X POST {api}/v1/jobs "
        f"-H 'Authorization: Bearer {dev.api_key}' "
        f"-H 'content-type: application/json' -d '{body}'\n"
        f"  status:   {conveyor} status <job id>\n"
        f"  operate:  {conveyor} dlq list | {conveyor} keys list | "
        f"{conveyor} models list\n"
        + "".join(
            f"  [yellow]{model}[/] has no version yet: its jobs are refused until "
            f"{conveyor} models push <dir> --name {model} --version 1\n"
            for model in dev.waiting_models()
        )
        + "  Ctrl-C stops everything.\n",
        markup=True,
        soft_wrap=True,  # the terminal wraps: the key and the commands copy whole
        highlight=False,
    )
