"""``make dev`` (``conveyor dev``) used as a developer uses it: a real process, the banner's
commands run as printed, a worker SIGKILLed under load, Ctrl-C at the end."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from tests.conftest import PYTHON, REPO, free_port, subprocess_env

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(400)]

JOBS = 40


@dataclass
class DevProcess:
    process: Process
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        with anyio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                if self.process.returncode is not None:
                    raise AssertionError(f"conveyor dev exited first:\n{self.text[-4000:]}")
                await anyio.sleep(0.1)

    def children(self, module: str) -> list[psutil.Process]:
        parent = psutil.Process(self.process.pid)
        return [
            child
            for child in parent.children(recursive=True)
            if module in " ".join(child.cmdline())
        ]


def dev_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The developer's shell: its own TMPDIR and runtime dir (to see what is left behind)."""
    for name in ("tmp", "run"):
        (tmp_path / name).mkdir(exist_ok=True)
    env = subprocess_env(
        {"TMPDIR": str(tmp_path / "tmp"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    )
    del env["CONVEYOR_STACK_ENV"]  # the CLI must find the stack by itself
    env.update(extra)
    return env


@asynccontextmanager
async def conveyor_dev(env: dict[str, str], port: int) -> AsyncIterator[DevProcess]:
    async with await anyio.open_process(
        [PYTHON, "-m", "conveyor", "dev", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    ) as process:
        dev = DevProcess(process)

        async def pump() -> None:
            assert process.stdout is not None
            buffer = ""
            async for chunk in TextReceiveStream(process.stdout, errors="replace"):
                buffer += chunk
                *complete, buffer = buffer.split("\n")
                dev.lines.extend(complete)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                yield dev
            finally:
                if process.returncode is None:
                    process.kill()
                tg.cancel_scope.cancel()


def left_in(tmp: Path) -> list[str]:
    """What is left in a TMPDIR; pgserver's empty ``runtime-<uid>`` lock folder is its own."""
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith("runtime-"))


def run_cli(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command line as a developer types it, in the repository."""
    return subprocess.run(  # noqa: S602 - the banner's own command, run as printed
        command,
        shell=True,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_make_dev_end_to_end_as_a_developer_uses_it(tmp_path: Path) -> None:
    port = free_port()
    env = dev_env(
        tmp_path,
        LOG_FORMAT="json",
        INFER_MAX_BATCH_WAIT_S="0.05",
        SQS_WAIT_S="1",
        SHUTDOWN_GRACE_S="5",
        AWS_ACCESS_KEY_ID="AKIAUSERSOWNKEY0000",
        AWS_SECRET_ACCESS_KEY="users-own-secret-not-for-the-stack",
    )
    async with conveyor_dev(env, port) as dev:
        await dev.wait_for(r"Conveyor is up", timeout=180)
        # "up" means the API answers on the announced address, now.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert (await http.get("/readyz")).status_code == 200

            # The stack's environment: one private file, where the banner says.
            env_file = Path((await dev.wait_for(r"stack:\s+(\S+)", 5))[1])
            assert env_file.stat().st_mode & 0o777 == 0o600
            state_dir = env_file.parent
            assert (state_dir / "models").is_dir()  # infer's model cache lives in the stack's dir
            values = dict(
                line.removeprefix("export ").split("=", 1)
                for line in env_file.read_text().splitlines()
            )
            assert values["CONVEYOR_API_URL"] == f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {values['CONVEYOR_API_KEY']}"}

            # The banner's commands work as printed, with no secret copied by hand.
            submit = (await dev.wait_for(r"submit:\s+(.+)$", 5))[1]
            done = await anyio.to_thread.run_sync(run_cli, submit, env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert '"status": "succeeded"' in done.stdout
            assert f"using the dev stack at http://127.0.0.1:{port}" in done.stderr
            for command in ("dlq list", "keys list", "webhooks list", "models list"):
                result = await anyio.to_thread.run_sync(
                    run_cli, f"{PYTHON} -m conveyor {command}", env
                )
                assert result.returncode == 0, (command, result.stdout, result.stderr)
            assert "all-minilm-l6-v2" in result.stdout  # models list

            # The user's settings reached the services; the user's AWS key did not.
            assert re.search(r"infer \| \{.*\"event\": \"ready\"", dev.text), "LOG_FORMAT=json"
            assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in dev.text
            assert "users-own-secret" not in dev.text
            for child in dev.children("services."):
                assert "AKIAUSERSOWNKEY0000" not in child.environ().values()
            infer_env = dev.children("services.infer")[0].environ()
            assert infer_env["INFER_MAX_BATCH_WAIT_S"] == "0.05"
            # torch shares the machine with the stack: its share per batch, unless the user says.
            assert infer_env["INFER_SHARED_JOB_COST"] == "2"
            assert "INFER_TORCH_THREADS" not in infer_env
            assert "DATABASE_URL" not in infer_env

            # SIGKILL the worker under load: reported, restarted, nothing lost.
            async def submit_one(i: int, ids: list[str]) -> None:
                body = {"model": "all-minilm-l6-v2", "inputs": [f"text number {i}"]}
                response = await http.post("/v1/jobs", json=body, headers=headers)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])

            ids: list[str] = []
            async with anyio.create_task_group() as tg:
                for i in range(JOBS):
                    tg.start_soon(submit_one, i, ids)
                    if i == JOBS // 4:
                        for victim in dev.children("services.infer"):
                            victim.send_signal(signal.SIGKILL)
            await dev.wait_for(r"infer ! exited unexpectedly \(killed by SIGKILL\)", 10)
            await dev.wait_for(r"infer ! restarted and ready", 60)
            statuses = []
            for job_id in ids:
                for _ in range(10):  # bounded: 10 waits of up to 10 s
                    job = (
                        await http.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=headers)
                    ).json()
                    if job["status"] in ("succeeded", "failed", "cancelled"):
                        break
                statuses.append(job["status"])
            assert statuses == ["succeeded"] * JOBS

        # Ctrl-C: everything stops and nothing is left behind.
        dev.process.send_signal(signal.SIGINT)
        with anyio.fail_after(60):
            code = await dev.process.wait()
        assert code == 0, dev.text[-3000:]
    assert not state_dir.exists()
    assert left_in(tmp_path / "tmp") == []  # no model cache, no database directory
    assert list((tmp_path / "run" / "conveyor").iterdir()) == []  # the pointer is gone


async def test_a_model_added_under_make_dev_is_refused_until_pushed_then_served(
    tmp_path: Path,
) -> None:
    """The README's "add your own model" path, under make dev, as printed."""
    from services.infer.manifest import default_model_dir

    port = free_port()
    env = dev_env(tmp_path, CONVEYOR_MODELS="all-minilm-l6-v2,my-model", SQS_WAIT_S="1")
    async with conveyor_dev(env, port) as dev:
        await dev.wait_for(r"Conveyor is up", timeout=180)
        hint = await dev.wait_for(r"my-model has no version yet: .*(conveyor models push.*)$", 5)
        assert "--name my-model --version 1" in hint[1]
        # Its worker runs (waiting): one per model.
        assert len(dev.children("services.infer")) == 2

        refused = await anyio.to_thread.run_sync(
            run_cli, f"{PYTHON} -m conveyor submit hello --model my-model --wait 5", env
        )
        assert refused.returncode == 1
        assert "HTTP 409" in refused.stderr
        assert "conveyor models push" in refused.stderr

        pushed = await anyio.to_thread.run_sync(
            run_cli,
            f"{PYTHON} -m conveyor models push {default_model_dir()} --name my-model --version 1",
            env,
        )
        assert pushed.returncode == 0, pushed.stderr
        await dev.wait_for(r"infer-my-model \| .*\bready\b", 60)
        served = None
        for _ in range(10):  # bounded: ingest notices the push within its 2 s cache
            served = await anyio.to_thread.run_sync(
                run_cli, f"{PYTHON} -m conveyor submit hello --model my-model --wait 30", env
            )
            if "HTTP 409" not in served.stderr:
                break
            await anyio.sleep(1)
        assert served is not None
        assert served.returncode == 0, served.stdout + served.stderr
        assert '"status": "succeeded"' in served.stdout
        dev.process.send_signal(signal.SIGINT)
        with anyio.fail_after(60):
            assert await dev.process.wait() == 0


async def test_ctrl_c_during_start_up_stops_everything_cleanly(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole terminal group: make dev and the services it is starting."""
    process = await anyio.open_process(
        [PYTHON, "-m", "conveyor", "dev", "--port", str(free_port())],
        env=dev_env(tmp_path),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, as a terminal gives it
    )
    async with process:
        output = b""
        assert process.stdout is not None
        try:
            with anyio.fail_after(120):
                while b"infer |" not in output:  # the services are starting
                    output += await process.stdout.receive()
            os.killpg(process.pid, signal.SIGINT)
            with anyio.fail_after(60):
                async for chunk in process.stdout:
                    output += chunk
                code = await process.wait()
        finally:
            if process.returncode is None:  # never leave a stack behind a failed test
                os.killpg(process.pid, signal.SIGKILL)
    text = output.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "Conveyor is up" not in text
    assert "exited before it was ready" not in text
    assert text.rstrip().endswith("stopped")
    assert left_in(tmp_path / "tmp") == []


async def test_a_busy_port_stops_make_dev_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = await anyio.to_thread.run_sync(
            run_cli, f"{PYTHON} -m conveyor dev --port {port}", dev_env(tmp_path)
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"dev: port {port} on 127.0.0.1 is already in use: stop what holds it, "
        "or choose another port (make dev PORT=8080)"
    )
    assert "Conveyor is up" not in result.stderr


async def test_a_service_that_cannot_start_stops_the_stack_with_the_reason(
    tmp_path: Path,
) -> None:
    # No CUDA here: the infer worker refuses to start, so the stack must not say "up".
    env = dev_env(tmp_path, INFER_DEVICE="cuda")
    result = await anyio.to_thread.run_sync(
        run_cli, f"{PYTHON} -m conveyor dev --port {free_port()}", env
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Conveyor is up" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(r"dev: infer exited before it was ready \(exit code \d\)$", last), last
    assert left_in(tmp_path / "tmp") == []
