"""What the Grafana dashboard shows: rows of panels, each a title, a description, a unit and
its PromQL queries. :func:`rows` is the one list the dashboard is made from
(:mod:`shared.render.dashboards` lays it out).

    Throughput              jobs accepted, refused by reason, finished per model and outcome
    Latency per hop         p50/p95 per hop, time in queue per hop, end to end per model
    Queues                  depth, oldest message age, DLQ depth (CloudWatch exporter)
    GPU batch efficiency    inputs and tokens per model call, call time, texts/s, busy share
    Errors and dead letters DLQ moves, messages not handled at first try, failed jobs
    Webhooks                attempts by outcome, failure ratio, request time
    AWS, database, targets  AWS errors and latency per operation, pool saturation, ``up``

Queries use Grafana's ``$__rate_interval`` and the ``model`` variable (a regex of the chosen
models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from shared.render.series import MonitoringOptions, QueueSelectors
from shared.topology import Topology

__all__ = ["Panel", "Query", "Row", "rows"]

RATE: Final = "$__rate_interval"
MODEL: Final = 'model=~"$model"'
FAILED: Final = 'outcome!="succeeded"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 8
    threshold: float | None = None
    """Drawn as a red line: the SLO or the alert's threshold."""
    stack: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _braced(selector: str) -> str:
    return f"{{{selector}}}" if selector else ""


def _rate(metric: str, by: str = "", selector: str = "") -> str:
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({metric}{_braced(selector)}[{RATE}]))"


def _quantiles(metric: str, by: str, legend: str, selector: str = "") -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{_braced(selector)}[{RATE}])))",
            f"{legend} p{round(q * 100)}",
        )
        for q in (0.5, 0.95)
    )


def _mean(histogram: str, by: str, selector: str) -> str:
    return (
        f"{_rate(histogram + '_sum', by, selector)} / {_rate(histogram + '_count', by, selector)}"
    )


