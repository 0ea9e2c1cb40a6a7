"""Every AWS call measured at one seam: botocore's ``before-call`` and ``after-call`` events.

:class:`~shared.aws.clients.AwsClients` calls :func:`instrument` on each client it opens, so
every SQS and S3 call of every service (consumer, publisher, claim checks, readiness probes,
model fetches) is timed and its failures counted, without a wrapper at each call site:

    conveyor_aws_request_duration_seconds{api="sqs", operation="SendMessageBatch"}
    conveyor_aws_request_errors_total{api="sqs", operation="ReceiveMessage", reason="throttled"}

A call is timed from ``before-call`` to ``after-call`` (an answer, an error answer included) or
``after-call-error`` (no answer: the endpoint unreachable, a timeout), so botocore's own
retries are inside the figure.
"""

from __future__ import annotations

import time
from typing import Any, Final

from shared.aws.errors import error_reason, exception_reason
from shared.metrics import AWS_REQUEST_DURATION, AWS_REQUEST_ERRORS

__all__ = ["instrument"]

_STARTED: Final = "conveyor_started"
"""Where the start time waits in botocore's per-call request context."""


def instrument(client: Any) -> None:
    """Time and count the calls of one (aio)botocore client."""
    events = client.meta.events
    events.register("before-call", _before_call, unique_id="conveyor-before-call")
    events.register("after-call", _after_call, unique_id="conveyor-after-call")
    events.register("after-call-error", _after_call_error, unique_id="conveyor-after-call-error")


def _names(event_name: str) -> tuple[str, str]:
    """``after-call.sqs.ReceiveMessage`` -> ("sqs", "ReceiveMessage")."""
    _, _, rest = event_name.partition(".")
    api, _, operation = rest.partition(".")
    return api, operation


def _before_call(context: dict[str, Any], **_: Any) -> None:
    context[_STARTED] = time.perf_counter()


def _observe(event_name: str, context: dict[str, Any]) -> tuple[str, str]:
    api, operation = _names(event_name)
    started = context.pop(_STARTED, None)
    if started is not None:
        AWS_REQUEST_DURATION.labels(api, operation).observe(time.perf_counter() - started)
    return api, operation


def _after_call(
    event_name: str, context: dict[str, Any], http_response: Any, parsed: Any, **_: Any
) -> None:
    api, operation = _observe(event_name, context)
    status = getattr(http_response, "status_code", None)
    if status is not None and status >= 300:
        error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
        code = str(error.get("Code", ""))
        AWS_REQUEST_ERRORS.labels(api, operation, error_reason(code, status)).inc()


def _after_call_error(
    event_name: str, context: dict[str, Any], exception: BaseException, **_: Any
) -> None:
    api, operation = _observe(event_name, context)
    AWS_REQUEST_ERRORS.labels(api, operation, exception_reason(exception)).inc()
