"""When to retry a webhook: the retry schedule as frozen data, and ``Retry-After`` parsing.

Attempt 1 goes out at once; retry *n* (attempt *n + 1*) waits ``delays_s[n - 1]``; after the
last delay the delivery gives up. A receiver may ask for more time with ``Retry-After``: the
wait is then the larger of the two. Every wait is capped at 12 hours, the longest an SQS
message can stay invisible, because "retry later" is a visibility change, not a sleep.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from dataclasses import dataclass
from typing import Final

from shared.config import NotifySettings
from shared.errors import ConfigError

__all__ = ["SQS_MAX_VISIBILITY_S", "RetrySchedule", "parse_retry_after"]

SQS_MAX_VISIBILITY_S: Final = 12 * 60 * 60.0
"""The longest visibility timeout SQS accepts (12 h), so the longest wait we can express."""

_DELTA_SECONDS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Seconds to wait before each retry; ``len(delays_s) + 1`` attempts in all."""

    delays_s: tuple[float, ...]
    max_delay_s: float = SQS_MAX_VISIBILITY_S
    """No wait is longer than this, whatever the schedule or the receiver says."""

    def __post_init__(self) -> None:
        for delay in self.delays_s:
            if not math.isfinite(delay) or delay < 0:
                raise ConfigError(
                    f"retry delays must be finite and >= 0 seconds, got {list(self.delays_s)}"
                )
        if not (math.isfinite(self.max_delay_s) and self.max_delay_s >= 0):
            raise ConfigError(f"max_delay_s must be finite and >= 0, got {self.max_delay_s}")

    @classmethod
    def from_settings(cls, settings: NotifySettings) -> RetrySchedule:
        return cls(delays_s=tuple(settings.retry_schedule_s))

    @property
    def max_attempts(self) -> int:
        """How many attempts a delivery gets before it gives up (the first one included)."""
        return len(self.delays_s) + 1

    def next_delay(self, attempt: int, retry_after_s: float | None = None) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); None: give up.

        ``retry_after_s`` is what the receiver asked for (``Retry-After``); it can lengthen the
        wait, never shorten it. The result never exceeds ``max_delay_s``.
        """
        if attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {attempt}")
        if attempt > len(self.delays_s):
            return None
        delay = self.delays_s[attempt - 1]
        if retry_after_s is not None and math.isfinite(retry_after_s):
            delay = max(delay, retry_after_s)
        return min(delay, self.max_delay_s)


def parse_retry_after(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks for; None when absent or invalid.

    RFC 9110 allows delta-seconds (``120``) or an HTTP-date (``Wed, 21 Oct 2026 07:28:00 GMT``).
    A date in the past means "now" (0.0). ``now`` defaults to the current time; a naive ``now``
    is taken as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        try:
            return float(int(text))
        except (ValueError, OverflowError):  # more digits than Python converts
            return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": the spec's HTTP-date is always GMT
        when = when.replace(tzinfo=datetime.UTC)
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - now).total_seconds())
