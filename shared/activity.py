"""What a service did lately, as one log line per interval instead of one line per job.

Handling a job logs at debug; the counts go to an :class:`Activity`, which logs them at info
once per ``interval_s`` (``LOG_SUMMARY_S``), and only for an interval in which something
happened, so an idle service stays quiet and a busy one writes a line every few seconds
whatever its rate:

    activity  interval_s=10 received=120 succeeded=118 retried=2 poison=0 ...

Counts come from :meth:`Activity.count` (this service's own events) and from sources that keep
running totals of their own (:meth:`Activity.watch`, e.g. an SQS consumer's stats); the line
holds the difference since the last one. The last interval is logged when :meth:`run` ends, so
a stop loses no counts; the shutdown summaries (``consumer stopped`` ...) stay as they are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import anyio
from anyio.abc import TaskStatus
from structlog.typing import FilteringBoundLogger

__all__ = ["DEFAULT_INTERVAL_S", "Activity", "Totals"]

DEFAULT_INTERVAL_S: Final = 10.0

Totals = Callable[[], Mapping[str, int]]
"""Running totals since start, read at each report: ``{"received": 120, ...}``."""


class Activity:
    def __init__(
        self,
        log: FilteringBoundLogger,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        names: Iterable[str] = (),
    ) -> None:
        """``names``: counts to show (as 0) even in an interval where they did not move."""
        self._log = log
        self.interval_s = interval_s
        self._counts: Counter[str] = Counter(dict.fromkeys(names, 0))
        self._sources: list[Totals] = []
        self._reported: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    def watch(self, totals: Totals) -> None:
        """Report the growth of ``totals`` too (its names must not clash with other counts)."""
        self._sources.append(totals)

    def totals(self) -> dict[str, int]:
        """Everything counted since start."""
        merged = dict(self._counts)
        for source in self._sources:
            merged.update(source())
        return merged

    def report(self) -> dict[str, int] | None:
        """Log what changed since the last report, if anything did; return it (or None)."""
        totals = self.totals()
        changes = {name: value - self._reported.get(name, 0) for name, value in totals.items()}
        self._reported = totals
        if not any(changes.values()):
            return None
        self._log.info("activity", interval_s=self.interval_s, **changes)
        return changes

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Report every ``interval_s`` until cancelled; then report the last interval."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.interval_s)
                self.report()
        finally:
            self.report()
