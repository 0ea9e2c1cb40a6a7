"""``conveyor.verify_webhook`` on webhooks as notify sends them: notify's own sender POSTs to a
real receiver on 127.0.0.1, and the client verifies what arrived."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest

from conveyor import InvalidWebhook, JobStatus, WebhookEvent, verify_webhook
from services.notify.delivery import WebhookSender
from tests.webhook_receiver import ReceivedRequest, WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


def data(job_id: str, status: str = "succeeded") -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "model": "all-minilm-l6-v2",
        "model_version": "1",
        "created_at": "2026-11-03T20:26:10Z",
        "finished_at": "2026-11-03T20:26:11Z",
        "error": None if status == "succeeded" else "it broke",
        "outputs": [[0.5, -0.25], [1.0, 0.0]] if status == "succeeded" else None,
    }


async def delivered(
    event_type: str,
    body: dict[str, Any],
    *,
    secrets: list[str] | None = None,
    at: datetime.datetime | None = None,
) -> ReceivedRequest:
    """What the receiver got when notify's sender delivered this event."""
    clock = (lambda: at) if at is not None else (lambda: datetime.datetime.now(datetime.UTC))
    async with (
        WebhookReceiver() as receiver,
        WebhookSender(SECRET, 5, clock=clock) as sender,
    ):
        outcome = await sender.deliver(
            receiver.url,
            webhook_id=f"msg_{uuid.uuid4().hex}",
            event_type=event_type,
            data=body,
            secrets=secrets,
        )
        assert outcome.succeeded, outcome
        [request] = await receiver.wait_for_requests(1)
    return request


async def test_a_delivered_webhook_verifies_and_is_parsed() -> None:
    job_id = str(uuid.uuid4())
    request = await delivered("job.succeeded", data(job_id))

    event = verify_webhook(request.body, request.headers, SECRET, use_numpy=False)

    assert isinstance(event, WebhookEvent)
    assert event.webhook_id == request.headers["webhook-id"]
    assert event.type == "job.succeeded"
    assert event.job_id == job_id
    assert event.status is JobStatus.SUCCEEDED
    assert event.model == "all-minilm-l6-v2" and event.model_version == "1"
    assert event.outputs == ([0.5, -0.25], [1.0, 0.0])
    assert event.finished_at == datetime.datetime(2026, 11, 3, 20, 26, 11, tzinfo=datetime.UTC)
    assert abs((event.timestamp - datetime.datetime.now(datetime.UTC)).total_seconds()) < 60
    assert event.data["job_id"] == job_id


async def test_a_failed_job_event() -> None:
    request = await delivered("job.failed", data(str(uuid.uuid4()), "failed"))
    event = verify_webhook(request.body.decode(), request.headers, SECRET)
    assert event.status is JobStatus.FAILED
    assert event.error == "it broke" and event.outputs is None


async def test_either_signature_of_a_rotation_verifies() -> None:
    request = await delivered("job.succeeded", data(str(uuid.uuid4())), secrets=[OTHER, SECRET])
    assert " " in request.headers["webhook-signature"]
    assert verify_webhook(request.body, request.headers, SECRET).type == "job.succeeded"
    assert verify_webhook(request.body, request.headers, OTHER).type == "job.succeeded"


async def test_another_secret_a_changed_body_or_a_missing_header_is_refused() -> None:
    request = await delivered("job.succeeded", data(str(uuid.uuid4())))

    with pytest.raises(InvalidWebhook, match="No matching signature"):
        verify_webhook(request.body, request.headers, OTHER)
    tampered = request.body.replace(b'"succeeded"', b'"failed"', 1)
    assert tampered != request.body
    with pytest.raises(InvalidWebhook, match="No matching signature"):
        verify_webhook(tampered, request.headers, SECRET)
    headers = {k: v for k, v in request.headers.items() if k != "webhook-signature"}
    with pytest.raises(InvalidWebhook, match="Missing required headers"):
        verify_webhook(request.body, headers, SECRET)


async def test_a_timestamp_more_than_five_minutes_old_is_refused() -> None:
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=6)
    request = await delivered("job.succeeded", data(str(uuid.uuid4())), at=old)
    with pytest.raises(InvalidWebhook, match="too old"):
        verify_webhook(request.body, request.headers, SECRET)


async def test_a_signed_body_that_is_not_an_event_is_refused() -> None:
    """Signed correctly, but not Conveyor's shape: a clear error, not a KeyError."""
    request = await delivered("job.succeeded", {"something": "else"})
    with pytest.raises(InvalidWebhook, match="not a Conveyor event"):
        verify_webhook(request.body, request.headers, SECRET)
