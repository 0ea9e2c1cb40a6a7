"""When a call is tried again, and how long it waits first: the policy (frozen data) and the
retry state of one call. No I/O here: the sync and async clients sleep as they are told.

    429, or 409 "same Idempotency-Key still in flight"
        busy: wait ``Retry-After`` (else the backoff), counted against ``busy_wait_s``
    502, 503, 504
        transient: wait the longer of ``Retry-After`` and the backoff, at most ``attempts`` tries
    a connection that could not be made (refused, DNS, connect or pool timeout)
        transient, whatever the method: the request never reached the API
    a connection lost after the request was sent (read error or timeout, protocol error)
        transient for GET, and for POST, which always carries an Idempotency-Key; not for
        DELETE, whose first try may have cancelled the job
    anything else
        final: the answer (or the error) goes to the caller

Every submission carries an Idempotency-Key, so a retried POST never records a second job.
"""

from __future__ import annotations

import datetime
import email.utils
import random
from dataclasses import dataclass
from typing import Final

import httpx

from conveyor.client._errors import TransportError

__all__ = ["Attempts", "RetryPolicy", "retry_after_s"]

_TRANSIENT_STATUSES: Final = frozenset({502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""The request never left: retrying cannot repeat its effect."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries. ``RetryPolicy(attempts=1, busy_wait_s=0)`` never retries."""

    attempts: int = 5
    """Tries of a call that meets transient failures (connection errors, 502/503/504)."""
    initial_backoff_s: float = 0.5
    backoff_coefficient: float = 2.0
    max_backoff_s: float = 10.0
    busy_wait_s: float = 600.0
    """Seconds one call may spend waiting out 429 answers (a model's backlog is full)."""
    max_retry_after_s: float = 60.0
    """A ``Retry-After`` longer than this is waited for this long, then asked again."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def backoff_s(self, failures: int) -> float:
        """The wait after the ``failures``-th failure, with up to 20% jitter either way."""
        base = self.initial_backoff_s * self.backoff_coefficient ** max(0, failures - 1)
        return min(self.max_backoff_s, base) * random.uniform(0.8, 1.2)  # noqa: S311


class Attempts:
    """The retry state of one call: tell it each outcome; it answers how long to wait before
    the next try, or None when the outcome is final."""

    def __init__(self, policy: RetryPolicy, method: str) -> None:
        self.policy = policy
        self.method = method
        self.failures = 0
        self.busy = 0
        self.busy_s = 0.0

    def after_response(self, response: httpx.Response) -> float | None:
        status = response.status_code
        if status == 429 or (status == 409 and _in_flight(response)):
            return self._busy(response)
        if status in _TRANSIENT_STATUSES:
            return self._transient(retry_after_s(response, self.policy.max_retry_after_s))
        return None

    def after_error(self, exc: httpx.HTTPError) -> float:
        """The wait before the next try; TransportError (from ``exc``) when there is none."""
        retryable = isinstance(exc, _NOT_SENT) or (
            isinstance(exc, httpx.TransportError) and self.method in ("GET", "POST")
        )
        delay = self._transient(None) if retryable else None
        if delay is None:
            tries = f" after {self.failures} tries" if self.failures > 1 else ""
            raise TransportError(
                f"{self.method} failed{tries}: {type(exc).__name__}: {exc}"
            ) from exc
        return delay

    def _busy(self, response: httpx.Response) -> float | None:
        delay = retry_after_s(response, self.policy.max_retry_after_s)
        self.busy += 1
        if delay is None:
            delay = self.policy.backoff_s(self.busy)
        if self.busy_s + delay > self.policy.busy_wait_s:
            return None
        self.busy_s += delay
        return delay

    def _transient(self, retry_after: float | None) -> float | None:
        self.failures += 1
        if self.failures >= self.policy.attempts:
            return None
        return max(retry_after or 0.0, self.policy.backoff_s(self.failures))


def retry_after_s(response: httpx.Response, cap_s: float) -> float | None:
    """The answer's ``Retry-After`` in seconds (a number or an HTTP date), within [0, cap_s]."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap_s)


def _in_flight(response: httpx.Response) -> bool:
    """A 409 that means "the first request with this key is still being recorded": it comes
    with a Retry-After, unlike a model without a deployed version."""
    return response.request.method == "POST" and "Retry-After" in response.headers
