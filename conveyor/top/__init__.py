"""``conveyor top``: a live view of a stack, from read-only permissions.

snapshot  what the stack looks like now: queues and DLQs (SQS), jobs per state and per
          minute, latency per hop over the last minute, webhook outcomes (PostgreSQL)
view      that snapshot as rich tables
"""

from conveyor.top.snapshot import (
    HopLatency,
    JobCounts,
    QueueDepth,
    Snapshot,
    WebhookOutcome,
    take_snapshot,
)
from conveyor.top.view import render

__all__ = [
    "HopLatency",
    "JobCounts",
    "QueueDepth",
    "Snapshot",
    "WebhookOutcome",
    "render",
    "take_snapshot",
]
