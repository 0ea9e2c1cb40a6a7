"""Receiving Conveyor's webhooks: :func:`verify_webhook` checks one and returns its event.

Conveyor signs each webhook as Standard Webhooks specifies (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``: HMAC-SHA256 of ``{id}.{timestamp}.{body}`` with the
endpoint's ``whsec_`` secret); the ``standardwebhooks`` package verifies it, timestamps more
than five minutes off included. Verify the body exactly as it arrived, before parsing it::

    event = verify_webhook(await request.body(), request.headers, secret)
    if event.type == "job.succeeded":
        vectors = event.outputs
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conveyor.client._errors import InvalidWebhook
from conveyor.client._models import JobStatus, Vector, vectors

__all__ = ["WebhookEvent", "verify_webhook"]


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook: ``type`` is ``job.succeeded`` or ``job.failed``; ``webhook_id`` is
    the same for every retry of one event (deduplicate on it)."""

    webhook_id: str
    type: str
    timestamp: datetime.datetime
    job_id: str
    status: JobStatus
    model: str
    model_version: str | None
    created_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    error: str | None
    outputs: tuple[Vector, ...] | None
    data: Mapping[str, Any] = field(repr=False)
    """The event's ``data`` as sent, for fields this class does not name."""


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    use_numpy: bool | None = None,
) -> WebhookEvent:
    """The event of a webhook whose signature verifies with ``secret`` (``whsec_...``).

    InvalidWebhook when a header is missing, no signature matches, the timestamp is more than
    five minutes off, or the body is not a Conveyor event.
    """
    plain = {str(name).lower(): str(value) for name, value in headers.items()}
    try:
        payload = Webhook(secret).verify(body, plain)
    except WebhookVerificationError as exc:
        raise InvalidWebhook(f"the webhook does not verify: {exc}") from exc
    except (ValueError, json.JSONDecodeError) as exc:  # a malformed secret or body
        raise InvalidWebhook(f"the webhook cannot be read: {exc}") from exc
    try:
        data = payload["data"]
        raw_outputs = data.get("outputs")
        return WebhookEvent(
            webhook_id=plain["webhook-id"],
            type=str(payload["type"]),
            timestamp=_when(payload["timestamp"]),
            job_id=str(data["job_id"]),
            status=JobStatus(data["status"]),
            model=str(data["model"]),
            model_version=data.get("model_version"),
            created_at=_optional_when(data.get("created_at")),
            finished_at=_optional_when(data.get("finished_at")),
            error=data.get("error"),
            outputs=None if raw_outputs is None else vectors(raw_outputs, use_numpy=use_numpy),
            data=data,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidWebhook(f"the webhook's body is not a Conveyor event: {exc!r}") from exc


def _when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def _optional_when(text: str | None) -> datetime.datetime | None:
    return None if text is None else _when(text)
