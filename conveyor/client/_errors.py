"""What the client library raises: one base class, a small tree.

    ConveyorError              base of every error the client raises on purpose
    ├── ApiError               the API answered with an error (``status``, ``body``, ``message``)
    │   ├── AuthenticationError    401: no API key, or not a valid one (CONVEYOR_API_KEY)
    │   ├── NotFound               404: no such job (or another tenant's)
    │   └── ModelNotDeployed       409 on submit: the model has no deployed version yet
    ├── TransportError         the API could not be reached, after the retries (``__cause__``:
    │                          the httpx error)
    ├── JobFailed              the job ended ``failed`` or ``cancelled`` (``job``)
    ├── WaitTimeout            the job was not final in time (``job``: as last seen); also a
    │                          builtin ``TimeoutError``
    └── InvalidWebhook         a webhook whose signature, timestamp or body does not verify

httpx's errors are translated into this tree in one place (``_retry.Attempts.after_error``,
with ``raise ... from exc``), error answers in another (``_base.check``). A 429 (backlog) or a
503 is retried as the :class:`RetryPolicy` allows, and raised as a plain :class:`ApiError` once
it gives up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.client._models import Job

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ConveyorError",
    "InvalidWebhook",
    "JobFailed",
    "ModelNotDeployed",
    "NotFound",
    "TransportError",
    "WaitTimeout",
]


class ConveyorError(Exception):
    """Base class of every error the client raises on purpose."""


class ApiError(ConveyorError):
    """The API answered with an error status. ``body`` is the parsed JSON answer (or its text);
    ``message`` the API's one-line ``error``."""

    def __init__(self, status: int, body: Any, *, method: str = "", url: str = "") -> None:
        self.status = status
        self.body = body
        self.method = method
        self.url = url
        self.message = _message(body)
        where = f" ({method} {url})" if method else ""
        super().__init__(f"HTTP {status}{where}: {self.message}")


class AuthenticationError(ApiError):
    """401: the request had no API key, or one the API does not know (or revoked)."""


class NotFound(ApiError):
    """404: no such job, or one of another tenant."""


class ModelNotDeployed(ApiError):
    """409 on submit: the model is served, but no version of it is deployed yet."""


class TransportError(ConveyorError):
    """The API could not be reached or did not answer, after every retry allowed."""


class JobFailed(ConveyorError):
    """The job ended without succeeding: ``job.status`` is failed or cancelled."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.id} {job.status.value}: {job.error or 'no error given'}")


class WaitTimeout(ConveyorError, TimeoutError):
    """The job was still queued or running when the wait ran out; ``job`` as last seen."""

    def __init__(self, job: Job, waited_s: float) -> None:
        self.job = job
        self.waited_s = waited_s
        super().__init__(f"job {job.id} is still {job.status.value} after {waited_s:g} s")


class InvalidWebhook(ConveyorError):
    """A webhook that must not be trusted: bad or missing signature, a timestamp more than
    five minutes off, or a body that is not the JSON event."""


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = str(body).strip()
    return text[:500] if text else "(no body)"
