"""A running stack as a developer meets it: a model added later, the CLI, the logs.

Real processes on the emulator (``python -m services.<name>``, each with its own environment
and IAM key), serving three tiny models:

- ``tiny-a``: pushed, with a worker;
- ``tiny-b``: in CONVEYOR_MODELS but not pushed yet: the README's "Extending -> A model" path
  (add the name, push it with ``conveyor models push``, its jobs succeed);
- ``tiny-idle``: pushed, but no worker serves it, so its jobs stay queued.

Every service logs at info, as JSON, with a 1 s activity interval.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from emulator import Stack
from emulator.harness import add_topology
from emulator.processes import ServiceSpec, Supervisor
from emulator.seed import push
from shared.apikeys import create_key
from shared.topology import Topology
from tests.conftest import free_port
from tests.models import TINY_KIND, make_tiny_model
from tests.processes import run_module
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

SERVED = "tiny-a"
LATER = "tiny-b"
IDLE = "tiny-idle"
FAIL_MARKER = "__FAIL__"
DIM = 16
WAITING = "waiting for a deployed version of the model"
LOGS = {
    "SQS_WAIT_S": "1",
    "SHUTDOWN_GRACE_S": "5",
    "LOG_LEVEL": "info",
    "LOG_FORMAT": "json",
    "LOG_SUMMARY_S": "1",
}


@contextmanager
def within(seconds: float, what: Callable[[], str]) -> Iterator[None]:
    """``anyio.fail_after``, failing with what was awaited and what the processes said."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"not within {seconds} s: {what()}") from None


