"""Webhook delivery against a real receiver on 127.0.0.1, and the delivery log in PostgreSQL."""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import asyncpg
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from emulator import Stack
from services.notify.delivery import (
    USER_AGENT,
    DeliveryOutcome,
    InvalidPayload,
    SenderClosed,
    WebhookSender,
    webhook_id_for,
)
from services.notify.schedule import RetrySchedule
from services.notify.store import (
    already_delivered,
    attempts_so_far,
    load_notification_data,
    record_attempt,
)
from shared import vectors
from shared.errors import ConfigError
from tests.webhook_receiver import Reply, WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET_KEY = secrets.token_bytes(32)
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
JOB = uuid.UUID("6f1c1d9e-8f0a-4f43-9d51-0d7c2b7d6a11")
DATA = {"job_id": str(JOB), "status": "succeeded", "outputs": [[0.25, -0.5]]}
METADATA = "http://169.254.169.254/latest/meta-data/"


class LoopbackOnly(httpx.AsyncHTTPTransport):
    """Records every URL the client asks for, and refuses anything but loopback."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        if request.url.host not in ("127.0.0.1", "localhost"):
            raise httpx.ConnectError("the test refuses non-loopback traffic", request=request)
        return await super().handle_async_request(request)


async def deliver(
    sender: WebhookSender,
    url: str,
    *,
    event: str = "job.succeeded",
    occurred_at: datetime.datetime | None = None,
) -> DeliveryOutcome:
    return await sender.deliver(
        url,
        webhook_id=webhook_id_for(JOB, event),
        event_type=event,
        data=DATA,
        occurred_at=occurred_at,
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening, so nobody takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- outcomes -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_2xx_succeeds_and_the_signature_verifies(status: int) -> None:
    async with (
        WebhookReceiver(secret=SECRET, replies=[status]) as rx,
        WebhookSender(SECRET, 5) as sender,
    ):
        outcome = await deliver(sender, rx.url)
        assert outcome.succeeded
        assert (outcome.status_code, outcome.error, outcome.give_up) == (status, None, False)
        assert not outcome.should_retry
        assert outcome.duration_ms >= 0
        [payload] = rx.verified_requests()
        [request] = rx.requests
    assert payload["type"] == "job.succeeded"
    assert payload["data"] == DATA
    assert payload["timestamp"].endswith("Z")
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert "Conveyor" in USER_AGENT
    assert request.headers["webhook-id"] == webhook_id_for(JOB, "job.succeeded")
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["webhook-timestamp"].isdigit()


async def test_a_wrong_secret_does_not_verify() -> None:
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    async with WebhookReceiver(secret=other) as rx, WebhookSender(SECRET, 5) as sender:
        assert (await deliver(sender, rx.url)).succeeded
        assert rx.verified_requests(strict=False) == []
        with pytest.raises(AssertionError, match="does not verify"):
            rx.verified_requests()


async def test_5xx_fails_and_may_be_retried_with_retry_after() -> None:
    replies: list[int | Reply] = [500, Reply(503, retry_after="7")]
    async with WebhookReceiver(replies=replies) as rx, WebhookSender(SECRET, 5) as sender:
        first = await deliver(sender, rx.url)
        second = await deliver(sender, rx.url)
    assert (first.succeeded, first.status_code, first.error) == (False, 500, "HTTP 500")
    assert first.should_retry
    assert first.retry_after_s is None
    assert (second.status_code, second.retry_after_s, second.give_up) == (503, 7.0, False)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 429])
async def test_other_client_errors_are_retried(status: int) -> None:
    async with WebhookReceiver(replies=[status]) as rx, WebhookSender(SECRET, 5) as sender:
        outcome = await deliver(sender, rx.url)
    assert (outcome.status_code, outcome.error) == (status, f"HTTP {status}")
    assert outcome.should_retry


async def test_410_gives_up() -> None:
    async with WebhookReceiver(replies=[410]) as rx, WebhookSender(SECRET, 5) as sender:
        outcome = await deliver(sender, rx.url)
    assert (outcome.succeeded, outcome.status_code, outcome.give_up) == (False, 410, True)
    assert outcome.error is not None
    assert "410" in outcome.error
    assert not outcome.should_retry


async def test_redirect_to_the_metadata_address_is_not_followed() -> None:
    transport = LoopbackOnly()
    reply = Reply(302, location=METADATA)
    async with (
        WebhookReceiver(replies=[reply]) as rx,
        WebhookSender(SECRET, 5, transport=transport) as sender,
    ):
        outcome = await deliver(sender, rx.url)
        assert len(rx.requests) == 1
        assert transport.urls == [rx.url]  # nothing was asked of the Location
    assert not outcome.succeeded
    assert outcome.status_code == 302
    assert outcome.error == f"HTTP 302: redirect to {METADATA} not followed"
    assert outcome.should_retry


@pytest.mark.parametrize("status", [301, 303, 307, 308])
async def test_no_redirect_is_followed(status: int) -> None:
    async with WebhookReceiver() as target:
        reply = Reply(status, location=target.url)
        async with WebhookReceiver(replies=[reply]) as rx, WebhookSender(SECRET, 5) as sender:
            outcome = await deliver(sender, rx.url)
        assert target.requests == []
    assert outcome.status_code == status
    assert outcome.error is not None
    assert "not followed" in outcome.error


async def test_a_3xx_without_location_is_a_failure() -> None:
    async with WebhookReceiver(replies=[300]) as rx, WebhookSender(SECRET, 5) as sender:
        outcome = await deliver(sender, rx.url)
    assert (outcome.succeeded, outcome.error) == (False, "HTTP 300")


async def test_a_slow_receiver_times_out() -> None:
    async with (
        WebhookReceiver(replies=[Reply(200, delay_s=10)]) as rx,
        WebhookSender(SECRET, 0.5) as sender,
    ):
        with anyio.fail_after(5):
            outcome = await deliver(sender, rx.url)
        assert len(rx.requests) == 1
    assert not outcome.succeeded
    assert outcome.status_code is None
    assert outcome.error == "timeout after 0.5s"
    assert outcome.should_retry
    assert 400 <= outcome.duration_ms < 5000


async def test_a_dripping_receiver_is_cut_off_at_the_timeout() -> None:
    """Each byte comes well within the read timeout; the whole answer never does."""

    async def drip(stream: SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(10):
                await stream.receive()
                await stream.send(b"HTTP/1.1 200 OK\r\n")
                for _ in range(100):  # at most 100 bytes, 10 s
                    await stream.send(b"x")
                    await anyio.sleep(0.1)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, drip)
        async with WebhookSender(SECRET, 0.5) as sender:
            with anyio.fail_after(5):
                outcome = await deliver(sender, f"http://127.0.0.1:{port}/hook")
        tg.cancel_scope.cancel()
    assert outcome.error == "timeout after 0.5s"
    assert outcome.duration_ms < 2000


async def test_connection_refused(closed_port: int) -> None:
    async with WebhookSender(SECRET, 5) as sender:
        outcome = await deliver(sender, f"http://127.0.0.1:{closed_port}/hook")
    assert (outcome.succeeded, outcome.status_code) == (False, None)
    assert outcome.error == "connection refused"
    assert outcome.should_retry


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/hook", "not a url", "", "http://127.0.0.1:99999/"]
)
async def test_a_malformed_url_gives_up(url: str) -> None:
    async with WebhookSender(SECRET, 5) as sender:
        outcome = await deliver(sender, url)
    assert outcome.give_up
    assert outcome.error is not None
    assert outcome.error.startswith("invalid URL")


# -- identity across retries ----------------------------------------------------------------


async def test_retries_share_the_id_but_not_the_timestamp() -> None:
    start = datetime.datetime.now(datetime.UTC)
    ticks = iter([start, start + datetime.timedelta(seconds=5)])
    occurred = start - datetime.timedelta(seconds=1)
    async with (
        WebhookReceiver(secret=SECRET, replies=[500, 200]) as rx,
        WebhookSender(SECRET, 5, clock=lambda: next(ticks)) as sender,
    ):
        first = await deliver(sender, rx.url, occurred_at=occurred)
        second = await deliver(sender, rx.url, occurred_at=occurred)
        payloads = rx.verified_requests()
    assert (first.succeeded, second.succeeded) == (False, True)
    one, two = rx.requests
    assert one.headers["webhook-id"] == two.headers["webhook-id"]
    assert int(two.headers["webhook-timestamp"]) - int(one.headers["webhook-timestamp"]) == 5
    assert one.headers["webhook-signature"] != two.headers["webhook-signature"]
    assert one.body == two.body  # the same event: byte for byte the same body
    assert payloads[0] == payloads[1]


def test_webhook_id_is_derived_from_job_and_event() -> None:
    other = uuid.uuid4()
    assert webhook_id_for(JOB, "job.succeeded") == webhook_id_for(JOB, "job.succeeded")
    assert webhook_id_for(JOB, "job.succeeded") != webhook_id_for(JOB, "job.failed")
    assert webhook_id_for(JOB, "job.succeeded") != webhook_id_for(other, "job.succeeded")
    assert webhook_id_for(JOB, "job.failed").startswith("msg_")


async def test_a_scripted_retry_loop_ends_in_success() -> None:
    schedule = RetrySchedule((0, 0, 0))
    outcomes: list[DeliveryOutcome] = []
    async with (
        WebhookReceiver(secret=SECRET, replies=[500, 500, 200]) as rx,
        WebhookSender(SECRET, 5) as sender,
    ):
        for attempt in range(1, schedule.max_attempts + 1):
            outcome = await deliver(sender, rx.url)
            outcomes.append(outcome)
            delay = schedule.next_delay(attempt, outcome.retry_after_s)
            if outcome.succeeded or not outcome.should_retry or delay is None:
                break
            await anyio.sleep(delay)
        assert len(rx.verified_requests()) == 3
    assert [o.status_code for o in outcomes] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in rx.requests}) == 1


# -- the sender as a resource, and its secret -----------------------------------------------


async def test_the_secret_never_shows(closed_port: int) -> None:
    raw = SECRET.removeprefix("whsec_")
    outcomes: list[DeliveryOutcome] = []
    replies: list[int | Reply] = [200, 500, Reply(302, location=METADATA), Reply(200, delay_s=5)]
    async with WebhookReceiver(replies=replies) as rx, WebhookSender(SECRET, 0.5) as sender:
        for _ in replies:
            outcomes.append(await deliver(sender, rx.url))
        outcomes.append(await deliver(sender, f"http://127.0.0.1:{closed_port}/"))
        shown = [repr(sender), str(sender), repr(rx), *map(repr, outcomes), *map(str, outcomes)]
    for text in shown:
        assert raw not in text
        assert "whsec_" not in text
        assert SECRET_KEY.hex() not in text


async def test_aclose_is_idempotent_and_final() -> None:
    sender = WebhookSender(SECRET, 5)
    await sender.aclose()
    await sender.aclose()
    assert "closed" in repr(sender)
    with pytest.raises(SenderClosed):
        await deliver(sender, "http://127.0.0.1:9/")


async def test_data_must_be_strict_json() -> None:
    async with WebhookSender(SECRET, 5) as sender:
        for data in ({"x": float("nan")}, {"x": object()}):
            with pytest.raises(InvalidPayload):
                await sender.deliver(
                    "http://127.0.0.1:9/", webhook_id="msg_x", event_type="job.failed", data=data
                )


def test_a_bad_secret_is_a_config_error_that_does_not_quote_it() -> None:
    short = "whsec_" + base64.b64encode(b"k" * 16).decode()
    no_prefix = base64.b64encode(b"k" * 32).decode()
    for bad in ("whsec_", "whsec_!!!not-base64-at-all!!!", "", short, no_prefix):
        with pytest.raises(ConfigError) as caught:
            WebhookSender(bad, 5)
        assert "!!!" not in str(caught.value)
        assert "a2tr" not in str(caught.value)  # base64 of "kkk"


# -- the delivery log -----------------------------------------------------------------------


@pytest.fixture
async def conn(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(stack.database_url)
    try:
        yield connection
    finally:
        await connection.close()


CREATED = datetime.datetime(2026, 11, 3, 20, 0, 0, 123456, tzinfo=datetime.UTC)
FINISHED = datetime.datetime(2026, 11, 3, 20, 0, 2, tzinfo=datetime.UTC)


async def insert_job(
    conn: asyncpg.Connection,
    status: str,
    *,
    error: str | None = None,
    outputs: list[list[float]] | None = None,
    finished: bool = True,
    packed: bool = True,
) -> uuid.UUID:
    """A job as persist leaves it; ``packed=False`` stores its outputs as a result row from
    before packed vectors (jsonb)."""
    job_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO jobs (id, tenant_id, model, status, callback_url, error, created_at,
                          finished_at, model_version, inputs_count)
        VALUES ($1, 'tenant-a', 'all-minilm-l6-v2', $2, 'http://127.0.0.1:9/hook', $3, $4, $5,
                NULL, 1)
        """,
        job_id,
        status,
        error,
        CREATED,
        FINISHED if finished else None,
    )
    if outputs is not None and packed:
        await conn.execute(
            "INSERT INTO results (job_id, vectors, dimensions, model_version, batch_size)"
            " VALUES ($1, $2, $3, 'v3', 1)",
            job_id,
            *vectors.pack(outputs),
        )
    elif outputs is not None:
        await conn.execute(
            "INSERT INTO results (job_id, outputs, model_version, batch_size)"
            " VALUES ($1, $2::jsonb, 'v3', 1)",
            job_id,
            json.dumps(outputs),
        )
    return job_id


