"""One signed webhook request per call, as the Standard Webhooks specification describes it.

    body    {"type": "job.succeeded", "timestamp": "2026-11-03T20:26:10Z", "data": {...}}
    headers webhook-id         stable across every retry of one delivery (see webhook_id_for)
            webhook-timestamp  this attempt's Unix time in seconds
            webhook-signature  "v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>", one per
                               signing secret, space-separated (the current secret first)

Each delivery is signed with the ``secrets`` it is given (an endpoint's current secret and
those still in their rotation overlap, see services.notify.endpoints), or else with the
sender's default secret (``NOTIFY_WEBHOOK_SECRET``). No secret is ever logged or shown.

:meth:`WebhookSender.deliver` never raises for what the network or the receiver does: every
answer, refusal and timeout becomes a :class:`DeliveryOutcome`, and the caller decides about
retries with :class:`~services.notify.schedule.RetrySchedule`. How answers are classified:

    2xx                     succeeded
    410 Gone                failed, give_up: the receiver asked us to stop (spec: disable it)
    3xx                     failed, retry: redirects are never followed (a redirect could point
                            the signed request at an internal address)
    any other status        failed, retry (4xx included, as the spec asks: a 401 or 404 is often
                            a receiver mid-deploy or mid secret rotation, and the schedule is
                            bounded; a dropped notification costs more than a few requests)
    timeout, refused, DNS,  failed, retry
    TLS, protocol errors
    a malformed URL         failed, give_up: no retry can make it valid
    refused by the address  failed, give_up: the transport raised from CallbackRefused (see
    policy (SSRF)           services.notify.ssrf); the error is "refused: <which range>"

``Retry-After`` is parsed from any failed answer (it matters for 429 and 503).

Errors raised on purpose (programming errors, not delivery failures):

    ConveyorError
    └── WebhookError
        ├── InvalidPayload      the data cannot be serialised as strict JSON
        ├── InvalidSecret       a signing secret given to deliver() is not whsec_ + base64
        └── SenderClosed        deliver() after aclose()
"""

from __future__ import annotations

import base64
import binascii
import datetime
import importlib.metadata
import json
import math
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import httpx
from anyio.abc import AsyncResource
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from services.notify.schedule import parse_retry_after
from shared.errors import ConfigError, ConveyorError
from shared.netguard import CallbackRefused

__all__ = [
    "USER_AGENT",
    "DeliveryOutcome",
    "InvalidPayload",
    "InvalidSecret",
    "SenderClosed",
    "WebhookError",
    "WebhookSender",
    "encode_payload",
    "iso_utc",
    "webhook_id_for",
]


def _version() -> str:
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


USER_AGENT: Final = f"Conveyor-Webhooks/{_version()}"
_MAX_ERROR_CHARS: Final = 300


class WebhookError(ConveyorError):
    """A webhook could not even be attempted because of how it was asked for."""


class InvalidPayload(WebhookError):
    """The event data is not JSON-serialisable (or holds NaN or infinity)."""


class InvalidSecret(WebhookError):
    """A signing secret is not ``whsec_`` and base64 of 24-64 bytes (or none was given)."""


class SenderClosed(WebhookError):
    """The sender was closed; open a new one."""


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one attempt came to. Holds no secret and no request body."""

    succeeded: bool
    status_code: int | None
    """The receiver's HTTP status; None when no answer came (timeout, refused...)."""
    error: str | None
    """Short text for people and the delivery log; None when it succeeded."""
    retry_after_s: float | None
    """What the receiver's Retry-After asked for, in seconds from now."""
    give_up: bool
    """True when retrying cannot help (410 Gone, a malformed URL)."""
    duration_ms: int

    @property
    def should_retry(self) -> bool:
        return not self.succeeded and not self.give_up


def webhook_id_for(job_id: uuid.UUID, event: str) -> str:
    """The ``webhook-id`` of a job's event: the same for every retry and every redelivery."""
    return "msg_" + uuid.uuid5(job_id, event).hex