def records(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON log records among a process's lines (anything else is skipped)."""
    found = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


@dataclass
class Running:
    stack: Stack
    supervisor: Supervisor
    api: httpx.AsyncClient
    api_url: str
    api_key: str
    model_dir: Path

    def infer_spec(self, name: str, model: str) -> ServiceSpec:
        env = {
            **self.stack.service_env("infer"),
            **LOGS,
            "INFER_MODEL": model,
            "INFER_HANDLER_MODULES": "tests.models",
        }
        return ServiceSpec(name, "services.infer", env)

    def lines(self, name: str) -> list[str]:
        return list(self.supervisor.processes[name].lines)

    def tail(self, name: str, count: int = 30) -> str:
        return "\n".join(self.lines(name)[-count:])

    async def wait_final(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        def what() -> str:
            tails = "\n".join(
                f"--- {name}\n{self.tail(name)}" for name in self.supervisor.processes
            )
            return f"job {job_id} final\n{tails}"

        with within(timeout, what):
            while True:
                response = await self.api.get(f"/v1/jobs/{job_id}", params={"wait": 10})
                assert response.status_code == 200, response.text
                job: dict[str, Any] = response.json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job

    async def cli(self, *args: str) -> Any:
        env = {
            "CONVEYOR_API_URL": self.api_url,
            "CONVEYOR_API_KEY": self.api_key,
            "CONVEYOR_STACK_ENV": "none",  # never a `make dev` running on this machine
        }
        return await anyio.to_thread.run_sync(run_module, ["conveyor", *args], env)


@pytest.fixture(scope="module")
async def running(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    dstack = await add_topology(
        stack, Topology(prefix="devflow", models=(SERVED, LATER, IDLE)), seed=False
    )
    model_dir = make_tiny_model(tmp_path_factory.mktemp("tiny"), dim=DIM, fail_marker=FAIL_MARKER)
    for name in (SERVED, IDLE):
        await push(dstack.admin, dstack.topology, model_dir, name=name, version="1", kind=TINY_KIND)
    port = free_port()
    conn = await asyncpg.connect(dstack.database_url)
    try:
        api_key, _ = await create_key(conn, "devflow", "test_dev_workflow")
    finally:
        await conn.close()
    specs = [
        ServiceSpec(name, f"services.{name}", {**dstack.service_env(name), **LOGS})
        for name in ("persist", "notify")
    ]
    specs.append(
        ServiceSpec(
            "ingest",
            "services.ingest",
            {**dstack.service_env("ingest"), **LOGS, "INGEST_HTTP_PORT": str(port)},
        )
    )
    api_url = f"http://127.0.0.1:{port}"
    async with (
        Supervisor() as supervisor,
        httpx.AsyncClient(
            base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {api_key}"}
        ) as api,
    ):
        here = Running(dstack, supervisor, api, api_url, api_key, model_dir)
        specs.append(here.infer_spec("infer-a", SERVED))
        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(supervisor.start, spec)
        # "ready" was logged; the port answers too.
        with within(60, lambda: f"/readyz 200\n{here.tail('ingest')}"):
            while True:
                try:
                    if (await api.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.2)
        yield here


async def _wait_for_line(running: Running, name: str, text: str, timeout: float = 90) -> None:
    with within(timeout, lambda: f"{text!r} from {name}\n{running.tail(name)}"):
        while not any(text in line for line in running.lines(name)):
            assert running.supervisor.processes[name].returncode is None, running.tail(name)
            await anyio.sleep(0.2)


# -- a model added later (issue 8, item 7) ---------------------------------------------------


async def test_a_model_without_a_version_is_refused_until_pushed_then_served(
    running: Running,
) -> None:
    # Refused at submit, naming the fix; nothing is recorded.
    response = await running.api.post("/v1/jobs", json={"model": LATER, "inputs": ["too soon"]})
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert f"conveyor models push <dir> --name {LATER} --version 1" in error
    conn = await asyncpg.connect(running.stack.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE model = $1", LATER) == 0
    finally:
        await conn.close()
    # The stack is still ready; it says which model lacks a version.
    ready = await running.api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["models"][SERVED] == "deployed"
    assert "conveyor models push" in ready.json()["models"][LATER]

    # A worker for it waits (it does not crash-loop), and still stops at once on SIGTERM.
    await running.supervisor.start(
        running.infer_spec("infer-b-stopped", LATER), ready_within_s=None
    )
    await _wait_for_line(running, "infer-b-stopped", WAITING)
    began = time.perf_counter()
    code = await running.supervisor.stop("infer-b-stopped", sig=signal.SIGTERM, timeout_s=15)
    assert code == 0, running.tail("infer-b-stopped")
    assert time.perf_counter() - began < 5

    await running.supervisor.start(running.infer_spec("infer-b", LATER), ready_within_s=None)
    await _wait_for_line(running, "infer-b", WAITING)
    await anyio.sleep(4)  # several looks at the bucket, with backoff
    worker = running.supervisor.processes["infer-b"]
    assert worker.returncode is None, running.tail("infer-b")
    logged = records(running.lines("infer-b"))
    assert not [r for r in logged if r.get("event") == "ready"]  # not ready: nothing to serve
    (warning,) = [r for r in logged if r.get("event") == WAITING]  # said once, not per look
    assert warning["level"] == "warning"
    assert f"conveyor models push <dir> --name {LATER}" in warning["why"]

    # Push it as the README says; the worker loads it and a job for it succeeds.
    admin_env = {
        **running.stack.common_env(),
        **running.stack.credential_env("admin"),
        "CONVEYOR_STACK_ENV": "none",
    }
    pushed = await anyio.to_thread.run_sync(
        run_module,
        [
            *("conveyor", "models", "push", str(running.model_dir)),
            *("--name", LATER, "--version", "1", "--kind", TINY_KIND),
        ],
        admin_env,
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    await running.supervisor.wait_ready("infer-b", 60)
    # ingest notices the push within its cache time.
    with within(30, lambda: f"a 202 for {LATER}\n{running.tail('ingest')}"):
        while True:
            response = await running.api.post(
                "/v1/jobs", json={"model": LATER, "inputs": ["now it is here"]}
            )
            if response.status_code != 409:
                break
            await anyio.sleep(0.5)
    assert response.status_code == 202, response.text
    job = await running.wait_final(response.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["model_version"] == "1"
    assert [len(vector) for vector in job["result"]["outputs"]] == [DIM]
    assert (await running.api.get("/readyz")).json()["models"][LATER] == "deployed"


# -- conveyor submit / status (issue 8, item 11) ---------------------------------------------


async def test_submit_wait_json_prints_the_whole_job_and_exits_0(running: Running) -> None:
    texts = ["first text", "second text here"]
    result = await running.cli(
        "submit", *texts, "--model", SERVED, "--wait", "30", "--output", "json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded"
    outputs = job["result"]["outputs"]
    assert [len(vector) for vector in outputs] == [DIM, DIM]
    assert all(isinstance(x, float) for vector in outputs for x in vector)
    stored = (await running.api.get(f"/v1/jobs/{job['id']}")).json()
    assert outputs == stored["result"]["outputs"]

    # status: the same JSON; the default stays a short summary.
    again = await running.cli("status", job["id"], "--output", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == stored
    human = await running.cli("status", job["id"])
    assert human.returncode == 0, human.stderr
    summary = json.loads(human.stdout)
    assert summary["outputs"][0].startswith(f"{DIM} dims: [")
    assert "result" not in summary


async def test_submit_wait_exits_1_with_the_error_when_the_job_fails(running: Running) -> None:
    result = await running.cli(
        "submit", f"please {FAIL_MARKER} now", "--model", SERVED, "--wait", "30"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "failed"
    assert "failed" in result.stderr
    assert FAIL_MARKER in result.stderr


async def test_submit_wait_exits_3_when_the_job_is_not_final_in_time(running: Running) -> None:
    began = time.perf_counter()
    result = await running.cli("submit", "nobody serves this", "--model", IDLE, "--wait", "1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert time.perf_counter() - began < 20
    job = json.loads(result.stdout)
    assert job["status"] == "queued"
    assert f"still queued; `conveyor status {job['id']} --wait N`" in result.stderr
    # A plain read is only a read: exit 0 whatever the state.
    read = await running.cli("status", job["id"], "--output", "json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["status"] == "queued"
    # A refused submission is an error too.
    refused = await running.cli("submit", "x", "--model", "not-served", "--wait", "5")
    assert refused.returncode == 1
    assert "HTTP 422" in refused.stderr


# -- logs: a summary per interval, no line per job (issue 8, item 12) ------------------------


def _activity(running: Running, name: str, since: int) -> dict[str, int]:
    """The counts of ``name``'s activity lines after its first ``since`` lines, summed."""
    summed: dict[str, int] = {}
    for record in records(running.lines(name)[since:]):
        if record.get("event") == "activity":
            assert record["level"] == "info"
            for key, value in record.items():
                if isinstance(value, int) and key != "interval_s":
                    summed[key] = summed.get(key, 0) + value
    return summed


async def test_jobs_log_one_summary_per_interval_and_no_line_each(running: Running) -> None:
    names = ("ingest", "infer-a", "persist", "notify")
    await anyio.sleep(2.5)  # earlier tests' last intervals are reported
    since = {name: len(running.lines(name)) for name in names}
    count = 12
    async with WebhookReceiver(secret=running.stack.webhook_secret) as receiver:
        job_ids = []
        for i in range(count):
            response = await running.api.post(
                "/v1/jobs",
                json={"model": SERVED, "inputs": [f"job {i}"], "callback_url": receiver.url},
            )
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        for job_id in job_ids:
            assert (await running.wait_final(job_id))["status"] == "succeeded"
        await receiver.wait_for_requests(count, timeout=30)
        expected = {
            "ingest": ("accepted", count),
            "infer-a": ("jobs_succeeded", count),
            "persist": ("results_new", count),
            "notify": ("delivered", count),
        }

        def counted() -> str:
            return repr({name: _activity(running, name, since[name]) for name in names})

        with within(15, counted):
            while any(
                _activity(running, name, since[name]).get(key, 0) < value
                for name, (key, value) in expected.items()
            ):
                await anyio.sleep(0.5)
    await anyio.sleep(1.5)  # nothing more may come
    for name, (key, value) in expected.items():
        assert _activity(running, name, since[name])[key] == value, running.tail(name)
        printed = "\n".join(running.lines(name)[since[name] :])
        # The job ids appear in no line at info: per-job lines are debug now.
        assert not [job_id for job_id in job_ids if job_id in printed], running.tail(name)
    assert _activity(running, "ingest", since["ingest"])["relayed"] == count
    assert _activity(running, "infer-a", since["infer-a"])["succeeded"] == count
