"""Two of moto's per-request costs removed, answers unchanged.

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

Both are patches of moto's internals (5.x), like :mod:`emulator.moto_clock`;
``tests/unit/test_moto_speed.py`` checks them against moto's own answers, so an upgrade that
changes either shape fails there first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

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
        from moto.core.utils import camelcase_to_underscores

        if name not in self._names:
            raise KeyError(name)
        value = getattr(self._queue, camelcase_to_underscores(name))
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


def _lazy_attributes(queue: Any) -> QueueAttributes:
    return QueueAttributes(queue)


def install() -> None:
    """Apply both patches (idempotent)."""
    import moto.backends
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


def installed() -> bool:
    from moto.sqs.models import Queue

    return Queue.__dict__["attributes"].fget is _lazy_attributes
