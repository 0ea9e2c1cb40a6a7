"""One look at a running stack, taken with the observer's read-only permissions.

SQS gives each queue's and DLQ's depth (visible, in flight, delayed); the database gives the
rest over the last minute (``WINDOW_S``): jobs per state, latency per hop, webhook outcomes,
and how long the oldest job of each model has waited. SQS itself has no "age of the oldest
message" attribute (on AWS it is a CloudWatch metric), so the oldest wait is read from the
jobs: the oldest job still queued for a model, or still unsent in ingest's outbox.

Hops, from the job's own timestamps:

    accepted -> started   ingest's outbox, the infer queue, the batcher (job.started)
    started  -> final     the model call, the results queue, persist
    accepted -> final     end to end
    final    -> webhook   the notify queue and the first successful delivery
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from shared.aws import aws_errors, resolve_queue_url
from shared.config import AwsSettings
from shared.topology import Topology

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

__all__ = [
    "HOPS",
    "WINDOW_S",
    "HopLatency",
    "JobCounts",
    "QueueDepth",
    "QueueUrls",
    "Snapshot",
    "WebhookOutcome",
    "take_snapshot",
]

WINDOW_S = 60
HOPS = ("accepted -> started", "started -> final", "accepted -> final", "final -> webhook")


@dataclass(frozen=True)
class QueueDepth:
    name: str
    visible: int
    in_flight: int
    delayed: int
    dlq_visible: int
    dlq_in_flight: int
    oldest_wait_s: float | None = None
    """How long the oldest job waiting for this queue has waited (infer queues only)."""


@dataclass(frozen=True)
class JobCounts:
    model: str
    queued: int = 0
    running: int = 0
    unsent: int = 0
    """Accepted, still in ingest's outbox (not yet on the queue)."""
    finished: Mapping[str, int] = field(default_factory=dict)
    """Final states reached in the last minute: succeeded, failed, cancelled."""


@dataclass(frozen=True)
class HopLatency:
    hop: str
    count: int
    p50_s: float | None
    p95_s: float | None


@dataclass(frozen=True)
class WebhookOutcome:
    outcome: str
    """``delivered``, an HTTP status such as ``500``, or ``error`` (no answer)."""
    attempts: int


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime.datetime
    prefix: str
    where: str
    queues: tuple[QueueDepth, ...]
    jobs: tuple[JobCounts, ...] = ()
    latency: tuple[HopLatency, ...] = ()
    webhooks: tuple[WebhookOutcome, ...] = ()
    database: bool = True
    """False when no database was given: queues only."""