def rows(topology: Topology, options: MonitoringOptions) -> tuple[Row, ...]:
    """Every panel, in the dashboard's order: the one list the dashboard is made from."""
    q = QueueSelectors(topology, options.queue_label)
    queue = f"{{{{{options.queue_label}}}}}"
    throughput = Row(
        "Throughput",
        (
            Panel(
                "Jobs accepted per model",
                "POST /v1/jobs answered 202 (an Idempotency-Key replay is not counted).",
                (Query(_rate("conveyor_jobs_accepted_total", "model", MODEL), "{{model}}"),),
                unit="ops",
            ),
            Panel(
                "Jobs refused by reason",
                "POST /v1/jobs answered with an error: backlog (429), not_deployed, invalid...",
                (Query(_rate("conveyor_jobs_refused_total", "reason"), "{{reason}}"),),
                unit="ops",
                stack=True,
            ),
            Panel(
                "Jobs finished per model and outcome",
                "Final states persist recorded (succeeded, failed), per model.",
                (
                    Query(
                        _rate(
                            "conveyor_job_end_to_end_duration_seconds_count",
                            "model, outcome",
                            MODEL,
                        ),
                        "{{model}} {{outcome}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Jobs infer finished per model and outcome",
                "succeeded, failed (the model refused the job), refused (over the input limits).",
                (
                    Query(
                        _rate("conveyor_infer_jobs_total", "model, outcome", MODEL),
                        "{{model}} {{outcome}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Outbox relay",
                "Outbox rows the relay sent to SQS, or failed to send (retried on a later pass).",
                (Query(_rate("conveyor_outbox_relayed_total", "outcome"), "{{outcome}}"),),
                unit="ops",
            ),
            Panel(
                "Results persisted by outcome",
                "new, duplicate (a redelivery), discarded (the job was cancelled).",
                (Query(_rate("conveyor_persist_results_total", "outcome"), "{{outcome}}"),),
                unit="ops",
            ),
        ),
    )
    latency = Row(
        "Latency per hop",
        (
            Panel(
                "Time per hop",
                "One message handled, from receipt to its effect (ingest: one POST /v1/jobs; "
                "relay: one send), every outcome.",
                _quantiles("conveyor_hop_duration_seconds", "hop", "{{hop}}"),
                unit="s",
            ),
            Panel(
                "Time in queue per hop",
                "From the upstream send (the envelope's created_at) to the receive, first "
                "deliveries only.",
                _quantiles("conveyor_queue_wait_seconds", "hop", "{{hop}}"),
                unit="s",
            ),
            Panel(
                "End to end per model",
                "From acceptance to the final state persist records. The red line is the p95 "
                "SLO of the alert rules.",
                _quantiles("conveyor_job_end_to_end_duration_seconds", "model", "{{model}}", MODEL),
                unit="s",
                threshold=options.end_to_end_p95_slo_s,
            ),
        ),
    )
    queues = Row(
        "Queues (CloudWatch exporter)",
        (
            Panel(
                "Messages visible per queue",
                "SQS ApproximateNumberOfMessagesVisible (Average) through the CloudWatch "
                "exporter: minutes late; KEDA reads the same figure to scale.",
                (
                    Query(
                        f"max by ({options.queue_label}) "
                        f"(aws_sqs_approximate_number_of_messages_visible_average{{{q.work}}})",
                        queue,
                    ),
                ),
            ),
            Panel(
                "Oldest message age per queue",
                "SQS ApproximateAgeOfOldestMessage (Maximum). The red line is the queue-age SLO "
                "(infer and results queues; notify's messages wait out webhook retries).",
                (
                    Query(
                        f"max by ({options.queue_label}) "
                        f"(aws_sqs_approximate_age_of_oldest_message_maximum{{{q.work}}})",
                        queue,
                    ),
                ),
                unit="s",
                threshold=options.queue_age_slo_s,
            ),
            Panel(
                "Dead-letter queues: messages",
                "Messages that failed every delivery allowed: `conveyor dlq show <queue>`.",
                (
                    Query(
                        f"max by ({options.queue_label}) "
                        f"(aws_sqs_approximate_number_of_messages_visible_average{{{q.dlqs}}})",
                        queue,
                    ),
                ),
                threshold=0.5,
            ),
        ),
    )
    batching = Row(
        "GPU batch efficiency",
        (
            Panel(
                "Inputs per model call",
                "Mean and p95 of the inputs one model call carried (at most "
                "INFER_MAX_BATCH_ITEMS).",
                (
                    Query(_mean("conveyor_infer_batch_items", "model", MODEL), "{{model}} mean"),
                    _quantiles("conveyor_infer_batch_items", "model", "{{model}}", MODEL)[1],
                ),
            ),
            Panel(
                "Tokens per batch",
                "Mean and p95 of the tokens (the handler's cost) per batch (at most "
                "INFER_MAX_BATCH_TOKENS).",
                (
                    Query(_mean("conveyor_infer_batch_tokens", "model", MODEL), "{{model}} mean"),
                    _quantiles("conveyor_infer_batch_tokens", "model", "{{model}}", MODEL)[1],
                ),
            ),
            Panel(
                "Jobs per batch",
                "Mean jobs (SQS messages) sharing one batch.",
                (Query(_mean("conveyor_infer_batch_jobs", "model", MODEL), "{{model}}"),),
            ),
            Panel(
                "Model call duration",
                "One model call in its worker thread.",
                _quantiles(
                    "conveyor_infer_model_call_duration_seconds", "model", "{{model}}", MODEL
                ),
                unit="s",
            ),
            Panel(
                "Texts and model calls per second",
                "Inputs through the model, and model calls, per second: all workers of a "
                "model together.",
                (
                    Query(
                        _rate("conveyor_infer_batch_items_sum", "model", MODEL), "{{model}} texts"
                    ),
                    Query(
                        _rate("conveyor_infer_model_calls_total", "model", MODEL), "{{model}} calls"
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Model thread busy",
                "Share of time each worker's model thread spends in model calls: near 1, the "
                "device is the bottleneck; low with a deep queue, batching or I/O is.",
                (
                    Query(
                        f"{_rate('conveyor_infer_model_call_duration_seconds_sum', 'model', MODEL)}"
                        f" / count by (model) (conveyor_infer_model_info{{{MODEL}}})",
                        "{{model}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "Workers serving each model",
                "Infer workers by model, version and device (conveyor_infer_model_info).",
                (
                    Query(
                        f"count by (model, version, device) (conveyor_infer_model_info{{{MODEL}}})",
                        "{{model}} {{version}} {{device}}",
                    ),
                ),
                width=12,
                stack=True,
            ),
            Panel(
                "Model load time",
                "Seconds the served model took to load onto its device, per worker.",
                (
                    Query(
                        f"max by (model, instance) (conveyor_infer_model_load_seconds{{{MODEL}}})",
                        "{{model}} {{instance}}",
                    ),
                ),
                unit="s",
                width=12,
            ),
        ),
    )
    errors = Row(
        "Errors and dead letters",
        (
            Panel(
                "Moves to a DLQ",
                "Messages that failed the last delivery their queue allows, by queue and "
                "reason (poison, retries_exhausted).",
                (
                    Query(
                        f"sum by (queue, reason) (increase(conveyor_dlq_moves_total[{RATE}]))",
                        "{{queue}} {{reason}}",
                    ),
                ),
                stack=True,
            ),
            Panel(
                "Messages not done at first try, per hop",
                "infer, persist, notify: retried (redelivered later), poison, given_back (at "
                "shutdown); relay: failed (sent on a later pass); ingest: refused.",
                (
                    Query(
                        _rate(
                            "conveyor_hop_duration_seconds_count",
                            "hop, outcome",
                            'outcome=~"retried|poison|given_back|failed|refused"',
                        ),
                        "{{hop}} {{outcome}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Infer failures per model",
                "Jobs the model failed or refused, and failed batches re-run job by job.",
                (
                    Query(
                        _rate(
                            "conveyor_infer_jobs_total",
                            "model, outcome",
                            f"{MODEL}, {FAILED}",
                        ),
                        "{{model}} {{outcome}}",
                    ),
                    Query(
                        _rate("conveyor_infer_isolated_failures_total", "model", MODEL),
                        "{{model}} isolated batch",
                    ),
                ),
                unit="ops",
            ),
        ),
    )
    webhooks = Row(
        "Webhooks",
        (
            Panel(
                "Webhook attempts by outcome",
                "succeeded, retry (another attempt is scheduled), gave_up.",
                (Query(_rate("conveyor_webhook_attempts_total", "outcome"), "{{outcome}}"),),
                unit="ops",
                stack=True,
            ),
            Panel(
                "Webhook failure ratio",
                "Failed attempts over all attempts. The red line is the alert's threshold.",
                (
                    Query(
                        f"{_rate('conveyor_webhook_attempts_total', '', FAILED)}"
                        f" / {_rate('conveyor_webhook_attempts_total')}",
                        "failed",
                    ),
                ),
                unit="percentunit",
                threshold=options.webhook_failure_ratio,
            ),
            Panel(
                "Webhook request time",
                "One attempt, from the request to the answer's status (or the failure).",
                _quantiles("conveyor_webhook_request_duration_seconds", "outcome", "{{outcome}}"),
                unit="s",
            ),
        ),
    )
    dependencies = Row(
        "AWS, database and scrape targets",
        (
            Panel(
                "AWS request errors",
                "Failed AWS calls by API, operation and reason.",
                (
                    Query(
                        _rate("conveyor_aws_request_errors_total", "api, operation, reason"),
                        "{{api}} {{operation}} {{reason}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "AWS request time",
                "p50/p95 per operation, botocore's retries included; ReceiveMessage is left "
                "out (its long poll is most of it).",
                _quantiles(
                    "conveyor_aws_request_duration_seconds",
                    "api, operation",
                    "{{api}} {{operation}}",
                    'operation!="ReceiveMessage"',
                ),
                unit="s",
            ),
            Panel(
                "AWS request error ratio",
                "Failed calls over all calls per operation. The red line is the alert's threshold.",
                (
                    Query(
                        f"{_rate('conveyor_aws_request_errors_total', 'api, operation')} / "
                        f"{_rate('conveyor_aws_request_duration_seconds_count', 'api, operation')}",
                        "{{api}} {{operation}}",
                    ),
                ),
                unit="percentunit",
                threshold=options.aws_error_ratio,
            ),
            Panel(
                "Database pool saturation",
                "Connections in use over the pool's maximum, per process (ingest, persist, "
                "notify): at 1, queries wait for a connection.",
                (
                    Query(
                        "(conveyor_db_pool_connections - conveyor_db_pool_idle_connections) / "
                        "(conveyor_db_pool_max_connections > 0)",
                        "{{instance}}",
                    ),
                ),
                unit="percentunit",
                threshold=options.db_pool_saturation,
            ),
            Panel(
                "Database pool connections",
                "Open and idle connections, all processes together.",
                (
                    Query("sum(conveyor_db_pool_connections)", "open"),
                    Query("sum(conveyor_db_pool_idle_connections)", "idle"),
                    Query("sum(conveyor_db_pool_max_connections)", "max"),
                ),
            ),
            Panel(
                "Scrape targets up",
                "Conveyor's pods Prometheus scrapes: 1 up, 0 down.",
                (
                    Query(
                        f"up{{{options.targets(topology)}}}",
                        "{{app_kubernetes_io_name}} {{instance}}",
                    ),
                ),
            ),
        ),
    )
    return (throughput, latency, queues, batching, errors, webhooks, dependencies)
