"""Fixtures shared by every test: one emulator stack per session (moto + embedded PostgreSQL)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulator import Emulator, Stack

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    """The default topology on moto (IAM enforced) and a fresh embedded PostgreSQL."""
    async with Emulator() as running:
        yield running


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No Conveyor or AWS variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(
            (
                "AWS_",
                "CONVEYOR_",
                "DATABASE_URL",
                "INGEST_",
                "INFER_",
                "PERSIST_",
                "NOTIFY_",
                "ADMIN_",
            )
        ):
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment for a child process: PATH, Python's own, and ``extra``."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    # A `make dev` stack running on this machine must not capture a test's commands.
    env["CONVEYOR_STACK_ENV"] = "none"
    env.update(extra)
    return env


PYTHON = sys.executable


def run_python(
    code: str, env: dict[str, str] | None = None, *, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in the repository with :func:`subprocess_env`, output captured."""
    return subprocess.run(
        [PYTHON, "-c", code],
        env=subprocess_env(env or {}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
