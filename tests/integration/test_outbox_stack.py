"""The whole stack through an SQS outage: jobs accepted while ingest cannot reach SQS complete
once it can again.

The four services run as processes (tiny model); ingest reaches the emulator through a TCP
proxy on 127.0.0.1 that the test switches off (every connection is cut and refused) and on.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import httpx
import pytest
from anyio import CancelScope
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from emulator import Stack
from emulator.devstack import DevOptions, DevStack
from emulator.harness import add_topology
from emulator.processes import Supervisor
from emulator.seed import push
from shared.topology import Topology
from tests.models import make_tiny_model

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

TINY = "tiny"


class Switch:
    """A TCP proxy to ``host:port`` that can be cut: :meth:`down` closes every connection and
    refuses new ones until :meth:`up`."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listen_port = 0
        self.is_up = True
        self._scopes: set[CancelScope] = set()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            self.listen_port = listener.extra(SocketAttribute.local_port)  # noqa: S610
            task_status.started()
            await listener.serve(self._handle)

    def down(self) -> None:
        self.is_up = False
        for scope in list(self._scopes):
            scope.cancel()

    def up(self) -> None:
        self.is_up = True

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if not self.is_up:
                return
            try:
                upstream = await anyio.connect_tcp(self.host, self.port)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                self._scopes.add(tg.cancel_scope)
                tg.start_soon(self._pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pipe, upstream, client, tg.cancel_scope)
            self._scopes.discard(tg.cancel_scope)

    @staticmethod
    async def _pipe(src: SocketStream, dst: SocketStream, scope: CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()


@pytest.fixture
async def switched(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, Switch, Supervisor, httpx.AsyncClient]]:
    ostack = await add_topology(stack, Topology(prefix="ostk", models=(TINY,)), seed=False)
    tiny_dir = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    await push(
        ostack.admin, ostack.topology, tiny_dir, name=TINY, version="1", kind="test-tiny-embedding"
    )
    assert ostack.endpoint.url is not None
    target = urllib.parse.urlsplit(ostack.endpoint.url)
    assert target.hostname is not None and target.port is not None
    switch = Switch(target.hostname, target.port)
    fast = {"SQS_WAIT_S": "1", "SHUTDOWN_GRACE_S": "5"}
    async with anyio.create_task_group() as tg:
        await tg.start(switch.serve)
        extra = {
            "ingest": {**fast, "INGEST_AWS_ENDPOINT_URL": f"http://127.0.0.1:{switch.listen_port}"},
            "infer": {**fast, "INFER_HANDLER_MODULES": "tests.models"},
            "persist": fast,
            "notify": fast,
        }
        tenant = f"ostk-{uuid.uuid4().hex[:8]}"
        async with (
            DevStack(ostack, DevOptions(http_port=0, extra=extra, tenant=tenant)) as dev,
            httpx.AsyncClient(
                base_url=dev.api_url,
                timeout=30,
                headers={"Authorization": f"Bearer {dev.api_key}"},
            ) as api,
        ):
            yield ostack, switch, dev.supervisor, api
        tg.cancel_scope.cancel()


async def submit(api: httpx.AsyncClient, text: str) -> str:
    response = await api.post("/v1/jobs", json={"model": TINY, "inputs": [text]})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def final(api: httpx.AsyncClient, job_id: str, timeout: float) -> str:
    with anyio.fail_after(timeout):
        while True:
            response = await api.get(f"/v1/jobs/{job_id}", params={"wait": 5})
            assert response.status_code == 200, response.text
            status = str(response.json()["status"])
            if status in ("succeeded", "failed", "cancelled"):
                return status


async def test_jobs_accepted_during_an_outage_complete_after_it(
    switched: tuple[Stack, Switch, Supervisor, httpx.AsyncClient],
) -> None:
    ostack, switch, _supervisor, api = switched
    assert await final(api, await submit(api, "before"), 60) == "succeeded"

    switch.down()
    with anyio.fail_after(60):
        job_ids = [await submit(api, f"during {i}") for i in range(20)]
    await anyio.sleep(2)  # the relay tries; its sends cannot connect
    conn = await asyncpg.connect(ostack.database_url)
    try:
        ids = [uuid.UUID(j) for j in job_ids]
        unsent = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE job_id = ANY($1::uuid[]) AND sent_at IS NULL", ids
        )
        statuses = await conn.fetch("SELECT status FROM jobs WHERE id = ANY($1::uuid[])", ids)
        assert unsent == 20
        assert {row["status"] for row in statuses} == {"queued"}

        switch.up()
        for job_id in job_ids:
            assert await final(api, job_id, 90) == "succeeded"
        unsent = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE job_id = ANY($1::uuid[]) AND sent_at IS NULL", ids
        )
        assert unsent == 0
    finally:
        await conn.close()
