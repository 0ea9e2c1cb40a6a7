"""The ingest HTTP API against a real PostgreSQL, without SQS.

The API never calls SQS: an accepted job and its message are written to the ``outbox`` table
in one transaction, and the relay sends them (``test_outbox.py``). ``Api.outbox()`` reads that
table; ``Api.sent`` records what the ``enqueue`` hook was told after each commit (what the relay
will send). Requests carry a real API key of a tenant made for the test (authentication
itself: ``test_auth.py``).
"""

import base64
import functools
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from emulator import Stack
from services.ingest.api import JobWaiters, create_app
from shared import vectors
from shared.apikeys import create_key
from shared.config import IngestSettings
from shared.errors import AwsUnavailable
from shared.messages import Envelope, JobRequest, MessageType, decode_envelope
from shared.metrics import HOP_DURATION

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
MAX_INPUTS = 4
MAX_INPUT_CHARS = 50
MAX_BODY_BYTES = 4096
MAX_WAIT_S = 5.0


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    tenant: str
    """The tenant of the key the client sends."""
    key: str
    sent: list[Envelope] = field(default_factory=list)

    async def outbox(self, tenant: str | None = None) -> list[Envelope]:
        """The messages the tenant's jobs wrote to the outbox, oldest first."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT o.body FROM outbox o JOIN jobs j ON j.id = o.job_id "
                "WHERE j.tenant_id = $1 ORDER BY o.id",
                tenant or self.tenant,
            )
        return [decode_envelope(row["body"]) for row in rows]

    @property
    def waiters(self) -> JobWaiters:
        waiters: JobWaiters = self.app.state.job_waiters
        return waiters

    async def rows(self, tenant: str | None = None) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return await conn.fetch(
                "SELECT * FROM jobs WHERE tenant_id = $1", tenant or self.tenant
            )

    async def submit(self, **body: Any) -> uuid.UUID:
        response = await self.client.post("/v1/jobs", json={"model": MODEL, **body})
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["id"])

    async def new_key(self, tenant: str, name: str = "") -> str:
        async with self.pool.acquire() as conn:
            key, _record = await create_key(conn, tenant, name)
        return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def running(
    stack: Stack,
    *,
    enqueue: Callable[[Envelope], Any] | None = None,
    check_queues: Callable[[], Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Api]:
    """The app with its lifespan entered, on a pool of its own; the client sends the key of a
    tenant of its own."""
    settings = IngestSettings(
        database_url=stack.database_url,
        conveyor_models=(MODEL,),
        max_inputs=MAX_INPUTS,
        max_input_chars=MAX_INPUT_CHARS,
        max_body_bytes=MAX_BODY_BYTES,
        max_wait_s=MAX_WAIT_S,
        **overrides,
    )
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    sent: list[Envelope] = []

    async def record(envelope: Envelope) -> None:
        sent.append(envelope)

    async def queues_ok() -> None:
        return None

    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            key, _record = await create_key(conn, tenant, "test_ingest_api")
        app = create_app(
            settings, pool=pool, enqueue=enqueue or record, check_queues=check_queues or queues_ok
        )
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=transport, base_url="http://testserver", headers=bearer(key)
            ) as client,
        ):
            yield Api(app=app, client=client, pool=pool, tenant=tenant, key=key, sent=sent)
    finally:
        with anyio.fail_after(10):
            await pool.close()


@pytest.fixture
async def api(stack: Stack, clean_env: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with running(stack) as running_api:
        yield running_api


async def finish(
    pool: asyncpg.Pool, job_id: uuid.UUID, outputs: Any, *, notify: bool, packed: bool = True
) -> None:
    """Finalise a job as the persist service does: row, result and notification at once.
    ``packed=False`` stores the outputs as a result row from before packed vectors (jsonb)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            UPDATE jobs SET status = 'succeeded', model_version = 'v1',
                started_at = now(), finished_at = now(), updated_at = now()
            WHERE id = $1
            """,
            job_id,
        )
        if packed:
            data, dim = vectors.pack(outputs)
            await conn.execute(
                "INSERT INTO results (job_id, vectors, dimensions, model_version, batch_size) "
                "VALUES ($1, $2, $3, 'v1', 1)",
                job_id,
                data,
                dim,
            )
        else:
            await conn.execute(
                "INSERT INTO results (job_id, outputs, model_version, batch_size) "
                "VALUES ($1, $2::jsonb, 'v1', 1)",
                job_id,
                json.dumps(outputs),
            )
        if notify:
            await conn.execute("SELECT pg_notify('job_finished', $1::text)", str(job_id))


# -- submitting ---------------------------------------------------------------------------------


async def test_valid_job_is_recorded_and_enqueued_once(api: Api) -> None:
    body = {"model": MODEL, "inputs": ["hello", "world"], "callback_url": "https://example.com/h"}
    response = await api.client.post("/v1/jobs", json=body)

    assert response.status_code == 202, response.text
    accepted = response.json()
    job_id = uuid.UUID(accepted["id"])
    assert accepted["status"] == "queued"
    assert accepted["status_url"] == f"http://testserver/v1/jobs/{job_id}"
    assert response.headers["location"] == accepted["status_url"]

    [row] = await api.rows()
    assert row["id"] == job_id
    assert row["status"] == "queued"
    assert row["model"] == MODEL
    assert row["inputs_count"] == 2
    assert row["callback_url"] == "https://example.com/h"

    [envelope] = api.sent
    assert await api.outbox() == [envelope]
    assert envelope.type is MessageType.JOB_REQUESTED
    assert envelope.job_id == job_id
    assert envelope.tenant == api.tenant
    assert decode_envelope(envelope.model_dump_json()) == envelope
    request = JobRequest.model_validate(envelope.payload)
    assert request.model == MODEL
    assert request.inputs == ["hello", "world"]
    assert request.callback_url == "https://example.com/h"


async def test_status_url_uses_the_public_url(stack: Stack, clean_env: pytest.MonkeyPatch) -> None:
    async with running(stack, public_url="https://api.example.com/conveyor/") as api:
        response = await api.client.post("/v1/jobs", json={"model": MODEL, "inputs": ["a"]})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.json()["status_url"] == f"https://api.example.com/conveyor/v1/jobs/{job_id}"
    assert response.headers["location"] == response.json()["status_url"]


async def test_status_url_keeps_the_root_path_it_is_served_under(api: Api) -> None:
    """Behind a proxy that serves the API under a prefix (ASGI root_path), as url_for does."""
    transport = httpx.ASGITransport(app=api.app, root_path="/conveyor")
    async with httpx.AsyncClient(
        transport=transport, base_url="http://proxy.test", headers=bearer(api.key)
    ) as client:
        response = await client.post("/conveyor/v1/jobs", json={"model": MODEL, "inputs": ["a"]})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        status_url = response.json()["status_url"]
        assert status_url == f"http://proxy.test/conveyor/v1/jobs/{job_id}"
        assert (await client.get(status_url)).json()["id"] == job_id


def _json(body: Any) -> dict[str, Any]:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


async def _chunks(total: int) -> AsyncIterator[bytes]:
    """A valid JSON body of more than ``total`` bytes, streamed without a Content-Length."""
    yield b'{"model": "all-minilm-l6-v2", "inputs": ["'
    for _ in range(total // 512 + 1):
        yield b"x" * 512
    yield b'"]}'


REJECTED: list[Any] = [
    pytest.param(_json({"model": "nope", "inputs": ["a"]}), 422, ["model", MODEL], id="model"),
    pytest.param(_json({"model": MODEL, "inputs": []}), 422, ["inputs"], id="no-inputs"),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"] * (MAX_INPUTS + 1)}),
        422,
        ["inputs", str(MAX_INPUTS)],
        id="too-many-inputs",
    ),
    pytest.param(_json({"model": MODEL, "inputs": ["a", " \n\t"]}), 422, ["inputs[1]"], id="blank"),
    pytest.param(_json({"model": MODEL, "inputs": [""]}), 422, ["inputs[0]"], id="empty-input"),
    pytest.param(
        _json({"model": MODEL, "inputs": ["x" * (MAX_INPUT_CHARS + 1)]}),
        422,
        ["inputs[0]", str(MAX_INPUT_CHARS)],
        id="too-long-input",
    ),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"], "callback_url": "ftp://example.com/h"}),
        422,
        ["callback_url"],
        id="ftp-callback",
    ),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"], "callback_url": "/hooks/1"}),
        422,
        ["callback_url"],
        id="relative-callback",
    ),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"], "callback_url": "http://169.254.169.254/x"}),
        422,
        ["callback_url", "link-local"],
        id="metadata-callback",
    ),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"], "callback_url": "http://0x7f000001:8080/h"}),
        422,
        ["callback_url", "loopback"],
        id="hex-loopback-callback",
    ),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"], "callback_url": "https://u:pw@e.com/h"}),
        422,
        ["callback_url"],
        id="userinfo-callback",
    ),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"], "callback_url": "https://e.com/" + "a" * 2040}),
        422,
        ["callback_url"],
        id="long-callback",
    ),
    pytest.param(_json({"model": 5, "inputs": "abc"}), 422, ["model", "inputs"], id="types"),
    pytest.param(_json({"model": MODEL, "inputs": [1, 2]}), 422, ["inputs[0]"], id="item-types"),
    pytest.param(_json(["not", "an", "object"]), 422, ["body"], id="array-body"),
    pytest.param(
        _json({"model": MODEL, "inputs": ["a"], "callbackurl": "https://e.com"}),
        422,
        ["callbackurl"],
        id="unknown-field",
    ),
    pytest.param(
        {"content": b'{"model": "x", ', "headers": {"content-type": "application/json"}},
        400,
        ["JSON"],
        id="malformed-json",
    ),
    pytest.param({"content": b""}, 422, ["body"], id="empty-body"),
    pytest.param(
        {**_json({"model": MODEL, "inputs": ["a"]}), "params": {"wait": MAX_WAIT_S + 1}},
        422,
        ["wait", "less than or equal to"],
        id="wait-over-maximum",
    ),
    pytest.param(
        {**_json({"model": MODEL, "inputs": ["a"]}), "params": {"encoding_format": "hex"}},
        422,
        ["encoding_format"],
        id="unknown-encoding",
    ),
    pytest.param(
        _json({"model": MODEL, "inputs": ["x" * 40] * (MAX_BODY_BYTES // 40)}),
        413,
        [str(MAX_BODY_BYTES)],
        id="oversized",
    ),
    pytest.param(
        {"content": _chunks(MAX_BODY_BYTES), "headers": {"content-type": "application/json"}},
        413,
        [str(MAX_BODY_BYTES)],
        id="oversized-streamed",
    ),
]


@pytest.mark.parametrize(("request_kwargs", "status", "named"), REJECTED)
async def test_rejected_request_writes_and_sends_nothing(
    api: Api, request_kwargs: dict[str, Any], status: int, named: list[str]
) -> None:
    response = await api.client.post("/v1/jobs", **request_kwargs)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert "\n" not in error
    for word in named:
        assert word in error
    if status == 422:
        assert response.json()["detail"]
    assert await api.rows() == []
    assert api.sent == []
    assert await api.outbox() == []


@pytest.fixture
async def dev_api(stack: Stack, clean_env: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    """The API under the settings make dev gives ingest (the harness's dev_env)."""
    for name, value in stack.dev_env("ingest").items():
        clean_env.setenv(name, value)
    async with running(stack) as running_api:
        yield running_api


@pytest.mark.parametrize(
    ("callback_url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local 169.254.0.0/16"),
        ("http://10.0.0.1/", "private 10.0.0.0/8"),
        ("http://[::ffff:169.254.169.254]/", "embedding 169.254.169.254: link-local"),
        ("http://192.168.1.1/", "private 192.168.0.0/16"),
        ("http://100.64.0.1/", "100.64.0.0/10"),
        ("http://0.0.0.0:8000/", "this network 0.0.0.0/8"),
        ("http://[64:ff9b::7f00:1]/", "NAT64"),
    ],
)
async def test_dev_settings_still_refuse_non_loopback_callbacks(
    dev_api: Api, callback_url: str, reason: str
) -> None:
    """make dev allows loopback callbacks, and no other non-public address (issue 8)."""
    body = {"model": MODEL, "inputs": ["a"], "callback_url": callback_url}
    response = await dev_api.client.post("/v1/jobs", json=body)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "callback_url" in error
    assert reason in error
    assert await dev_api.rows() == []
    assert dev_api.sent == []