def iso_utc(when: datetime.datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def encode_payload(event_type: str, data: Mapping[str, Any], occurred_at: datetime.datetime) -> str:
    """The webhook body, serialised once: what is signed is exactly what is sent."""
    try:
        return json.dumps(
            {"type": event_type, "timestamp": iso_utc(occurred_at), "data": data},
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"the {event_type} data is not strict JSON: {exc}") from exc


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class WebhookSender(AsyncResource):
    """Signs and sends webhooks over one HTTP client; ``async with`` it, or call ``aclose()``.

    The client never follows redirects and ignores proxy variables and ``.netrc``
    (``trust_env=False``), so a request goes only where the caller said. ``transport`` is the
    seam for an address-checking (SSRF) transport or a test double; the sender owns and closes
    it. ``clock`` gives the attempt's time (tests set it).
    """

    def __init__(
        self,
        secret: str | SecretStr,
        timeout_s: float,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not _valid_secret(raw):
            # Say what is wrong without quoting the secret.
            raise ConfigError(
                "the webhook secret must be whsec_ followed by base64 of 24-64 random bytes"
            )
        self._webhook = Webhook(raw)
        self._timeout_s = timeout_s
        self._clock = clock
        self._closed = False
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections),
            headers={"user-agent": USER_AGENT},
            transport=transport,
        )

    def __repr__(self) -> str:  # never show the secret
        state = "closed" if self._closed else "open"
        return f"<WebhookSender timeout_s={self._timeout_s:g} {state}>"

    async def aclose(self) -> None:
        """Close the connections; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._client.aclose()

    async def deliver(
        self,
        url: str,
        *,
        webhook_id: str,
        event_type: str,
        data: Mapping[str, Any],
        occurred_at: datetime.datetime | None = None,
        secrets: Sequence[str] | None = None,
    ) -> DeliveryOutcome:
        """POST one signed event to ``url``; every failure is an outcome, never an exception.

        ``occurred_at`` is the body's ``timestamp``, when the event happened (default: now).
        Pass the same value on every retry and the body is byte-identical across them.
        ``secrets``: sign with each of these (the current one first) and send the signatures
        space-separated; None signs with the sender's default secret. An empty or malformed
        one raises InvalidSecret (a programming error: nothing is sent).
        """
        if self._closed:
            raise SenderClosed("this WebhookSender is closed")
        signers = [self._webhook] if secrets is None else _signers(secrets)
        now = self._clock().astimezone(datetime.UTC)
        body = encode_payload(event_type, data, occurred_at or now)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": " ".join(w.sign(webhook_id, now, body) for w in signers),
        }
        started = time.perf_counter()
        problem = _url_problem(url)

        def fail(error: str, *, give_up: bool = False) -> DeliveryOutcome:
            return DeliveryOutcome(
                succeeded=False,
                status_code=None,
                error=_clip(error),
                retry_after_s=None,
                give_up=give_up,
                duration_ms=_ms_since(started),
            )

        if problem is not None:
            return fail(f"invalid URL: {problem}", give_up=True)
        try:
            # httpx's timeout bounds each read; this bounds the whole attempt, so a receiver
            # that drips its answer byte by byte cannot hold a delivery slot.
            with anyio.fail_after(self._timeout_s):
                async with self._client.stream(
                    "POST", url, content=body.encode(), headers=headers
                ) as response:
                    # The body is never read: only the status and headers count.
                    status = response.status_code
                    answer = response.headers
        except (TimeoutError, httpx.TimeoutException):
            return fail(f"timeout after {self._timeout_s:g}s")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return fail(f"invalid URL: {exc}", give_up=True)
        except httpx.HTTPError as exc:
            refusal = next((c for c in _causes(exc) if isinstance(c, CallbackRefused)), None)
            if refusal is not None:
                return fail(f"refused: {refusal}", give_up=True)
            return fail(_network_error(exc))

        duration_ms = _ms_since(started)
        if 200 <= status < 300:
            return DeliveryOutcome(True, status, None, None, False, duration_ms)
        if status == 410:
            error = "HTTP 410 Gone: the endpoint asked to be disabled"
        elif 300 <= status < 400 and answer.get("location"):
            error = f"HTTP {status}: redirect to {answer['location']} not followed"
        else:
            error = f"HTTP {status}"
        return DeliveryOutcome(
            succeeded=False,
            status_code=status,
            error=_clip(error),
            retry_after_s=parse_retry_after(answer.get("retry-after")),
            give_up=status == 410,
            duration_ms=duration_ms,
        )


def _signers(secrets: Sequence[str]) -> list[Webhook]:
    if isinstance(secrets, str):  # a str is a Sequence[str] too: one secret's characters
        raise InvalidSecret("secrets must be a sequence of secrets, not one string")
    if not secrets:
        raise InvalidSecret("no signing secret given (pass None for the default secret)")
    for position, secret in enumerate(secrets):
        if not _valid_secret(secret):  # which one, never the secret itself
            raise InvalidSecret(
                f"signing secret #{position} is not whsec_ followed by base64 of 24-64 bytes"
            )
    return [Webhook(secret) for secret in secrets]


def _valid_secret(secret: str) -> bool:
    """The spec's form, checked strictly (the library's own decoding skips invalid characters)."""
    if not secret.startswith("whsec_"):
        return False
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        return False
    return 24 <= len(key) <= 64


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook address, or None. (The URL itself is not quoted: it
    may carry credentials.) Checked here because some bad URLs get past httpx's parser and
    fail deep in the socket layer instead."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return str(exc)
    if parsed.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parsed.host:
        return "no host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return f"port {parsed.port} is out of range"
    return None


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _clip(text: str) -> str:
    text = " ".join(text.split())  # receiver-controlled text: one line
    if len(text) <= _MAX_ERROR_CHARS:
        return text
    return text[: _MAX_ERROR_CHARS - 3] + "..."


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, innermost last (bounded: chains can loop)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _network_error(exc: httpx.HTTPError) -> str:
    """Short text for a request that got no HTTP answer."""
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "name resolution failed"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, httpx.NetworkError):
        return f"connection lost: {exc}"
    return f"request failed: {type(exc).__name__}: {exc}"