def outcome(succeeded: bool, status: int | None, error: str | None = None) -> DeliveryOutcome:
    return DeliveryOutcome(succeeded, status, error, None, False, 12)


async def test_attempts_are_logged_and_counted(conn: asyncpg.Connection) -> None:
    job = await insert_job(conn, "succeeded", outputs=[[1.0]])
    event = "job.succeeded"
    wid = webhook_id_for(job, event)
    assert await attempts_so_far(conn, job, event) == 0
    assert not await already_delivered(conn, job, event)

    fail = outcome(False, None, "connection refused")
    await record_attempt(
        conn, job_id=job, webhook_id=wid, event=event, attempt=1, url="http://x/", outcome=fail
    )
    assert await attempts_so_far(conn, job, event) == 1
    assert not await already_delivered(conn, job, event)
    assert await attempts_so_far(conn, job, "job.failed") == 0

    done = outcome(True, 204)
    await record_attempt(
        conn, job_id=job, webhook_id=wid, event=event, attempt=2, url="http://x/", outcome=done
    )
    assert await attempts_so_far(conn, job, event) == 2
    assert await already_delivered(conn, job, event)
    assert not await already_delivered(conn, job, "job.failed")

    rows = await conn.fetch(
        "SELECT webhook_id, attempt, url, status_code, error, succeeded, duration_ms"
        " FROM webhook_deliveries WHERE job_id = $1 ORDER BY attempt",
        job,
    )
    assert [tuple(r) for r in rows] == [
        (wid, 1, "http://x/", None, "connection refused", False, 12),
        (wid, 2, "http://x/", 204, None, True, 12),
    ]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "stored-before-packing"])