@pytest.mark.parametrize(
    "callback_url",
    ["http://127.0.0.1:9/hook", "http://[::1]:9/hook", "http://localhost:9/hook"],
)
async def test_dev_settings_accept_loopback_callbacks(dev_api: Api, callback_url: str) -> None:
    """The control: the same settings do accept loopback (refused by default, see above)."""
    await dev_api.submit(inputs=["a"], callback_url=callback_url)
    [row] = await dev_api.rows()
    assert row["callback_url"] == callback_url


async def test_oversized_body_is_refused_from_its_content_length(api: Api) -> None:
    """A declared length over the limit is refused before a byte of the body is read."""
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(4):
            read += 1
            yield b"x" * MAX_BODY_BYTES

    size = str(4 * MAX_BODY_BYTES)
    headers = {"content-type": "application/json", "content-length": size}
    response = await api.client.post("/v1/jobs", content=body(), headers=headers)

    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()["error"]
    assert read <= 1  # the transport may have pulled the first chunk; nothing more
    assert await api.rows() == []


async def test_queue_trouble_does_not_fail_the_job(
    stack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    """The API never publishes: whatever ``enqueue`` (a hook after the commit) raises, the job
    is accepted and its message waits in the outbox for the relay."""

    async def broken(envelope: Envelope) -> None:
        raise AwsUnavailable("the queue endpoint did not answer")

    async with running(stack, enqueue=broken) as api:
        response = await api.client.post("/v1/jobs", json={"model": MODEL, "inputs": ["a"]})
        [row] = await api.rows()
        [envelope] = await api.outbox()

    assert response.status_code == 202, response.text
    assert row["status"] == "queued"
    assert row["finished_at"] is None
    assert envelope.job_id == row["id"] == uuid.UUID(response.json()["id"])


# -- reading ------------------------------------------------------------------------------------


async def test_get_returns_the_job(api: Api) -> None:
    job_id = await api.submit(inputs=["a", "b", "c"])

    response = await api.client.get(f"/v1/jobs/{job_id}")

    assert response.status_code == 200
    job = response.json()
    assert job["id"] == str(job_id)
    assert job["status"] == "queued"
    assert job["model"] == MODEL
    assert job["inputs_count"] == 3
    assert job["result"] is None
    assert job["error"] is None
    assert job["started_at"] is None


async def test_unknown_job_is_404(api: Api) -> None:
    response = await api.client.get(f"/v1/jobs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "no job" in response.json()["error"]


async def test_another_tenants_job_is_404(api: Api) -> None:
    job_id = await api.submit(inputs=["mine"])
    someone_else = await api.new_key(f"other-{api.tenant}")

    other = await api.client.get(f"/v1/jobs/{job_id}", headers=bearer(someone_else))
    mine = await api.client.get(f"/v1/jobs/{job_id}")

    assert other.status_code == 404
    assert other.json() == {"error": f"no job {job_id}"}  # the same as for no job at all
    assert mine.status_code == 200


async def test_malformed_id_is_422_naming_it(api: Api) -> None:
    response = await api.client.get("/v1/jobs/not-a-uuid")
    assert response.status_code == 422
    assert "job_id" in response.json()["error"]


async def test_wait_above_the_maximum_is_422(api: Api) -> None:
    response = await api.client.get(f"/v1/jobs/{uuid.uuid4()}", params={"wait": MAX_WAIT_S + 1})
    assert response.status_code == 422
    assert "wait" in response.json()["error"]


async def test_wait_returns_when_the_job_finishes(api: Api) -> None:
    job_id = await api.submit(inputs=["a", "b"])
    outputs = [[0.25, -0.5], [1.0, 0.0]]

    async def finish_soon() -> None:
        await anyio.sleep(0.3)
        await finish(api.pool, job_id, outputs, notify=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_soon)
        started = time.monotonic()
        with anyio.fail_after(MAX_WAIT_S + 2):
            response = await api.client.get(f"/v1/jobs/{job_id}", params={"wait": MAX_WAIT_S})
        elapsed = time.monotonic() - started

    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "succeeded"
    assert job["result"] == {"outputs": outputs}
    assert job["model_version"] == "v1"
    assert job["finished_at"] is not None
    # Woken by the notification, well before the 1 s re-read would have found it.
    assert 0.25 <= elapsed < 0.8, elapsed
    assert len(api.waiters) == 0


async def test_vectors_in_base64_are_their_float32_bytes(api: Api) -> None:
    job_id = await api.submit(inputs=["a", "b"])
    outputs = [[0.25, -0.5, 3.0], [1.0, 0.0, -1.5]]
    await finish(api.pool, job_id, outputs, notify=False)
    response = await api.client.get(f"/v1/jobs/{job_id}", params={"encoding_format": "base64"})
    assert response.status_code == 200
    encoded = response.json()["result"]["outputs"]
    assert [list(struct.unpack("<3f", base64.b64decode(text))) for text in encoded] == outputs
    floats = await api.client.get(f"/v1/jobs/{job_id}", params={"encoding_format": "float"})
    assert floats.json()["result"] == {"outputs": outputs}


async def test_a_result_stored_before_packing_reads_the_same(api: Api) -> None:
    """Rows written before packed vectors (jsonb outputs) answer in both encodings."""
    job_id = await api.submit(inputs=["a", "b"])
    outputs = [[0.25, -0.5], [1.0, 0.0]]
    await finish(api.pool, job_id, outputs, notify=False, packed=False)
    floats = await api.client.get(f"/v1/jobs/{job_id}")
    assert floats.json()["result"] == {"outputs": outputs}
    encoded = await api.client.get(f"/v1/jobs/{job_id}", params={"encoding_format": "base64"})
    assert [
        list(struct.unpack("<2f", base64.b64decode(text)))
        for text in encoded.json()["result"]["outputs"]
    ] == outputs


async def test_an_unknown_encoding_format_is_422(api: Api) -> None:
    job_id = await api.submit(inputs=["a"])
    response = await api.client.get(f"/v1/jobs/{job_id}", params={"encoding_format": "hex"})
    assert response.status_code == 422
    assert "encoding_format" in response.json()["error"]


async def test_wait_notices_a_finish_without_notification(api: Api) -> None:
    """The safety net: a missed notification delays the answer by at most about a second."""
    job_id = await api.submit(inputs=["a"])

    async def finish_soon() -> None:
        await anyio.sleep(0.3)
        await finish(api.pool, job_id, [[0.5]], notify=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_soon)
        started = time.monotonic()
        with anyio.fail_after(MAX_WAIT_S + 2):
            response = await api.client.get(f"/v1/jobs/{job_id}", params={"wait": MAX_WAIT_S})
        elapsed = time.monotonic() - started

    assert response.json()["status"] == "succeeded"
    assert elapsed < 2.0, elapsed


async def test_wait_times_out_with_the_current_state(api: Api) -> None:
    job_id = await api.submit(inputs=["a"])

    started = time.monotonic()
    with anyio.fail_after(5):
        response = await api.client.get(f"/v1/jobs/{job_id}", params={"wait": 0.5})
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert 0.45 <= elapsed < 1.5, elapsed
    assert len(api.waiters) == 0


async def test_wait_on_a_final_job_answers_at_once(api: Api) -> None:
    job_id = await api.submit(inputs=["a"])
    await finish(api.pool, job_id, [[1.0]], notify=False)

    started = time.monotonic()
    response = await api.client.get(f"/v1/jobs/{job_id}", params={"wait": MAX_WAIT_S})

    assert response.json()["status"] == "succeeded"
    assert time.monotonic() - started < 0.5


async def finish_once_sent(api: Api, outputs: Any, *, notify: bool = True) -> None:
    """Finish the one job the test submits, as soon as its message is committed."""
    with anyio.fail_after(5):
        while not api.sent:
            await anyio.sleep(0.01)
    await anyio.sleep(0.2)
    await finish(api.pool, api.sent[0].job_id, outputs, notify=notify)


async def test_a_submission_that_waits_answers_the_finished_job(api: Api) -> None:
    outputs = [[0.25, -0.5], [1.0, 0.0]]
    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_once_sent, api, outputs)
        started = time.monotonic()
        with anyio.fail_after(MAX_WAIT_S + 2):
            response = await api.client.post(
                "/v1/jobs",
                json={"model": MODEL, "inputs": ["a", "b"]},
                params={"wait": MAX_WAIT_S, "encoding_format": "base64"},
            )
        elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    job = response.json()
    assert job["id"] == str(api.sent[0].job_id)
    assert job["status"] == "succeeded"
    assert job["model"] == MODEL
    assert job["inputs_count"] == 2
    decoded = [list(struct.unpack("<2f", base64.b64decode(t))) for t in job["result"]["outputs"]]
    assert decoded == outputs
    assert job["status_url"] == f"http://testserver/v1/jobs/{job['id']}"
    assert response.headers["location"] == job["status_url"]
    # Woken by the notification, well before the 1 s re-read would have found it.
    assert elapsed < 0.9, elapsed
    assert len(api.waiters) == 0
    # The same job, as the status read gives it.
    read = await api.client.get(job["status_url"], params={"encoding_format": "base64"})
    assert read.json() == {k: v for k, v in job.items() if k != "status_url"}


async def test_a_submission_that_waits_notices_a_finish_without_notification(api: Api) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(finish_once_sent, api, [[0.5]], notify=False))
        with anyio.fail_after(MAX_WAIT_S + 2):
            response = await api.client.post(
                "/v1/jobs", json={"model": MODEL, "inputs": ["a"]}, params={"wait": MAX_WAIT_S}
            )
    assert response.status_code == 200
    assert response.json()["result"] == {"outputs": [[0.5]]}


