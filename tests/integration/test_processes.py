"""The services and the standalone emulator as real processes."""

import os
import shlex
import subprocess
from pathlib import Path

import anyio
import anyio.abc
import h11
import psutil
import pytest

from emulator import Stack
from tests.conftest import PYTHON, REPO, free_port, subprocess_env
from tests.processes import Output, read_until, stop

pytestmark = pytest.mark.anyio

SERVICES = ["ingest", "infer", "persist", "notify"]


def run_service(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", f"services.{service}"],
        env=subprocess_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("service", "env", "expected"),
    [
        ("ingest", {}, "INGEST_DATABASE_URL or DATABASE_URL is not set"),
        ("persist", {"DATABASE_URL": "http://db"}, "the scheme must be postgresql://"),
        (
            "notify",
            {"DATABASE_URL": "postgresql://h/db", "AWS_ENDPOINT_URL": "::"},
            "AWS_ENDPOINT_URL",
        ),
        ("infer", {"INFER_MODEL": "unknown-model"}, "INFER_MODEL='unknown-model' is not one of"),
    ],
)
def test_bad_configuration_stops_the_service_at_start(
    service: str, env: dict[str, str], expected: str
) -> None:
    result = run_service(service, env)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_metrics_port_in_use_stops_the_service_with_one_line(stack: Stack) -> None:
    """Many services on one host network (compose/offline.yaml) make this a common mistake."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_service("persist", {**stack.service_env("persist"), "METRICS_PORT": str(port)})
    assert result.returncode == 2, result.stderr
    assert "cannot serve metrics" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("service", SERVICES)
async def test_service_starts_with_its_own_keys_and_stops_on_sigterm(
    stack: Stack, service: str
) -> None:
    async with await anyio.open_process(
        [PYTHON, "-m", f"services.{service}"],
        env=subprocess_env(stack.service_env(service)),
        cwd=REPO,
    ) as process:
        output = Output()
        ready = await read_until(process.stderr, output, lambda line: "ready" in line, 30)
        assert ready, output.text
        assert await stop(process) == 0
        await read_until(process.stderr, output, lambda _: False, 5)
        assert "stopped" in output.text


async def test_a_second_signal_does_not_cut_the_drain_short(stack: Stack) -> None:
    """Ctrl-C reaches every process of the terminal, then the supervisor sends SIGTERM."""
    import signal

    async with await anyio.open_process(
        [PYTHON, "-m", "services.persist"],
        env=subprocess_env(stack.service_env("persist")),
        cwd=REPO,
    ) as process:
        output = Output()
        assert await read_until(process.stderr, output, lambda line: "ready" in line, 30)
        await anyio.sleep(2)  # now in a long poll (SQS_WAIT_S=5): the drain waits for it
        # Both at once, as a terminal's Ctrl-C and a supervisor's SIGTERM can be: the second
        # always finds the first's drain under way (a drain between two polls is quick, and a
        # pause here could let it finish first).
        process.send_signal(signal.SIGINT)
        assert await stop(process) == 0
        await read_until(process.stderr, output, lambda _: False, 5)
    assert "already stopping" in output.text
    assert "consumer stopped" in output.text
    assert "stopped" in output.lines[-1]


async def _get(conn: anyio.abc.SocketStream, client: h11.Connection, target: str) -> int:
    """One GET on an open connection; the status once the whole answer is read (an answer may
    come in several segments: the headers and the body apart, as CI once saw)."""
    request = h11.Request(method="GET", target=target, headers=[("Host", "127.0.0.1")])
    await conn.send(client.send(request) + client.send(h11.EndOfMessage()))
    status = 0
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await conn.receive())
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            return status


async def test_ingest_keeps_an_idle_connection_as_long_as_it_is_told(stack: Stack) -> None:
    """INGEST_KEEP_ALIVE_S reaches the server: a reused connection is served, an idle one is
    closed after that long (the default, 75 s, outlasts clients' 5 s; see services.ingest)."""
    port = free_port()
    env = {**stack.service_env("ingest"), "INGEST_HTTP_PORT": str(port), "INGEST_KEEP_ALIVE_S": "1"}
    async with await anyio.open_process(
        [PYTHON, "-m", "services.ingest"], env=subprocess_env(env), cwd=REPO
    ) as process:
        output = Output()
        try:
            # The API's own line ("job_finished listener ready" may come first).
            listening = f"127.0.0.1:{port}"
            assert await read_until(process.stderr, output, lambda line: listening in line, 30)
            with anyio.fail_after(10):
                async with await anyio.connect_tcp("127.0.0.1", port) as conn:
                    client = h11.Connection(h11.CLIENT)
                    for _ in range(2):  # the second request on the same connection
                        status = await _get(conn, client, "/healthz")
                        assert status == 200, output.text
                        client.start_next_cycle()
                        await anyio.sleep(0.3)
                    idle_from = anyio.current_time()
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await conn.receive()
                    assert anyio.current_time() - idle_from < 3
        finally:
            assert await stop(process) == 0, output.text


async def test_missing_queue_at_start_says_how_to_fix(stack: Stack) -> None:
    env = stack.service_env("notify") | stack.credential_env("admin")
    env["NOTIFY_AWS_ACCESS_KEY_ID"] = env.pop("ADMIN_AWS_ACCESS_KEY_ID")
    env["NOTIFY_AWS_SECRET_ACCESS_KEY"] = env.pop("ADMIN_AWS_SECRET_ACCESS_KEY")
    env["CONVEYOR_PREFIX"] = "never-provisioned"
    result = await anyio.to_thread.run_sync(run_service, "notify", env)
    assert result.returncode == 1
    assert "'never-provisioned-notify' does not exist" in result.stderr
    assert "conveyor provision" in result.stderr


def _postgres_processes(data_dir: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(data_dir in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


async def test_standalone_emulator_prints_exports_and_cleans_up(tmp_path: Path) -> None:
    env_file = tmp_path / "stack.env"
    async with await anyio.open_process(
        [PYTHON, "-m", "emulator", "--env-file", str(env_file)],
        env=subprocess_env({}),
        cwd=REPO,
    ) as process:
        output = Output()
        got_all = await read_until(
            process.stdout, output, lambda line: line.startswith("export ADMIN_AWS_SECRET"), 60
        )
        assert got_all, output.text
        # As a shell reads them: values are quoted (a database URL holds "?").
        exports = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1)
            for line in output.lines
            if line
        )
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert exports["AWS_REGION"] == "us-east-1"
        assert exports["ADMIN_DATABASE_URL"].startswith("postgresql://")
        for service in [*SERVICES, "admin"]:
            prefix = service.upper()
            assert exports[f"{prefix}_AWS_ACCESS_KEY_ID"]
            assert exports[f"{prefix}_AWS_SECRET_ACCESS_KEY"]
        assert env_file.stat().st_mode & 0o777 == 0o600
        data_dir = exports["ADMIN_DATABASE_URL"].split("host=", 1)[1]
        assert os.path.isdir(data_dir)
        assert _postgres_processes(data_dir), "the embedded PostgreSQL should be running"

        assert await stop(process, timeout=20) == 0
    assert not env_file.exists()
    assert not os.path.exists(data_dir)
    with anyio.fail_after(10):
        while _postgres_processes(data_dir):
            await anyio.sleep(0.2)
