"""What the sync and async clients share: configuration, request bodies, answers, keys.

Neither client holds logic the other lacks: each only runs these pieces with its own I/O
(``httpx.Client`` and threads; ``httpx.AsyncClient`` and asyncio tasks).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any, Final
from urllib.parse import quote

import httpx

from conveyor.client._errors import ApiError, AuthenticationError, ModelNotDeployed, NotFound
from conveyor.client._models import Accepted, Job, JobInput, parse_accepted, parse_job

__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "KEY_HEADER",
    "MAX_CONCURRENCY",
    "WAIT_CHUNK_S",
    "JobInputs",
    "accepted",
    "check",
    "check_concurrency",
    "client_options",
    "first_wait",
    "job_path",
    "new_key",
    "read_params",
    "settled",
    "submission",
    "text_groups",
    "time_left",
]

API_URL_ENV: Final = "CONVEYOR_API_URL"
API_KEY_ENV: Final = "CONVEYOR_API_KEY"
DEFAULT_API_URL: Final = "http://127.0.0.1:8000"
"""Where ``make dev`` serves the API."""
WAIT_CHUNK_S: Final = 20.0
"""One server-side wait: the API holds a status read at most INGEST_MAX_WAIT_S (30 s by
default), so longer waits are several reads."""
MAX_CONCURRENCY: Final = 256
KEY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"


def client_options(
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    headers: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The keyword arguments of the httpx client: the URL and key from the arguments, else
    ``CONVEYOR_API_URL`` and ``CONVEYOR_API_KEY``; redirects never followed."""
    url = base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    sent = {"User-Agent": f"conveyor-python/{_version()}", "Accept": "application/json"}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    sent.update(headers or {})
    return {
        "base_url": url,
        "headers": sent,
        "timeout": timeout,
        "follow_redirects": False,
        # Every job of a map holds a connection in its long poll.
        "limits": httpx.Limits(max_connections=MAX_CONCURRENCY, max_keepalive_connections=64),
    }


def submission(model: str, inputs: Sequence[str], callback_url: str | None) -> dict[str, Any]:
    """The body of ``POST /v1/jobs``."""
    if isinstance(inputs, str):
        raise TypeError("inputs must be a sequence of texts, not one text: use [text]")
    body: dict[str, Any] = {"model": model, "inputs": list(inputs)}
    if callback_url is not None:
        body["callback_url"] = callback_url
    return body


def accepted(response: httpx.Response, key: str) -> Accepted:
    replayed = response.headers.get(REPLAYED_HEADER, "").lower() == "true"
    return parse_accepted(check(response), key, replayed=replayed)


def settled(
    response: httpx.Response, key: str, *, use_numpy: bool | None
) -> tuple[Accepted, Job | None]:
    """The answer to a submission that waited (``POST /v1/jobs?wait=``): its acceptance, and
    the job as it stood when answered. A server older than the parameter answers the
    acceptance alone (then None)."""
    replayed = response.headers.get(REPLAYED_HEADER, "").lower() == "true"
    body = check(response)
    job = parse_job(body, use_numpy=use_numpy) if "model" in body else None
    return parse_accepted(body, key, replayed=replayed), job


def first_wait(timeout: float | None, chunk_s: float) -> float:
    """How long a submission that waits holds its answer: one chunk, at most ``timeout``."""
    return chunk_s if timeout is None else max(min(timeout, chunk_s), 0.0)


def time_left(timeout: float | None, began: float) -> float | None:
    """What remains of ``timeout`` (None: no deadline) since ``began`` (``time.monotonic()``)."""
    return None if timeout is None else max(timeout - (time.monotonic() - began), 0.0)


def check(response: httpx.Response) -> Any:
    """The answer's JSON; an :class:`ApiError` (or subclass) for an error status."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.is_success:
        return body
    request = response.request
    status = response.status_code
    error: type[ApiError] = ApiError
    if status == 401:
        error = AuthenticationError
    elif status == 404:
        error = NotFound
    elif status == 409 and request.method == "POST" and "Retry-After" not in response.headers:
        error = ModelNotDeployed  # the other 409 of a POST, "key in flight", has a Retry-After
    raise error(status, body, method=request.method, url=str(request.url))


def job_path(job_id: str | uuid.UUID) -> str:
    return f"/v1/jobs/{quote(str(job_id), safe='')}"


def read_params(wait_s: float) -> dict[str, str]:
    """The query of a job read: its vectors in base64 (their float32 bytes; nothing to print
    on the server nor to parse here), and ``wait`` when positive. A server older than the
    parameter ignores it and answers numbers, which :func:`parse_job` reads as well."""
    params = {"encoding_format": "base64"}
    if wait_s > 0:
        params["wait"] = f"{wait_s:.3f}"
    return params


def new_key(kind: str = "py") -> str:
    """A fresh Idempotency-Key, so that retrying a submission never records a second job."""
    return f"conveyor-{kind}-{uuid.uuid4().hex}"


class JobInputs:
    """Each item of a map as a :class:`JobInput`; a missing key is derived from one random
    name per map and the item's index, so a retried submission replays its first answer."""

    def __init__(self) -> None:
        self._run = new_key("map")

    def __call__(self, index: int, item: JobInput | Sequence[str]) -> JobInput:
        job = item if isinstance(item, JobInput) else JobInput(item)
        if job.idempotency_key is None:
            job = JobInput(job.inputs, f"{self._run}-{index}")
        return job


def text_groups(texts: Iterable[str], texts_per_job: int) -> Iterator[tuple[str, ...]]:
    """Consecutive texts in groups of ``texts_per_job`` (the last may be shorter)."""
    if texts_per_job < 1:
        raise ValueError("texts_per_job must be at least 1")
    if isinstance(texts, str):
        raise TypeError("map takes an iterable of texts, not one text")
    group: list[str] = []
    for text in texts:
        group.append(text)
        if len(group) == texts_per_job:
            yield tuple(group)
            group = []
    if group:
        yield tuple(group)


def check_concurrency(concurrency: int) -> None:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")


def _version() -> str:
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "0"
