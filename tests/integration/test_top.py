"""``conveyor top`` against a running stack, with the observer's read-only permissions only."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import asyncpg
import httpx
import pytest
from botocore.exceptions import ClientError
from rich.console import Console

from conveyor.top import render, take_snapshot
from emulator import Stack
from emulator.devstack import DevOptions, DevStack
from emulator.harness import add_topology
from emulator.seed import push
from shared.aws import AwsClients
from shared.topology import Topology
from tests.conftest import PYTHON, REPO, subprocess_env
from tests.models import make_tiny_model
from tests.processes import run_module
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

TINY = "toptiny"  # a model of its own: the session database holds other tests' jobs
DONE = 5
WAITING = 3


@dataclass
class Watched:
    stack: Stack
    dev: DevStack

    def observer_env(self) -> dict[str, str]:
        """What an operator with read-only rights has: no admin or service credential."""
        return {**self.stack.common_env(), **self.stack.credential_env("observer")}


@pytest.fixture(scope="module")
async def watched(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Watched]:
    tstack = await add_topology(stack, Topology(prefix="topv", models=(TINY,)), seed=False)
    model = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    await push(
        tstack.admin, tstack.topology, model, name=TINY, version="1", kind="test-tiny-embedding"
    )
    fast = {"SQS_WAIT_S": "1", "SHUTDOWN_GRACE_S": "5"}
    extra = {
        "infer": {**fast, "INFER_HANDLER_MODULES": "tests.models"},
        "ingest": fast,
        "persist": fast,
        "notify": {**fast, "NOTIFY_RETRY_SCHEDULE_S": "0.2,0.2"},
    }
    options = DevOptions(http_port=0, extra=extra, tenant="topv")
    async with (
        WebhookReceiver(secret=tstack.webhook_secret, replies=[500, 200]) as receiver,
        DevStack(tstack, options) as dev,
        httpx.AsyncClient(
            base_url=dev.api_url, timeout=30, headers={"Authorization": f"Bearer {dev.api_key}"}
        ) as api,
    ):

        async def submit(text: str, callback: str | None = None) -> str:
            body = {"model": TINY, "inputs": [text], "callback_url": callback}
            response = await api.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        done = [await submit(f"done {i}", receiver.url if i == 0 else None) for i in range(DONE)]
        with anyio.fail_after(60):
            for job_id in done:
                while (await api.get(f"/v1/jobs/{job_id}", params={"wait": 5})).json()[
                    "status"
                ] != "succeeded":
                    pass
            await receiver.wait_for_requests(2, timeout=30)  # a 500, then the delivery
        # A dead letter, and jobs waiting for a worker that is gone.
        async with AwsClients(tstack.admin) as clients:
            sqs = await clients.sqs()
            dlq = tstack.provisioned.queue_urls[tstack.topology.infer_queue(TINY).dlq_name]
            await sqs.send_message(QueueUrl=dlq, MessageBody="{not json")
        assert await dev.supervisor.stop("infer") == 0
        for i in range(WAITING):
            await submit(f"waiting {i}")
        await anyio.sleep(1.5)  # the relay sends them
        yield Watched(tstack, dev)


async def observe(watched: Watched) -> tuple[str, object]:
    stack = watched.stack
    async with AwsClients(stack.aws_settings("observer")) as clients:
        sqs = await clients.sqs()
        conn = await asyncpg.connect(stack.database_logins["observer"])
        try:
            snapshot = await take_snapshot(
                sqs, stack.aws_settings("observer"), stack.topology, conn
            )
        finally:
            await conn.close()
    console = Console(record=True, width=160, color_system=None)
    console.print(render(snapshot))
    return console.export_text(), snapshot


async def test_the_view_shows_queues_jobs_latency_and_webhooks(watched: Watched) -> None:
    text, snapshot = await observe(watched)
    queue = next(q for q in snapshot.queues if q.name == "topv-infer-toptiny")  # type: ignore[attr-defined]
    assert (queue.visible + queue.in_flight, queue.dlq_visible) == (WAITING, 1)
    assert queue.oldest_wait_s is not None and queue.oldest_wait_s > 0
    (jobs,) = snapshot.jobs  # type: ignore[attr-defined]
    assert (jobs.model, jobs.queued, jobs.running) == (TINY, WAITING, 0)
    assert jobs.finished == {"succeeded": DONE}
    hops = {hop.hop: hop for hop in snapshot.latency}  # type: ignore[attr-defined]
    assert hops["accepted -> final"].count == DONE
    assert hops["final -> webhook"].count == 1
    assert {o.outcome: o.attempts for o in snapshot.webhooks} == {"500": 1, "delivered": 1}  # type: ignore[attr-defined]

    # What a person sees: every queue and its DLQ, and the counts.
    lines = text.splitlines()
    row = next(line for line in lines if line.lstrip("│ ").startswith("topv-infer-toptiny"))
    cells = [cell.strip() for cell in row.split("│")[1:8]]
    assert cells[:4] == ["topv-infer-toptiny", str(queue.visible), str(queue.in_flight), "0"]
    assert cells[4].endswith(("ms", " s", "min"))  # the oldest job's wait
    assert cells[5:] == ["1", "0"]  # the DLQ
    for name in ("topv-results", "topv-notify"):
        assert any(name in line for line in lines)
    tiny_row = next(line for line in lines if line.lstrip("│ ").startswith(f"{TINY} "))
    assert [cell.strip() for cell in tiny_row.split("│")[1:8]] == [
        TINY,
        "0",
        str(WAITING),
        "0",
        str(DONE),
        "0",
        "0",
    ]
    assert any("delivered" in line and line.rstrip(" │").endswith("1") for line in lines)


async def test_the_observer_can_read_nothing_else(watched: Watched) -> None:
    stack = watched.stack
    async with AwsClients(stack.aws_settings("observer")) as clients:
        sqs = await clients.sqs()
        url = stack.provisioned.queue_urls[stack.topology.infer_queue(TINY).name]
        with pytest.raises(ClientError, match=r"AccessDenied"):
            await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
        s3 = await clients.s3()
        with pytest.raises(ClientError, match=r"AccessDenied|Forbidden|403"):
            await s3.list_objects_v2(Bucket=stack.topology.models_bucket.name)
    conn = await asyncpg.connect(stack.database_logins["observer"])
    try:
        for query in (
            "SELECT callback_url FROM jobs LIMIT 1",
            "SELECT tenant_id FROM jobs LIMIT 1",
            "SELECT outputs FROM results LIMIT 1",
            "SELECT key_hash FROM api_keys LIMIT 1",
            "SELECT url FROM webhook_deliveries LIMIT 1",
            "SELECT body FROM outbox LIMIT 1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(query)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE jobs SET status = 'failed' WHERE id = $1", uuid.uuid4())
    finally:
        await conn.close()


async def test_conveyor_top_once_as_a_process(watched: Watched) -> None:
    env = watched.observer_env()
    result = await anyio.to_thread.run_sync(run_module, ["conveyor", "top", "--once"], env)
    assert result.returncode == 0, result.stderr
    assert "topv-infer-toptiny" in result.stdout
    assert "topv-notify-dlq" not in result.stdout  # a DLQ is a column of its queue's row
    assert "latency per hop" in result.stdout


def test_conveyor_top_live_in_a_terminal(watched: Watched) -> None:
    """The live view in a pseudo-terminal: it refreshes, and Ctrl-C leaves it cleanly."""
    primary, secondary = pty.openpty()
    env = {**subprocess_env(watched.observer_env()), "TERM": "xterm-256color", "COLUMNS": "160"}
    process = subprocess.Popen(
        [PYTHON, "-m", "conveyor", "top", "--interval", "0.3"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        cwd=REPO,
    )
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and seen.count(b"topv-infer-toptiny") < 3:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(primary, 65536)
                except OSError:
                    break
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert seen.count(b"topv-infer-toptiny") >= 3, seen[-2000:]  # first view and two refreshes
    assert b"Traceback" not in seen