async def test_a_submission_that_waits_in_vain_answers_202_and_the_job(api: Api) -> None:
    started = time.monotonic()
    with anyio.fail_after(5):
        response = await api.client.post(
            "/v1/jobs", json={"model": MODEL, "inputs": ["a"]}, params={"wait": 0.5}
        )
    elapsed = time.monotonic() - started

    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["result"] is None
    assert job["model"] == MODEL
    assert response.headers["location"] == job["status_url"]
    assert 0.45 <= elapsed < 1.5, elapsed
    assert len(api.waiters) == 0
    # Accepted all the same, exactly once: the relay sends it.
    assert [row["id"] for row in await api.rows()] == [uuid.UUID(job["id"])]
    assert [envelope.job_id for envelope in api.sent] == [uuid.UUID(job["id"])]


async def test_a_retried_submission_that_waits_waits_for_the_first_job(api: Api) -> None:
    """A retry (same Idempotency-Key) of a submission whose answer was lost waits for the job
    the first one recorded, rather than answering the acceptance again."""
    body = {"model": MODEL, "inputs": ["a"]}
    headers = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await api.client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202
    job_id = uuid.UUID(first.json()["id"])
    await finish(api.pool, job_id, [[3.0]], notify=False)

    retry = await api.client.post(
        "/v1/jobs", json=body, headers=headers, params={"wait": MAX_WAIT_S}
    )

    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["id"] == str(job_id)
    assert retry.json()["result"] == {"outputs": [[3.0]]}
    assert retry.headers["location"] == first.headers["location"]
    assert len(await api.rows()) == 1