async def test_notification_data_of_a_succeeded_job(conn: asyncpg.Connection, packed: bool) -> None:
    job = await insert_job(conn, "succeeded", outputs=[[0.5, -0.25], [1.0, 0.0]], packed=packed)
    data = await load_notification_data(conn, job)
    assert data == {
        "job_id": str(job),
        "status": "succeeded",
        "model": "all-minilm-l6-v2",
        "model_version": "v3",
        "created_at": "2026-11-03T20:00:00.123456Z",
        "finished_at": "2026-11-03T20:00:02Z",
        "error": None,
        "outputs": [[0.5, -0.25], [1.0, 0.0]],
    }
    assert json.loads(json.dumps(data, allow_nan=False)) == data


async def test_notification_data_of_a_failed_job(conn: asyncpg.Connection) -> None:
    job = await insert_job(conn, "failed", error="input too long")
    data = await load_notification_data(conn, job)
    assert data is not None
    assert (data["status"], data["error"], data["outputs"]) == ("failed", "input too long", None)
    assert data["model_version"] is None
    json.dumps(data, allow_nan=False)


async def test_notification_data_of_an_unfinished_or_missing_job(conn: asyncpg.Connection) -> None:
    job = await insert_job(conn, "running", finished=False)
    data = await load_notification_data(conn, job)
    assert data is not None
    assert (data["status"], data["finished_at"], data["outputs"]) == ("running", None, None)
    assert await load_notification_data(conn, uuid.uuid4()) is None


