"""Helpers for tests about real processes: start, read output until a line, stop."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import anyio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.text import TextReceiveStream

from tests.conftest import PYTHON, REPO, subprocess_env


def run_module(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository, with only ``env`` set; at most 60 s."""
    return subprocess.run(
        [PYTHON, "-m", *args],
        env=subprocess_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Output:
    """Collects a process stream's text so assertions can look at all of it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


async def read_until(
    stream: ByteReceiveStream | None,
    output: Output,
    done: Callable[[str], bool],
    timeout: float,
) -> bool:
    """Append lines to ``output`` until ``done(line)``; False at EOF or after ``timeout`` s."""
    assert stream is not None
    buffer = ""
    with anyio.move_on_after(timeout):
        async for chunk in TextReceiveStream(stream):
            buffer += chunk
            *complete, buffer = buffer.split("\n")
            for line in complete:
                output.lines.append(line)
                if done(line):
                    return True
    if buffer:
        output.lines.append(buffer)
    return False


async def stop(process: Process, timeout: float = 15) -> int:
    """SIGTERM, then wait at most ``timeout`` seconds (SIGKILL after that) and return the code."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    with anyio.move_on_after(timeout):
        return await process.wait()
    process.kill()
    await process.wait()
    raise AssertionError(f"process {process.pid} ignored SIGTERM for {timeout} s")