async def test_the_ingest_hop_ends_at_acceptance_not_after_the_wait(api: Api) -> None:
    accepted = HOP_DURATION.labels("ingest", "accepted")
    count_before, sum_before = _histogram(accepted)
    response = await api.client.post(
        "/v1/jobs", json={"model": MODEL, "inputs": ["a"]}, params={"wait": 0.6}
    )
    assert response.status_code == 202
    count_after, sum_after = _histogram(accepted)
    assert count_after == count_before + 1
    assert sum_after - sum_before < 0.3, sum_after - sum_before


def _histogram(child: Any) -> tuple[float, float]:
    """A histogram child's count and sum, from its own samples."""
    [metric] = list(child.collect())
    values = {sample.name.rsplit("_", 1)[-1]: sample.value for sample in metric.samples}
    return values["count"], values["sum"]


async def test_listener_reconnects_after_its_connection_is_killed(api: Api) -> None:
    assert api.waiters.listening
    async with api.pool.acquire() as conn:
        killed = await conn.fetchval(
            """
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE pid <> pg_backend_pid() AND query = 'LISTEN "job_finished"' AND state = 'idle'
            """
        )
    assert killed >= 1
    with anyio.fail_after(5):
        while api.waiters.listening:
            await anyio.sleep(0.02)
        while not api.waiters.listening:
            await anyio.sleep(0.02)

    job_id = await api.submit(inputs=["a"])

    async def finish_soon() -> None:
        await anyio.sleep(0.3)
        await finish(api.pool, job_id, [[2.0]], notify=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_soon)
        started = time.monotonic()
        with anyio.fail_after(MAX_WAIT_S + 2):
            response = await api.client.get(f"/v1/jobs/{job_id}", params={"wait": MAX_WAIT_S})
        elapsed = time.monotonic() - started

    assert response.json()["status"] == "succeeded"
    assert elapsed < 0.8, elapsed


