"""Conveyor's Python client: submit jobs, wait for them, map many texts, verify webhooks.

    from conveyor import Client

    with Client() as client:       # CONVEYOR_API_URL and CONVEYOR_API_KEY by default
        job = client.wait(client.submit("all-minilm-l6-v2", ["hello"]).id, timeout=60)
        for vector in client.map("all-minilm-l6-v2", texts, concurrency=16):
            ...

:class:`Client` blocks, :class:`AsyncClient` is awaited (asyncio); both over httpx, whose
transport is the seam for tests. Modules, one concept each:

    _sync, _async   the two clients
    _base           what they share: configuration, requests, answers, Idempotency-Keys
    _retry          RetryPolicy (frozen data) and the retry state of one call
    _models         Job, JobStatus, Accepted, JobInput: frozen dataclasses
    _errors         the error tree (drawn in its docstring; ConveyorError at the root)
    _webhooks       verify_webhook and WebhookEvent

Importing this package imports httpx and standardwebhooks, not numpy (imported when outputs
are first read), torch, the services, the emulator or boto.
"""

from conveyor.client._async import AsyncClient
from conveyor.client._errors import (
    ApiError,
    AuthenticationError,
    ConveyorError,
    InvalidWebhook,
    JobFailed,
    ModelNotDeployed,
    NotFound,
    TransportError,
    WaitTimeout,
)
from conveyor.client._models import Accepted, Job, JobInput, JobStatus, Vector
from conveyor.client._retry import RetryPolicy
from conveyor.client._sync import Client
from conveyor.client._webhooks import WebhookEvent, verify_webhook

__all__ = [
    "Accepted",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConveyorError",
    "InvalidWebhook",
    "Job",
    "JobFailed",
    "JobInput",
    "JobStatus",
    "ModelNotDeployed",
    "NotFound",
    "RetryPolicy",
    "TransportError",
    "Vector",
    "WaitTimeout",
    "WebhookEvent",
    "verify_webhook",
]
