"""One declarative description of every AWS resource Conveyor uses.

Queues, dead-letter queues, buckets and the least-privilege IAM policy of each service are
derived from a handful of values (a name prefix, the served models, the redrive limit). The
emulator provisions exactly this; service configuration resolves its queue names from it; the
cloud renderings are made from it. Nothing else in the code base spells a queue name.

    client -> ingest -> {prefix}-infer-<model> -> infer -> {prefix}-results -> persist
           -> {prefix}-notify -> notify -> webhook

Every queue has ``<name>-dlq`` with a redrive policy and a longer retention than its source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from shared.errors import TopologyError

__all__ = [
    "DEFAULT_MODEL",
    "OBSERVER",
    "SERVICES",
    "Arns",
    "BucketSpec",
    "QueueSpec",
    "Statement",
    "Topology",
]

SERVICES: Final = ("ingest", "infer", "persist", "notify")
OBSERVER: Final = "observer"
"""The read-only identity of an operator's view (``conveyor top``): queue depths, job counts,
delivery outcomes; never a message, a payload or a secret."""
DEFAULT_MODEL: Final = "all-minilm-l6-v2"

# A prefix and a model name both end up in queue names (80 characters, [A-Za-z0-9_-]) and
# bucket names (3-63 characters, lower case, digits, hyphens), so both are held to the
# intersection of those rules, with lengths that keep the longest derived name valid.
PREFIX_PATTERN: Final = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$")
MODEL_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,38}[a-z0-9])?$")

_DAY = 86_400
_SQS_MAX_RETENTION = 14 * _DAY
_SQS_MIN_RETENTION = 60

_CONSUME: Final = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
)
_PUBLISH: Final = ("sqs:SendMessage", "sqs:GetQueueUrl")
# The object naming a model's deployed version, ``<name>/LATEST`` (services.infer.manifest).
MODEL_POINTER: Final = "LATEST"
# ingest reads queue depth for backpressure (429 when a model's backlog is too deep).
_PUBLISH_AND_MEASURE: Final = (*_PUBLISH, "sqs:GetQueueAttributes")


@dataclass(frozen=True)
class Arns:
    """Builds ARNs for one account and region."""

    region: str
    account_id: str
    partition: str = "aws"

    def queue(self, name: str) -> str:
        return f"arn:{self.partition}:sqs:{self.region}:{self.account_id}:{name}"

    def bucket(self, name: str) -> str:
        return f"arn:{self.partition}:s3:::{name}"

    def objects(self, name: str) -> str:
        return f"arn:{self.partition}:s3:::{name}/*"


@dataclass(frozen=True)
class QueueSpec:
    """A work queue and its dead-letter queue."""

    key: str
    """Logical name, the same in every stack: ``infer-<model>``, ``results``, ``notify``."""
    name: str
    """Physical name: the logical name behind the stack's prefix."""
    visibility_timeout_s: int
    retention_s: int
    dlq_retention_s: int
    max_receive_count: int

    @property
    def dlq_name(self) -> str:
        return f"{self.name}-dlq"

    def attributes(self) -> dict[str, str]:
        """CreateQueue attributes of the source queue, without the redrive policy."""
        return {
            "VisibilityTimeout": str(self.visibility_timeout_s),
            "MessageRetentionPeriod": str(self.retention_s),
            # Long polling by default; consumers also ask for it per call.
            "ReceiveMessageWaitTimeSeconds": "20",
            "SqsManagedSseEnabled": "true",
        }

    def dlq_attributes(self, source_arn: str) -> dict[str, str]:
        """CreateQueue attributes of the DLQ: only its own source may redrive into it."""
        return {
            "MessageRetentionPeriod": str(self.dlq_retention_s),
            "SqsManagedSseEnabled": "true",
            "RedriveAllowPolicy": json.dumps(
                {"redrivePermission": "byQueue", "sourceQueueArns": [source_arn]}
            ),
        }

    def redrive_policy(self, dlq_arn: str) -> str:
        return json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": self.max_receive_count}
        )


