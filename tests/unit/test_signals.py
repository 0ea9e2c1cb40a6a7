"""SIGINT and SIGTERM cancel a benchmark's main coroutine, and its clean-up runs (the embedded
PostgreSQL of a killed benchmark outlived it)."""

from __future__ import annotations

import signal
import subprocess

import anyio
import pytest

from emulator.signals import run_until_signalled
from tests.conftest import PYTHON, REPO, subprocess_env

PROGRAM = """
import sys
import anyio
from emulator.signals import run_until_signalled

async def main() -> None:
    try:
        print("ready", flush=True)
        await anyio.sleep(60)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.2)  # a clean-up that awaits, as stopping a stack does
            print("cleaned up", flush=True)

stopped = anyio.run(run_until_signalled, main, lambda sig: print(sig.name, flush=True))
sys.exit(128 + stopped if stopped is not None else 0)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_cancels_main_and_its_clean_up_runs(sig: signal.Signals) -> None:
    with subprocess.Popen(
        [PYTHON, "-c", PROGRAM],
        cwd=REPO,
        env=subprocess_env({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        try:
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(sig)
            out, err = process.communicate(timeout=20)
        finally:
            process.kill()
    assert out.split() == [sig.name, "cleaned", "up"], err
    assert process.returncode == 128 + sig, err


@pytest.mark.anyio
async def test_main_that_ends_by_itself_answers_none() -> None:
    ran: list[str] = []

    async def main() -> None:
        ran.append("main")

    with anyio.fail_after(5):
        assert await run_until_signalled(main) is None
    assert ran == ["main"]
