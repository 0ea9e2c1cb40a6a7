"""Four of moto's per-request costs removed, answers unchanged.

1. Finding the backend. For every request moto's server asks ``list_of_moto_modules()``, which
   lists moto's package directory and stats each of its ~150 entries. The directory does not
   change while the process runs, so the list is read once.

2. Queue attributes. ``Queue.attributes`` builds every attribute of a queue, and three of them
   (``ApproximateNumberOfMessages*``) walk all of the queue's messages. moto reads it for single
   values: once per message sent (``ContentBasedDeduplication``) and three times per message
   received (``MessageRetentionPeriod``, through ``get_queue_attributes``). Under a backlog a
   receive was therefore quadratic in the queue's length; a profile of the pipeline benchmark
   put 8% of the emulator's time there and 9% in the directory listing above. The patched
   property returns a read-only mapping with the same keys, in the same order, that computes a
   value when it is read, so a caller pays only for what it reads.

3. Pending message groups. Every receive starts with ``Queue.pending_message_groups``: the FIFO
   group ids of the messages received and not yet deleted, a walk of every in-flight message,
   for standard queues too, where no group is ever pending (``receive_message`` reads the set
   only for a FIFO queue). The walk also raced: another server thread adding or removing an
   in-flight message mid-walk made the receive fail with ``RuntimeError: Set changed size
   during iteration`` (a 500, retried by botocore). The patched property answers an empty set
   for a standard queue, and walks a snapshot (``tuple`` of a set is one step under the GIL)
   for a FIFO queue.

4. Receipt handles. Each message received gets a new one: 185 lowercase letters, drawn with one
   ``random.choice`` call each (54 us a handle here, half of a 10-message receive once the
   clock is fast). ``random.choices`` draws the same letters in one call (15 us), from moto's
   own seedable generator.

All are patches of moto's internals (5.x), like :mod:`emulator.moto_clock`;
``tests/unit/test_moto_speed.py`` checks them against moto's own answers, so an upgrade that
changes a shape fails there first.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = ["QueueAttributes", "install", "installed"]


class QueueAttributes(Mapping[str, Any]):
    """What moto's ``Queue.attributes`` returns, each value computed when it is read."""

    __slots__ = ("_names", "_queue")

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        names = list(queue.BASE_ATTRIBUTES)
        if queue.fifo_queue:
            names += queue.FIFO_ATTRIBUTES
        if queue.kms_master_key_id:
            names += queue.KMS_ATTRIBUTES
        # A dict as an ordered set: moto's dict has one key per name, in this order.
        self._names = dict.fromkeys(names)

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        value = getattr(self._queue, _attribute(name))
        if name == "RedrivePolicy" and value:
            value = json.dumps(value)
        if isinstance(value, bool):
            return str(value).lower()
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._names  # Mapping's would compute the value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@functools.cache
def _attribute(name: str) -> str:
    """The Queue attribute of an SQS attribute name (moto converts it on every read)."""
    from moto.core.utils import camelcase_to_underscores

    return camelcase_to_underscores(name)


def _lazy_attributes(queue: Any) -> QueueAttributes:
    return QueueAttributes(queue)


def _pending_message_groups(queue: Any) -> set[str]:
    if not queue.fifo_queue:
        return set()
    return {m.group_id for m in tuple(queue._pending_messages) if m.group_id is not None}


RECEIPT_HANDLE_LENGTH: Final = 185
"""moto's (``moto.sqs.utils.generate_receipt_handle``)."""


def generate_receipt_handle() -> str:
    from moto.moto_api._internal import mock_random

    return "".join(mock_random.choices(string.ascii_lowercase, k=RECEIPT_HANDLE_LENGTH))


def install() -> None:
    """Apply the patches (idempotent)."""
    import moto.backends
    import moto.sqs.models as sqs_models
    from moto.sqs.models import Queue

    listing: Any = moto.backends.list_of_moto_modules
    if getattr(listing, "__wrapped__", None) is None:
        modules = tuple(listing())

        def list_of_moto_modules() -> tuple[str, ...]:
            return modules

        list_of_moto_modules.__wrapped__ = listing  # type: ignore[attr-defined]
        moto.backends.list_of_moto_modules = list_of_moto_modules
    current = Queue.__dict__["attributes"]
    if current.fget is not _lazy_attributes:
        # moto's own is kept beside it, for comparison (tests).
        setattr(Queue, "_eager_attributes", current)  # noqa: B010 - an attribute moto lacks
        setattr(Queue, "attributes", property(_lazy_attributes))  # noqa: B010
    groups = Queue.__dict__["pending_message_groups"]
    if groups.fget is not _pending_message_groups:
        setattr(Queue, "_walked_pending_message_groups", groups)  # noqa: B010
        setattr(Queue, "pending_message_groups", property(_pending_message_groups))  # noqa: B010
    module: Any = sqs_models
    module.generate_receipt_handle = generate_receipt_handle


def installed() -> bool:
    from moto.sqs.models import Queue

    return Queue.__dict__["attributes"].fget is _lazy_attributes