async def test_a_delivery_end_to_end_is_logged(conn: asyncpg.Connection) -> None:
    """Deliver a stored job's notification and log it, as the notify handler will."""
    job = await insert_job(conn, "succeeded", outputs=[[0.125]])
    data = await load_notification_data(conn, job)
    assert data is not None
    event = "job.succeeded"
    async with (
        WebhookReceiver(secret=SECRET, replies=[200]) as rx,
        WebhookSender(SECRET, 5) as sender,
    ):
        result = await sender.deliver(
            rx.url, webhook_id=webhook_id_for(job, event), event_type=event, data=data
        )
        await record_attempt(
            conn,
            job_id=job,
            webhook_id=webhook_id_for(job, event),
            event=event,
            attempt=1,
            url=rx.url,
            outcome=result,
        )
        [payload] = rx.verified_requests()
    assert payload["data"]["outputs"] == [[0.125]]
    assert await already_delivered(conn, job, event)


async def test_delivery_state_is_the_four_reads_in_one(conn: asyncpg.Connection) -> None:
    """delivery_state agrees with already_delivered, attempts_so_far and
    load_notification_data at every step; recording with release frees the lease."""
    from services.notify.store import claim_delivery, delivery_state

    job = await insert_job(conn, "succeeded", outputs=[[0.5, -0.25]])
    event = "job.succeeded"
    wid = webhook_id_for(job, event)
    assert await delivery_state(conn, uuid.uuid4(), event) is None
    for attempt, result in enumerate([None, outcome(False, 503), outcome(True, 200)], start=1):
        if result is not None:
            assert await claim_delivery(conn, job, event, 30)
            await record_attempt(
                conn,
                job_id=job,
                webhook_id=wid,
                event=event,
                attempt=attempt - 1,
                url="http://x/",
                outcome=result,
                release=True,
            )
        state = await delivery_state(conn, job, event)
        assert state is not None
        assert state.model == "all-minilm-l6-v2"
        assert state.attempts == await attempts_so_far(conn, job, event) == attempt - 1
        assert state.delivered == await already_delivered(conn, job, event)
        assert state.data == await load_notification_data(conn, job)
        assert state.data["outputs"] == [[0.5, -0.25]]
        # Released with the record: the next attempt (or worker) can take the lease.
        assert await claim_delivery(conn, job, event, 0.01)
        await conn.execute("DELETE FROM webhook_leases WHERE job_id = $1", job)
    assert state.delivered
    other = await delivery_state(conn, job, "job.failed")
    assert other is not None and other.attempts == 0 and not other.delivered
