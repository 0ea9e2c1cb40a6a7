"""Make moto's IAM checks on SQS behave like AWS where our policies depend on it.

1. The batch actions. AWS has no IAM actions ``sqs:SendMessageBatch``,
   ``sqs:DeleteMessageBatch`` or ``sqs:ChangeMessageVisibilityBatch``: each batch call is
   authorized as its single-message action. moto checks the batch names, which no
   least-privilege policy lists. The patch maps them as AWS does.

2. Queue names. moto authorizes an SQS call against the ARN of the queue named by
   ``QueueUrl``. Calls that name the queue by ``QueueName`` instead (``GetQueueUrl``,
   ``CreateQueue``) fall back to ``"*"``, so a policy that lists exact queue ARNs (least
   privilege) is denied ``GetQueueUrl`` on its own queues. AWS authorizes those calls against
   the named queue's ARN, whether or not it exists: an allowed caller then learns
   ``QueueDoesNotExist``, any other caller gets ``AccessDenied``. The patch does the same.

3. Deletes that lost sends. moto's server answers requests on many threads at once, and
   ``Queue.delete_message`` rebuilds the queue's message list without the lock that
   ``add_message`` takes, then puts the copy in place: a message sent by another thread in
   between was answered with its id and never stored. Seen as 26 of 4000 jobs left ``queued``
   forever by ``benchmarks/pipeline.py --jobs 4000`` (their messages sent, every queue empty).
   SQS never loses an acknowledged message; the patch deletes under the queue's lock.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install"]

BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def install() -> None:
    """Apply the patches (idempotent)."""
    _authorize_batches_as_aws_does()
    _authorize_queue_names()
    _delete_under_the_queue_lock()


def _authorize_batches_as_aws_does() -> None:
    from moto.iam.access_control import IAMRequestBase

    if getattr(IAMRequestBase.__init__, "__wrapped__", None) is not None:
        return
    original = IAMRequestBase.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._action = BATCH_ACTIONS.get(self._action, self._action)

    init.__wrapped__ = original  # type: ignore[attr-defined]
    IAMRequestBase.__init__ = init  # type: ignore[method-assign]


def _authorize_queue_names() -> None:
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


def _delete_under_the_queue_lock() -> None:
    from moto.sqs.models import Queue

    if getattr(Queue.delete_message, "__wrapped__", None) is not None:
        return
    original = Queue.delete_message

    def delete_message(self: Any, receipt_handle: str) -> None:
        # The lock add_message appends under (a Condition over an RLock); a long poll waits on
        # it without holding it.
        with self._messages_lock:
            original(self, receipt_handle)

    delete_message.__wrapped__ = original  # type: ignore[attr-defined]
    Queue.delete_message = delete_message  # type: ignore[method-assign]