# -- cancelling ---------------------------------------------------------------------------------


async def test_cancel_a_queued_job(api: Api) -> None:
    job_id = await api.submit(inputs=["a"])

    async def cancel_soon() -> None:
        await anyio.sleep(0.3)
        response = await api.client.delete(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == str(job_id)
        assert body["status"] == "cancelled"
        assert body["finished_at"] is not None

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_soon)
        started = time.monotonic()
        with anyio.fail_after(MAX_WAIT_S + 2):
            waited = await api.client.get(f"/v1/jobs/{job_id}", params={"wait": MAX_WAIT_S})
        elapsed = time.monotonic() - started

    assert waited.json()["status"] == "cancelled"
    assert elapsed < 0.8, elapsed  # woken by the job_finished notification
    [row] = await api.rows()
    assert row["status"] == "cancelled"
    assert await api.outbox() == []  # its unsent message will not be sent


async def test_cancel_a_running_job(api: Api) -> None:
    job_id = await api.submit(inputs=["a"])
    async with api.pool.acquire() as conn:
        await conn.execute(
            "UPDATE jobs SET status = 'running', started_at = now() WHERE id = $1", job_id
        )

    response = await api.client.delete(f"/v1/jobs/{job_id}")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["started_at"] is not None


async def test_cancel_a_final_job_is_409_naming_its_status(api: Api) -> None:
    done = await api.submit(inputs=["a"])
    await finish(api.pool, done, [[1.0]], notify=False)
    cancelled = await api.submit(inputs=["b"])
    assert (await api.client.delete(f"/v1/jobs/{cancelled}")).status_code == 200

    first = await api.client.delete(f"/v1/jobs/{done}")
    again = await api.client.delete(f"/v1/jobs/{cancelled}")

    assert first.status_code == 409
    assert first.headers["content-type"] == "application/json"
    assert "succeeded" in first.json()["error"]
    assert again.status_code == 409
    assert "cancelled" in again.json()["error"]
    statuses = {row["id"]: row["status"] for row in await api.rows()}
    assert statuses == {done: "succeeded", cancelled: "cancelled"}