@dataclass(frozen=True)
class BucketSpec:
    key: str
    """Logical name: ``payloads`` or ``models``."""
    name: str
    expire_after_days: int | None = None
    """Objects older than this are deleted by a lifecycle rule (claim-checked payloads)."""
    versioned: bool = False
    """Keep every version of every object (model artifacts: a bad push can be undone)."""
    sse_algorithm: Literal["AES256", "aws:kms"] = "AES256"
    """Default encryption at rest (SSE-S3)."""


@dataclass(frozen=True)
class Statement:
    """One Allow statement of an IAM policy."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": list(self.actions),
            "Resource": list(self.resources),
        }


@dataclass(frozen=True)
class Topology:
    """Everything Conveyor needs in one AWS account and region, for one stack.

    ``prefix`` lets several stacks (developers, CI runs, staging) share an account.
    """

    prefix: str = "conveyor"
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    max_receive_count: int = 5
    notify_max_receive_count: int = 20
    """notify retries webhooks on its own schedule (visibility changes count as receives), so
    its queue redrives later; poison still reaches its DLQ."""
    retention_s: int = 4 * _DAY
    dlq_retention_s: int = 14 * _DAY
    infer_visibility_timeout_s: int = 30
    """Held messages are extended by the consumer's heartbeat, so this only bounds how long the
    messages of a worker that died wait before another takes them: short is better."""
    visibility_timeout_s: int = 30
    payload_expiry_days: int = 7
    _queues: Mapping[str, QueueSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.match(self.prefix):
            raise TopologyError(
                f"prefix {self.prefix!r} is invalid: expected 2-24 characters of lower-case "
                "letters, digits and hyphens, starting with a letter"
            )
        if not self.models:
            raise TopologyError("a topology needs at least one model")
        for model in self.models:
            if not MODEL_PATTERN.match(model):
                raise TopologyError(
                    f"model name {model!r} is invalid: expected 1-40 characters of lower-case "
                    "letters, digits, '.' and '-', starting and ending with a letter or digit"
                )
        if len(set(self.models)) != len(self.models):
            raise TopologyError(f"model names repeat: {', '.join(self.models)}")
        for count in (self.max_receive_count, self.notify_max_receive_count):
            if not 1 <= count <= 1000:
                raise TopologyError("max_receive_count must be between 1 and 1000 (an SQS limit)")
        if not _SQS_MIN_RETENTION <= self.retention_s < self.dlq_retention_s <= _SQS_MAX_RETENTION:
            raise TopologyError(
                "retention must satisfy 60 s <= queue retention < DLQ retention <= 14 days, "
                "so that a message cannot expire in its DLQ before it would have in its source"
            )
        queues = [self._queue(f"infer-{m}", self.infer_visibility_timeout_s) for m in self.models]
        queues.append(self._queue("results", self.visibility_timeout_s))
        queues.append(
            self._queue("notify", self.visibility_timeout_s, self.notify_max_receive_count)
        )
        object.__setattr__(self, "_queues", {q.key: q for q in queues})

    def _queue(
        self, key: str, visibility_timeout_s: int, max_receive_count: int | None = None
    ) -> QueueSpec:
        return QueueSpec(
            key=key,
            name=f"{self.prefix}-{key}",
            visibility_timeout_s=visibility_timeout_s,
            retention_s=self.retention_s,
            dlq_retention_s=self.dlq_retention_s,
            max_receive_count=max_receive_count or self.max_receive_count,
        )

    # -- queues ------------------------------------------------------------------------------

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        return tuple(self._queues.values())

    def queue(self, key: str) -> QueueSpec:
        try:
            return self._queues[key]
        except KeyError:
            known = ", ".join(self._queues)
            raise TopologyError(f"no queue {key!r} in this topology (known: {known})") from None

    def infer_queue(self, model: str) -> QueueSpec:
        if model not in self.models:
            raise TopologyError(
                f"model {model!r} is not served by this stack (models: {', '.join(self.models)})"
            )
        return self._queues[f"infer-{model}"]

    @property
    def infer_queues(self) -> tuple[QueueSpec, ...]:
        return tuple(self.infer_queue(m) for m in self.models)

    @property
    def results_queue(self) -> QueueSpec:
        return self._queues["results"]

    @property
    def notify_queue(self) -> QueueSpec:
        return self._queues["notify"]

    # -- buckets -----------------------------------------------------------------------------

    @property
    def payloads_bucket(self) -> BucketSpec:
        return BucketSpec("payloads", f"{self.prefix}-payloads", self.payload_expiry_days)

    @property
    def models_bucket(self) -> BucketSpec:
        return BucketSpec("models", f"{self.prefix}-models", versioned=True)

    @property
    def buckets(self) -> tuple[BucketSpec, ...]:
        return (self.payloads_bucket, self.models_bucket)

    # -- IAM ---------------------------------------------------------------------------------

    def user_name(self, service: str) -> str:
        """The IAM user (emulator) or role (cloud) a service runs as."""
        self._check_service(service)
        return f"{self.prefix}-{service}"

    def statements(self, service: str, arns: Arns) -> tuple[Statement, ...]:
        """Exactly the actions and resources ``service`` (or the observer) needs, and nothing
        else."""
        self._check_service(service)
        if service == OBSERVER:
            return self.observer_statements(arns)
        infer_queues = tuple(arns.queue(q.name) for q in self.infer_queues)
        results = (arns.queue(self.results_queue.name),)
        notify = (arns.queue(self.notify_queue.name),)
        payloads = (arns.objects(self.payloads_bucket.name),)
        if service == "ingest":
            return (
                Statement("EnqueueJobs", _PUBLISH_AND_MEASURE, infer_queues),
                # Write only: ingest's relay offloads large payloads and never reads one back.
                Statement("ClaimCheckPayloads", ("s3:PutObject",), payloads),
                # Whether a model has a deployed version (its LATEST pointer), and nothing
                # else of the models bucket: jobs for an undeployed model are refused.
                Statement(
                    "ReadModelPointers",
                    ("s3:GetObject",),
                    (f"{arns.bucket(self.models_bucket.name)}/*/{MODEL_POINTER}",),
                ),
            )
        if service == "infer":
            models = self.models_bucket.name
            return (
                Statement("ConsumeJobs", _CONSUME, infer_queues),
                Statement("PublishResults", _PUBLISH, results),
                Statement("ListModels", ("s3:ListBucket",), (arns.bucket(models),)),
                Statement("ReadModels", ("s3:GetObject",), (arns.objects(models),)),
                Statement("ClaimCheckPayloads", ("s3:PutObject", "s3:GetObject"), payloads),
            )
        if service == "persist":
            return (
                Statement("ConsumeResults", _CONSUME, results),
                Statement("PublishNotifications", _PUBLISH, notify),
                Statement("ReadPayloads", ("s3:GetObject",), payloads),
            )
        return (
            Statement("ConsumeNotifications", _CONSUME, notify),
            Statement("ReadPayloads", ("s3:GetObject",), payloads),
        )

    def observer_statements(self, arns: Arns) -> tuple[Statement, ...]:
        """Read the depth of every queue and dead-letter queue: what ``conveyor top`` shows."""
        queues = tuple(arns.queue(name) for q in self.queues for name in (q.name, q.dlq_name))
        return (
            Statement("ReadQueueDepths", ("sqs:GetQueueUrl", "sqs:GetQueueAttributes"), queues),
        )

    def policy_document(self, service: str, arns: Arns) -> dict[str, Any]:
        return _document(self.statements(service, arns))

    def scaler_statements(self, arns: Arns) -> tuple[Statement, ...]:
        """What a queue-depth autoscaler (the KEDA operator) may do: read the depth of the
        work queues, and nothing else: it never sees a message."""
        queues = tuple(arns.queue(q.name) for q in self.queues)
        return (Statement("ReadQueueDepth", ("sqs:GetQueueAttributes",), queues),)

    def scaler_policy_document(self, arns: Arns) -> dict[str, Any]:
        return _document(self.scaler_statements(arns))

    @staticmethod
    def _check_service(service: str) -> None:
        if service not in SERVICES and service != OBSERVER:
            raise TopologyError(
                f"unknown service {service!r} (services: {', '.join(SERVICES)}; {OBSERVER})"
            )


def _document(statements: tuple[Statement, ...]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [s.to_json() for s in statements]}
