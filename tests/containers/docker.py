"""The Docker engine and Compose, as the container tests use them: found or not (with the
reason), the images built, a Compose project of compose/offline.yaml run and torn down.

Every command goes through :func:`docker` with a bound time. Nothing here creates a Docker
network: the project's services all run with ``network_mode: host``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import REPO

__all__ = [
    "IMAGES",
    "Compose",
    "build_images",
    "compose_unavailable_reason",
    "docker",
    "engine_unavailable_reason",
    "image_info",
    "networks",
    "project_version",
]

IMAGES = ("ingest", "persist", "notify", "provision", "infer")
BUILD_TIMEOUT_S = 1500
COMMAND_TIMEOUT_S = 120


def docker(
    *args: str,
    timeout: float = COMMAND_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def compose_unavailable_reason() -> str | None:
    """Why ``docker compose`` cannot run here (it needs the plugin, not an engine), or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    if docker("compose", "version", timeout=20, check=False).returncode != 0:
        return "Docker Compose v2 (the docker compose plugin) is not installed"
    return None


def engine_unavailable_reason() -> str | None:
    """Why the container tests cannot run here, or None when an engine and Compose answer."""
    if shutil.which("docker") is None:
        return "no docker command"
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)
    if info.returncode != 0:
        return f"no Docker engine answers: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    return compose_unavailable_reason()


def networks() -> set[str]:
    listed = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    return set(listed)


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
    return version


def build_images() -> float:
    """``make images``' script (cached layers make a rebuild of unchanged code quick); seconds."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(REPO / "compose" / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return time.monotonic() - started


def image_info(reference: str) -> dict[str, Any]:
    inspected: list[dict[str, Any]] = json.loads(docker("image", "inspect", reference).stdout)
    return inspected[0]


@dataclass
class Compose:
    """One project of compose/offline.yaml: ``docker compose -p NAME --env-file ENV -f ...``."""

    name: str
    env_file: Path
    overrides: dict[str, str] = field(default_factory=dict)
    """Interpolation values that win over the env file's (ports, log format)."""
    file: Path = REPO / "compose" / "offline.yaml"

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        base = ["compose", "-p", self.name, "--env-file", str(self.env_file), "-f", str(self.file)]
        return docker(*base, *args, timeout=timeout, env=self.overrides).stdout

    def container(self, service: str) -> str:
        return self.run("ps", "--all", "--quiet", service).strip()

    def state(self, service: str) -> dict[str, Any]:
        inspected = json.loads(docker("inspect", self.container(service)).stdout)
        state: dict[str, Any] = inspected[0]["State"]
        return state

    def log_events(self, service: str) -> list[dict[str, Any]]:
        """The service's JSON log lines (LOG_FORMAT=json), oldest first."""
        output = docker("logs", self.container(service)).stdout
        output += docker("logs", self.container(service)).stderr
        events = []
        for line in output.splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return sorted(events, key=lambda e: str(e.get("timestamp", "")))

    def logs(self, services: Sequence[str] = ()) -> str:
        return self.run("logs", "--no-color", "--tail", "40", *services)


def parse_time(value: str) -> datetime:
    """Docker's and structlog's ISO times (nanoseconds and a Z suffix included)."""
    value = value.replace("Z", "+00:00")
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        value = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(value)
