"""The Prometheus metrics every service shares, defined once so that names and labels agree.

Each service serves its process's metrics on ``METRICS_PORT`` (:mod:`shared.service`); what
only one service measures is declared in that service's ``metrics`` module
(:mod:`services.ingest.metrics`...). Names follow Prometheus conventions: a ``conveyor_``
prefix, ``_total`` for counters, base units (``_seconds``). Labels are bounded: a hop (the
service handling a message), an outcome, a reason, an AWS operation, a queue or a model of
the topology, never a job id.

    conveyor_hop_duration_seconds{hop,outcome}      handling one message (one request for
                                                    ingest), from receipt to its effect
    conveyor_queue_wait_seconds{hop}                a message's time in its queue: from the
                                                    envelope's created_at (the upstream send)
                                                    to this receive; first deliveries only
    conveyor_dlq_moves_total{queue,reason}          messages that failed their last delivery,
                                                    which the redrive policy moves to the DLQ
    conveyor_aws_request_duration_seconds{api,operation}
    conveyor_aws_request_errors_total{api,operation,reason}
                                                    every AWS call (SQS, S3), retries included
    conveyor_db_pool_*                              the asyncpg pool (see shared.db.pool)

These are plain module-level objects in the default registry, as prometheus_client intends:
the process is the unit, and tests read them through a scrape, as Prometheus does.
"""

from __future__ import annotations

import datetime
from typing import Final

from prometheus_client import Counter, Histogram

__all__ = [
    "AWS_REQUEST_DURATION",
    "AWS_REQUEST_ERRORS",
    "DLQ_MOVES",
    "HOP_DURATION",
    "LATENCY_BUCKETS",
    "QUEUE_WAIT",
    "seconds_since",
]

LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0
)  # fmt: skip
"""From milliseconds (a database write) to half an hour (a webhook retried late)."""

HOP_DURATION = Histogram(
    "conveyor_hop_duration_seconds",
    "Time one service spent handling one message (ingest: one POST /v1/jobs), by outcome",
    ["hop", "outcome"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "conveyor_queue_wait_seconds",
    "Time a message waited in its queue, from the upstream send to this receive",
    ["hop"],
    buckets=LATENCY_BUCKETS,
)
DLQ_MOVES = Counter(
    "conveyor_dlq_moves",
    "Messages that failed their last allowed delivery: the redrive policy moves them to the "
    "queue's DLQ (reason: poison or retries_exhausted)",
    ["queue", "reason"],
)
AWS_REQUEST_DURATION = Histogram(
    "conveyor_aws_request_duration_seconds",
    "AWS API calls (botocore's retries included); SQS ReceiveMessage includes its long poll",
    ["api", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0),
)
AWS_REQUEST_ERRORS = Counter(
    "conveyor_aws_request_errors",
    "AWS API calls that failed, by reason (not_found, access_denied, throttled, "
    "client_error, server_error, unavailable)",
    ["api", "operation", "reason"],
)


def seconds_since(then: datetime.datetime, now: datetime.datetime | None = None) -> float:
    """Seconds from ``then`` to ``now`` (default: the current time), never negative: clocks of
    different hosts may disagree by a little."""
    now = now or datetime.datetime.now(datetime.UTC)
    return max(0.0, (now - then).total_seconds())
