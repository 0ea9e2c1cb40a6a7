"""What notify measures.

conveyor_webhook_attempts_total{outcome}            delivery attempts: succeeded, retry
                                                    (failed, another attempt is scheduled),
                                                    gave_up (failed for good: 410, a refused
                                                    address, the schedule's end)
conveyor_webhook_request_duration_seconds{outcome}  one attempt, from the request to the
                                                    answer's status (or the failure)
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["WEBHOOK_ATTEMPTS", "WEBHOOK_DURATION"]

WEBHOOK_ATTEMPTS = Counter(
    "conveyor_webhook_attempts",
    "Webhook delivery attempts, by outcome (succeeded, retry, gave_up)",
    ["outcome"],
)
WEBHOOK_DURATION = Histogram(
    "conveyor_webhook_request_duration_seconds",
    "Time one webhook attempt took, by outcome",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
