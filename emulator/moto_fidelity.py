"""Make moto's IAM checks on SQS behave like AWS where our policies depend on it.

moto authorizes an SQS call against the ARN of the queue named by ``QueueUrl``. Calls that name
the queue by ``QueueName`` instead (``GetQueueUrl``, ``CreateQueue``) fall back to ``"*"``, so a
policy that lists exact queue ARNs (least privilege) is denied ``GetQueueUrl`` on its own
queues. AWS authorizes those calls against the named queue's ARN, whether or not it exists:
an allowed caller then learns ``QueueDoesNotExist``, any other caller gets ``AccessDenied``.
This patch does the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install"]


def install() -> None:
    """Patch ``SQSResponse._determine_resource`` (idempotent)."""
    from moto.sqs.responses import SQSResponse
    from moto.utilities.utils import get_partition

    original = getattr(SQSResponse._determine_resource, "__wrapped__", None)
    if original is not None:  # already installed
        return
    original = SQSResponse._determine_resource

    def _determine_resource(self: Any) -> str:
        if self._get_param("QueueUrl") is None:
            name = self._get_param("QueueName")
            if isinstance(name, str) and name:
                region = self.region
                return f"arn:{get_partition(region)}:sqs:{region}:{self.current_account}:{name}"
        return str(original(self))

    _determine_resource.__wrapped__ = original  # type: ignore[attr-defined]
    SQSResponse._determine_resource = _determine_resource  # type: ignore[method-assign]
