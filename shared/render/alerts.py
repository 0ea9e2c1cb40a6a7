"""Prometheus alert rules for a Conveyor stack: a rule file (``groups:``) as plain data.

    queues      a DLQ holds messages; messages moved to a DLQ; the oldest message of an
                infer or results queue older than the SLO; a queue with messages and no
                consumer working on it (per model for infer); a scrape target down
    jobs        end-to-end p95 per model over the SLO; webhook failure ratio
    dependencies  AWS request error ratio per operation; database pool saturation

Queue depth and age come from the CloudWatch exporter (:mod:`shared.render.series`): SQS
reports them to CloudWatch only, a minute or more late, so those rules wait longer. Every
rule has a ``for:``, a ``severity`` label (``critical``: jobs are late or stuck; ``warning``:
someone should look today) and ``summary``, ``description`` and ``runbook`` annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from shared.errors import ConfigError
from shared.render.series import MonitoringOptions, QueueSelectors, unknown_names
from shared.topology import Topology

__all__ = ["Alert", "alerts", "render_rules"]

Severity = Literal["critical", "warning"]
_README: Final = 'README "Metrics, traces and logs"'


@dataclass(frozen=True)
class Alert:
    group: str
    name: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str
    runbook: str


def _minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))}m"


def alerts(topology: Topology, options: MonitoringOptions) -> tuple[Alert, ...]:
    """Every rule, in the file's order: the one list the rule file is made from."""
    q = QueueSelectors(topology, options.queue_label)
    label = options.queue_label
    queue = f"{{{{ $labels.{label} }}}}"
    model_regex, model_replacement = q.infer_model()
    quiet = _minutes(options.no_consumer_s)

    def not_consuming(hop: str, queue_name: str) -> Alert:
        return Alert(
            "conveyor-queues",
            f"Conveyor{hop.capitalize()}NotConsuming",
            f"max by ({label}) (\n"
            f"  aws_sqs_approximate_number_of_messages_visible_average{{{q.one(queue_name)}}}\n"
            ") > 0\n"
            f'unless on () sum(rate(conveyor_hop_duration_seconds_count{{hop="{hop}"}}[10m])) > 0',
            quiet,
            "critical",
            f"{queue} has messages and no {hop} handles any",
            f"{queue} has had visible messages for {quiet} while no {hop} process handled a "
            "message: no replica runs, or every one is stuck.",
            f"kubectl get deploy,pods -l app.kubernetes.io/name={hop} and read their logs; "
            "a replica's receive loop that hangs is not caught by its liveness probe "
            "(deploy/README.md, Known gaps): restart it.",
        )

    return (
        Alert(
            "conveyor-queues",
            "ConveyorDeadLetterQueueNotEmpty",
            f"max by ({label}) (\n"
            f"  aws_sqs_approximate_number_of_messages_visible_average{{{q.dlqs}}}\n"
            ") > 0",
            "15m",
            "warning",
            f"{queue} holds {{{{ $value }}}} messages",
            f"Messages in {queue} failed every delivery their queue allows; nothing consumes "
            "a DLQ, so they wait for an operator until the DLQ's retention ends.",
            "`conveyor dlq show <queue>` samples them (receive counts, reasons); fix the "
            "cause, then `conveyor dlq redrive <queue>` moves them back.",
        ),
        Alert(
            "conveyor-queues",
            "ConveyorDeadLetterMoves",
            # A series made by its first move starts at 1, which increase() cannot see: a
            # series absent 10 minutes ago counts as a move.
            "sum by (queue, reason) (\n"
            "  increase(conveyor_dlq_moves_total[10m]) > 0\n"
            "  or (conveyor_dlq_moves_total unless conveyor_dlq_moves_total offset 10m)\n"
            ") > 0",
            "1m",
            "warning",
            "Messages of {{ $labels.queue }} are going to its DLQ ({{ $labels.reason }})",
            "A consumer handled the last delivery its redrive policy allows and failed: "
            "`poison` (the message can never be processed) or `retries_exhausted`. "
            "Value: moves in the last 10 minutes.",
            "Read the consumer's logs for the job ids (LOG_FORMAT=json, `job_id`), then "
            "`conveyor dlq show <queue>`; redrive with `conveyor dlq redrive <queue>` once "
            "the cause is fixed.",
        ),
        Alert(
            "conveyor-queues",
            "ConveyorQueueMessageTooOld",
            f"max by ({label}) (\n"
            f"  aws_sqs_approximate_age_of_oldest_message_maximum{{{q.aging}}}\n"
            f") > {options.queue_age_slo_s}",
            "5m",
            "critical",
            f"The oldest message of {queue} is {{{{ $value | humanizeDuration }}}} old",
            f"Older than the queue-age SLO ({options.queue_age_slo_s} s): its consumers "
            "do not keep up, or do not run.",
            "`conveyor top` shows every queue's depth and oldest wait; check the consumer's "
            "replicas (KEDA ScaledObject, Karpenter GPU nodes for infer) and `conveyor plan` "
            "for the capacity the load needs.",
        ),
        Alert(
            "conveyor-queues",
            "ConveyorInferNotConsuming",
            f"max by ({label}, model) (\n"
            "  label_replace(\n"
            f"    aws_sqs_approximate_number_of_messages_visible_average{{{q.infer}}},\n"
            f'    "model", "{model_replacement}", "{label}", "{model_regex}"\n'
            "  )\n"
            ") > 0\n"
            "unless on (model) sum by (model) (rate(conveyor_infer_model_calls_total[10m])) > 0",
            quiet,
            "critical",
            "Jobs for {{ $labels.model }} wait and no infer worker calls the model",
            f"{queue} has had visible messages for {quiet} while no infer worker of "
            "{{ $labels.model }} made a model call: KEDA did not scale it from zero, no GPU "
            "node came, the model does not load, or the workers are stuck.",
            "kubectl describe scaledobject and deploy of the model's infer worker; check "
            "Karpenter's GPU NodePool events and the nvidia device plugin; the worker's logs "
            "say whether the model loaded (conveyor_infer_model_info).",
        ),
        not_consuming("persist", topology.results_queue.name),
        not_consuming("notify", topology.notify_queue.name),
        Alert(
            "conveyor-queues",
            "ConveyorTargetDown",
            f"up{{{options.targets(topology)}}} == 0",
            "5m",
            "warning",
            "Prometheus cannot scrape {{ $labels.instance }}",
            "A Conveyor pod's metrics port does not answer: the process is down or hung, or "
            "the scrape configuration no longer matches it.",
            "kubectl get pods; a worker's liveness probe is this same port. Check the pod's "
            "events and logs.",
        ),
        Alert(
            "conveyor-jobs",
            "ConveyorEndToEndLatencyHigh",
            "histogram_quantile(0.95, sum by (le, model) "
            "(rate(conveyor_job_end_to_end_duration_seconds_bucket[15m])))\n"
            f"> {options.end_to_end_p95_slo_s:g}",
            "15m",
            "critical",
            "p95 end to end for {{ $labels.model }} is {{ $value | humanizeDuration }}",
            f"Jobs of {{{{ $labels.model }}}} take longer than the SLO "
            f"({options.end_to_end_p95_slo_s:g} s at p95) from acceptance to their final "
            "state.",
            "The dashboard's latency row says which hop: time in queue (capacity: `conveyor "
            "plan`, KEDA) or time per hop (the model, the database, AWS).",
        ),
        Alert(
            "conveyor-jobs",
            "ConveyorWebhookFailureRate",
            'sum(rate(conveyor_webhook_attempts_total{outcome!="succeeded"}[15m]))\n'
            "/ sum(rate(conveyor_webhook_attempts_total[15m]))\n"
            f"> {options.webhook_failure_ratio:g}",
            "15m",
            "warning",
            "{{ $value | humanizePercentage }} of webhook attempts fail",
            f"More than {options.webhook_failure_ratio:.0%} of webhook attempts failed "
            "(retry or gave_up) over 15 minutes.",
            "notify's logs name the endpoints and status codes; one tenant's endpoint down "
            "only delays its own deliveries (retries follow NOTIFY_RETRY_SCHEDULE_S). Many "
            "failing at once points at notify's egress (network policy, DNS, SSRF guard).",
        ),
        Alert(
            "conveyor-dependencies",
            "ConveyorAwsRequestErrors",
            "sum by (api, operation) (rate(conveyor_aws_request_errors_total[10m]))\n"
            "/ sum by (api, operation) (rate(conveyor_aws_request_duration_seconds_count[10m]))\n"
            f"> {options.aws_error_ratio:g}",
            "10m",
            "warning",
            "{{ $value | humanizePercentage }} of {{ $labels.api }} {{ $labels.operation }} "
            "calls fail",
            "AWS calls of this operation fail; conveyor_aws_request_errors_total's `reason` "
            "says how (access_denied, not_found, throttled, unavailable...).",
            "access_denied or not_found: compare the stack and the rendered roles "
            "(`conveyor render cloudformation`); throttled: request a quota; unavailable: "
            "the VPC's route or endpoint to the service.",
        ),
        Alert(
            "conveyor-dependencies",
            "ConveyorDatabasePoolSaturated",
            "(conveyor_db_pool_connections - conveyor_db_pool_idle_connections)\n"
            f"/ (conveyor_db_pool_max_connections > 0) >= {options.db_pool_saturation:g}",
            "10m",
            "warning",
            "{{ $labels.instance }} uses {{ $value | humanizePercentage }} of its database pool",
            "Queries wait for a connection: the process holds every connection its pool may open.",
            "Look for slow queries or locks on the database; more replicas spread the load, "
            "within the database's connection limit.",
        ),
    )


def render_rules(topology: Topology, options: MonitoringOptions) -> dict[str, Any]:
    """The rule file as data, ready for YAML."""
    rules = alerts(topology, options)
    unknown = unknown_names(a.expr for a in rules)
    if unknown:
        raise ConfigError(f"alert rules use metrics nobody exports: {', '.join(unknown)}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for alert in rules:
        groups.setdefault(alert.group, []).append(
            {
                "alert": alert.name,
                "expr": alert.expr,
                "for": alert.for_,
                "labels": {"severity": alert.severity},
                "annotations": {
                    "summary": alert.summary,
                    "description": alert.description,
                    "runbook": f"{alert.runbook} ({_README}.)",
                },
            }
        )
    return {"groups": [{"name": name, "rules": rules} for name, rules in groups.items()]}
