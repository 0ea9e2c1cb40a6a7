"""The project's error hierarchy.

Every error Conveyor raises on purpose derives from :class:`ConveyorError`, so callers can catch
one base class. Errors of the libraries underneath (botocore, asyncpg, pydantic) are translated
into this tree at one seam each (``shared.aws.errors`` for AWS), with ``raise ... from exc`` so
that the original stays attached.

    ConveyorError
    ├── ConfigError                 bad or missing environment variable (fails at start-up)
    ├── TopologyError               an invalid topology description
    ├── MigrationError              a schema migration could not be applied or was edited
    ├── CallbackRefused             a callback URL names a non-public address (shared.netguard)
    ├── PoisonMessage               a message that can never be processed (shared.messages)
    └── AwsError                    any failed AWS call (carries service, operation, code)
        ├── ResourceNotFound        a queue or bucket that the topology names does not exist
        │   ├── QueueNotFound
        │   └── BucketNotFound
        ├── AccessDenied            IAM refused the call
        ├── Throttled               the service asked us to slow down; safe to retry
        └── AwsUnavailable          the endpoint could not be reached or timed out; safe to retry
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AwsError",
    "AwsUnavailable",
    "BucketNotFound",
    "ConfigError",
    "ConveyorError",
    "MigrationError",
    "QueueNotFound",
    "ResourceNotFound",
    "Throttled",
    "TopologyError",
    "leaves",
]


class ConveyorError(Exception):
    """Base class of every error Conveyor raises on purpose."""


class ConfigError(ConveyorError):
    """The environment does not describe a valid configuration."""


class TopologyError(ConveyorError):
    """The topology description is inconsistent (bad names, duplicate resources...)."""


class MigrationError(ConveyorError):
    """A schema migration failed, or an applied migration no longer matches its file."""


class AwsError(ConveyorError):
    """An AWS call failed. ``code`` is the AWS error code when the service answered."""

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        operation: str = "",
        code: str = "",
    ) -> None:
        super().__init__(message)
        self.service = service
        self.operation = operation
        self.code = code


class ResourceNotFound(AwsError):
    """A named AWS resource does not exist where we looked for it."""

    def __init__(
        self,
        message: str,
        *,
        resource: str,
        service: str = "",
        operation: str = "",
        code: str = "",
    ) -> None:
        super().__init__(message, service=service, operation=operation, code=code)
        self.resource = resource


class QueueNotFound(ResourceNotFound):
    """An SQS queue does not exist (botocore's ``QueueDoesNotExist``)."""


class BucketNotFound(ResourceNotFound):
    """An S3 bucket does not exist (``NoSuchBucket``)."""


class AccessDenied(AwsError):
    """IAM denied the call: the caller's policy does not allow this action on this resource."""


class Throttled(AwsError):
    """The service throttled the call; retry with backoff."""


class AwsUnavailable(AwsError):
    """The endpoint could not be reached, or did not answer in time."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups, or ``[exc]`` itself.

    Task groups wrap whatever their tasks raise; callers that want the error itself use this.
    """
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]