async def test_cancel_an_unknown_or_another_tenants_job_is_404(api: Api) -> None:
    job_id = await api.submit(inputs=["mine"])
    someone_else = await api.new_key(f"other-{api.tenant}")

    other = await api.client.delete(f"/v1/jobs/{job_id}", headers=bearer(someone_else))
    unknown = await api.client.delete(f"/v1/jobs/{uuid.uuid4()}")

    assert other.status_code == 404
    assert other.json() == {"error": f"no job {job_id}"}
    assert unknown.status_code == 404
    [row] = await api.rows()
    assert row["status"] == "queued"


# -- health, docs, errors -----------------------------------------------------------------------


async def test_healthz(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_with_healthy_dependencies(api: Api) -> None:
    response = await api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_names_the_failed_queues(stack: Stack, clean_env: pytest.MonkeyPatch) -> None:
    async def queues_down() -> None:
        raise AwsUnavailable(f"cannot reach {stack.database_url}")

    async with running(stack, check_queues=queues_down) as api:
        response = await api.client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert "AwsUnavailable" in body["checks"]["queues"]
    assert stack.database_url not in response.text


async def test_readyz_gives_up_on_a_hanging_check(
    stack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    async def queues_hang() -> None:
        await anyio.sleep_forever()

    async with running(stack, check_queues=queues_hang) as api:
        started = time.monotonic()
        response = await api.client.get("/readyz")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["checks"]["queues"].startswith("no answer")
    assert elapsed < 3.0


async def test_openapi_lists_the_routes(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "Conveyor"
    assert "/v1/jobs" in spec["paths"]
    assert "/v1/jobs/{job_id}" in spec["paths"]
    assert set(spec["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
    assert (await api.client.get("/docs")).status_code == 200


async def test_unknown_route_and_wrong_method_answer_json(api: Api) -> None:
    missing = await api.client.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]

    wrong = await api.client.delete("/v1/jobs")
    assert wrong.status_code == 405
    assert wrong.json()["error"]
    assert "POST" in wrong.headers["allow"]


async def test_serves_without_the_database(stack: Stack, clean_env: pytest.MonkeyPatch) -> None:
    """Liveness holds and readiness names the database while PostgreSQL cannot be reached."""
    nowhere = f"postgresql://postgres@/conveyor?host=/nonexistent-{uuid.uuid4().hex[:8]}"
    settings = IngestSettings(database_url=nowhere, conveyor_models=(MODEL,))

    async def queues_ok() -> None:
        return None

    async def record(envelope: Envelope) -> None:
        raise AssertionError("nothing may be sent")

    pool = await asyncpg.create_pool(nowhere, min_size=0, max_size=2)
    try:
        app = create_app(settings, pool=pool, enqueue=record, check_queues=queues_ok)
        transport = httpx.ASGITransport(app=app)
        with anyio.fail_after(10):
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            ):
                assert not app.state.job_waiters.listening
                health = await client.get("/healthz")
                ready = await client.get("/readyz")
    finally:
        await pool.close()

    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"]["queues"] == "ok"
    assert ready.json()["checks"]["database"].startswith("failed")
    assert "nonexistent" not in ready.text