async def _depth(sqs: SQSClient, aws: AwsSettings, url: str) -> tuple[int, int, int]:
    with aws_errors(aws, resource=url):
        response = await sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
    attributes = response.get("Attributes", {})
    return (
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


class QueueUrls:
    """Queue URLs resolved once (GetQueueUrl), reused by every refresh."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}

    async def get(self, sqs: SQSClient, aws: AwsSettings, name: str) -> str:
        if name not in self._urls:
            self._urls[name] = await resolve_queue_url(sqs, aws, name)
        return self._urls[name]


async def take_snapshot(
    sqs: SQSClient,
    aws: AwsSettings,
    topology: Topology,
    conn: asyncpg.Connection | None,
    urls: QueueUrls | None = None,
) -> Snapshot:
    urls = urls or QueueUrls()
    oldest: dict[str, float] = {}
    jobs: tuple[JobCounts, ...] = ()
    latency: tuple[HopLatency, ...] = ()
    webhooks: tuple[WebhookOutcome, ...] = ()
    if conn is not None:
        jobs, oldest = await _jobs(conn, topology)
        latency = await _latency(conn, list(topology.models))
        webhooks = await _webhooks(conn, list(topology.models))
    queues = []
    for spec in topology.queues:
        visible, in_flight, delayed = await _depth(sqs, aws, await urls.get(sqs, aws, spec.name))
        dlq_visible, dlq_in_flight, _ = await _depth(
            sqs, aws, await urls.get(sqs, aws, spec.dlq_name)
        )
        model = spec.key.removeprefix("infer-") if spec.key.startswith("infer-") else None
        queues.append(
            QueueDepth(
                spec.name,
                visible,
                in_flight,
                delayed,
                dlq_visible,
                dlq_in_flight,
                oldest.get(model) if model else None,
            )
        )
    return Snapshot(
        taken_at=datetime.datetime.now(datetime.UTC),
        prefix=topology.prefix,
        where=aws.where,
        queues=tuple(queues),
        jobs=jobs,
        latency=latency,
        webhooks=webhooks,
        database=conn is not None,
    )


async def _jobs(
    conn: asyncpg.Connection, topology: Topology
) -> tuple[tuple[JobCounts, ...], dict[str, float]]:
    models = list(topology.models)  # this stack's: a database may hold others' too
    active = await conn.fetch(
        "SELECT model, status, count(*) AS n, "
        "extract(epoch FROM now() - min(created_at)) AS oldest_s "
        "FROM jobs WHERE finished_at IS NULL AND model = ANY($1::text[]) GROUP BY model, status",
        models,
    )
    finished = await conn.fetch(
        "SELECT model, status, count(*) AS n FROM jobs "
        "WHERE finished_at > now() - make_interval(secs => $1) AND model = ANY($2::text[]) "
        "GROUP BY model, status",
        WINDOW_S,
        models,
    )
    unsent = await conn.fetch(
        "SELECT model, count(*) AS n, extract(epoch FROM now() - min(created_at)) AS oldest_s "
        "FROM outbox WHERE sent_at IS NULL AND model = ANY($1::text[]) GROUP BY model",
        models,
    )
    counts: dict[str, dict[str, int]] = {m: {} for m in topology.models}
    final: dict[str, dict[str, int]] = {m: {} for m in topology.models}
    oldest: dict[str, float] = {}
    for row in active:
        counts.setdefault(row["model"], {})[row["status"]] = row["n"]
        if row["status"] == "queued":
            oldest[row["model"]] = float(row["oldest_s"])
    for row in unsent:
        counts.setdefault(row["model"], {})["unsent"] = row["n"]
        oldest[row["model"]] = max(oldest.get(row["model"], 0.0), float(row["oldest_s"]))
    for row in finished:
        final.setdefault(row["model"], {})[row["status"]] = row["n"]
    return (
        tuple(
            JobCounts(
                model,
                queued=counts.get(model, {}).get("queued", 0),
                running=counts.get(model, {}).get("running", 0),
                unsent=counts.get(model, {}).get("unsent", 0),
                finished=final.get(model, {}),
            )
            for model in topology.models
        ),
        oldest,
    )


async def _latency(conn: asyncpg.Connection, models: list[str]) -> tuple[HopLatency, ...]:
    row = await conn.fetchrow(
        """
        WITH recent AS (
            SELECT extract(epoch FROM started_at - created_at) AS accepted_started,
                   extract(epoch FROM finished_at - started_at) AS started_final,
                   extract(epoch FROM finished_at - created_at) AS accepted_final
            FROM jobs
            WHERE finished_at > now() - make_interval(secs => $1) AND model = ANY($2::text[])
        )
        SELECT count(accepted_started) AS n1,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY accepted_started) AS p50_1,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY accepted_started) AS p95_1,
               count(started_final) AS n2,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY started_final) AS p50_2,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY started_final) AS p95_2,
               count(accepted_final) AS n3,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY accepted_final) AS p50_3,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY accepted_final) AS p95_3
        FROM recent
        """,
        WINDOW_S,
        models,
    )
    webhook = await conn.fetchrow(
        """
        WITH delivered AS (
            SELECT extract(epoch FROM min(d.attempted_at) - j.finished_at) AS s
            FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
            WHERE d.succeeded AND d.attempted_at > now() - make_interval(secs => $1)
              AND j.model = ANY($2::text[])
            GROUP BY d.job_id, j.finished_at
        )
        SELECT count(s) AS n,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY s) AS p95
        FROM delivered
        """,
        WINDOW_S,
        models,
    )
    assert row is not None and webhook is not None
    hops = [
        HopLatency(HOPS[i], row[f"n{i + 1}"], row[f"p50_{i + 1}"], row[f"p95_{i + 1}"])
        for i in range(3)
    ]
    hops.append(HopLatency(HOPS[3], webhook["n"], webhook["p50"], webhook["p95"]))
    return tuple(hops)


async def _webhooks(conn: asyncpg.Connection, models: list[str]) -> tuple[WebhookOutcome, ...]:
    rows = await conn.fetch(
        """
        SELECT CASE WHEN succeeded THEN 'delivered'
                    WHEN status_code IS NULL THEN 'error'
                    ELSE status_code::text END AS outcome,
               count(*) AS n
        FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
        WHERE d.attempted_at > now() - make_interval(secs => $1) AND j.model = ANY($2::text[])
        GROUP BY 1 ORDER BY 2 DESC, 1
        """,
        WINDOW_S,
        models,
    )
    return tuple(WebhookOutcome(row["outcome"], row["n"]) for row in rows)
