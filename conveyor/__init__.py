"""Conveyor's public face: the Python client (:mod:`conveyor.client`) and the ``conveyor``
command line (:mod:`conveyor.cli`).

    from conveyor import Client, AsyncClient, verify_webhook

This package is the composition root: the command line may import ``services`` and
``emulator``; ``shared`` never imports it. ``import conveyor`` itself loads only the client,
which imports none of them (nor torch, nor boto), so that users' programs stay light.
"""

from conveyor.client import (
    Accepted,
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConveyorError,
    InvalidWebhook,
    Job,
    JobFailed,
    JobInput,
    JobStatus,
    ModelNotDeployed,
    NotFound,
    RetryPolicy,
    TransportError,
    Vector,
    WaitTimeout,
    WebhookEvent,
    verify_webhook,
)

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
