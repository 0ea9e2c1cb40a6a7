"""The one seam where botocore errors become Conveyor errors.

Use :func:`aws_errors` around AWS calls. A missing queue or bucket becomes an error that names
the resource, where we looked (endpoint and region) and the command that creates it, so the
classic ``QueueDoesNotExist`` surprise explains itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from shared.config import AwsSettings
from shared.errors import (
    AccessDenied,
    AwsError,
    AwsUnavailable,
    BucketNotFound,
    QueueNotFound,
    Throttled,
)

__all__ = ["PROVISION_HINT", "aws_errors", "error_reason", "exception_reason", "translate"]

PROVISION_HINT = (
    "create it with `conveyor provision` against this endpoint, "
    "or start the offline stack with `make dev`; "
    "check that CONVEYOR_PREFIX, CONVEYOR_MODELS and AWS_REGION match the provisioned stack"
)

_QUEUE_MISSING = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
_BUCKET_MISSING = frozenset({"NoSuchBucket"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
    }
)
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "SlowDown",
        "AWS.SimpleQueueService.RequestThrottled",
        "RequestLimitExceeded",
    }
)
_UNAVAILABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)


_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def _unwrap_xml(code: str, message: str) -> tuple[str, str]:
    """moto answers some JSON-protocol calls (IAM denials) with an XML body that botocore
    cannot parse, leaving the HTTP status as the code and the raw XML as the message."""
    if message.lstrip().startswith("<"):
        found_code, found_message = _XML_CODE.search(message), _XML_MESSAGE.search(message)
        code = found_code[1] if found_code else code
        message = found_message[1] if found_message else message
    return code, message or code


def error_reason(code: str, status: int | None) -> str:
    """A failed call's reason in a few words, for a metric's bounded ``reason`` label."""
    if code in _QUEUE_MISSING or code in _BUCKET_MISSING or code.startswith("NoSuch"):
        return "not_found"
    if status == 404:
        return "not_found"
    if code in _DENIED or status == 403:
        return "access_denied"
    if code in _THROTTLED or status == 429:
        return "throttled"
    if status is not None and status >= 500:
        return "server_error"
    return "client_error"


def exception_reason(exc: BaseException) -> str:
    """The ``reason`` of a call that got no answer (the endpoint unreachable...)."""
    return "unavailable" if isinstance(exc, _UNAVAILABLE) else "error"


def translate(exc: Exception, aws: AwsSettings, resource: str | None = None) -> Exception:
    """Map one botocore exception to the project's tree; others are returned unchanged."""
    where = f"{aws.where}, region {aws.region}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = _unwrap_xml(str(error.get("Code", "")), str(error.get("Message", "")))
        op = exc.operation_name
        what = resource or "the resource"
        if code in _QUEUE_MISSING:
            return QueueNotFound(
                f"SQS queue {what!r} does not exist at {where}; {PROVISION_HINT}",
                resource=what,
                service="sqs",
                operation=op,
                code=code,
            )
        if code in _BUCKET_MISSING:
            bucket = resource or str(error.get("BucketName", "")) or "the bucket"
            return BucketNotFound(
                f"S3 bucket {bucket!r} does not exist at {where}; {PROVISION_HINT}",
                resource=bucket,
                service="s3",
                operation=op,
                code=code,
            )
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DENIED or (status == 403 and not code.startswith("NoSuch")):
            return AccessDenied(
                f"{op} on {what} was denied at {where} ({code}): the caller's IAM policy does "
                f"not allow it; see shared/topology.py for what each service may do. {message}",
                operation=op,
                code=code if code in _DENIED else "AccessDenied",
            )
        if code in _THROTTLED:
            return Throttled(f"{op} was throttled at {where}: {message}", operation=op, code=code)
        return AwsError(f"{op} failed at {where} ({code}): {message}", operation=op, code=code)
    if isinstance(exc, _UNAVAILABLE):
        return AwsUnavailable(f"cannot reach {where}: {exc}")
    if isinstance(exc, NoCredentialsError):
        return AwsError(
            f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or the service-prefixed pair), or run where an IAM role is available"
        )
    if isinstance(exc, BotoCoreError):
        return AwsError(f"AWS client error at {where}: {exc}")
    return exc


@contextmanager
def aws_errors(aws: AwsSettings, resource: str | None = None) -> Iterator[None]:
    """Translate botocore errors raised inside the block (works around ``await`` calls)."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, aws, resource) from exc
