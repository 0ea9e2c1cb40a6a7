"""Retry rules as plain frozen data. "Retry later" is a visibility change, never a sleep."""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ConveyorError

__all__ = ["RetryLater", "RetryPolicy"]

SQS_MAX_VISIBILITY_S = 12 * 3600


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for a failed message, from how often SQS has delivered it.

    Delivery n (1-based) that fails becomes visible again after
    ``min(initial_s * coefficient ** (n - 1), maximum_s)`` seconds. After the queue's
    ``maxReceiveCount`` deliveries, the redrive policy moves the message to its DLQ.
    """

    initial_s: float = 1.0
    coefficient: float = 2.0
    maximum_s: float = 300.0

    def delay_s(self, receive_count: int) -> int:
        delay = self.initial_s * self.coefficient ** max(receive_count - 1, 0)
        return int(min(delay, self.maximum_s, SQS_MAX_VISIBILITY_S))


class RetryLater(ConveyorError):
    """Raised by a handler: make the message visible again after ``delay_s`` seconds."""

    def __init__(self, reason: str, delay_s: float) -> None:
        super().__init__(reason)
        self.delay_s = max(0, min(int(delay_s), SQS_MAX_VISIBILITY_S))
