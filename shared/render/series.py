"""The series the Grafana dashboard and the Prometheus alert rules may query, in one list.

CONVEYOR    every metric family the services export, by name and type: ``shared.metrics``,
            ``services/*/metrics.py`` and the pool collector of ``shared.db.pool``. It is a
            list, not an import, because ``shared`` does not import ``services``;
            tests/deploy/test_monitoring.py holds it equal to the code's registry, both ways.
EXPORTED    what other exporters give: Prometheus's own ``up`` per scrape target, and the SQS
            figures of the CloudWatch exporter (prometheus/cloudwatch_exporter or YACE; the
            services export no queue depth, and KEDA's are not for Prometheus)

:func:`unknown_names` is the renderers' own guard: a ``conveyor_``/``aws_sqs_`` name that
is in neither list stops the rendering. The tests parse every expression with a real PromQL
parser and check every selector against the registry.

:class:`MonitoringOptions` holds what an operator may tune: the SLOs the rules alert on, and
the labels that depend on how Prometheus scrapes (the CloudWatch exporter's queue label, the
selector of Conveyor's scrape targets).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from shared.errors import ConfigError
from shared.topology import Topology

__all__ = [
    "CONVEYOR",
    "EXPORTED",
    "QUEUE_AGE",
    "QUEUE_VISIBLE",
    "Kind",
    "MonitoringOptions",
    "QueueSelectors",
    "sample_names",
    "unknown_names",
]

Kind = Literal["counter", "gauge", "histogram"]

CONVEYOR: Final[Mapping[str, Kind]] = {
    # shared.metrics: every service
    "conveyor_hop_duration_seconds": "histogram",
    "conveyor_queue_wait_seconds": "histogram",
    "conveyor_dlq_moves": "counter",
    "conveyor_aws_request_duration_seconds": "histogram",
    "conveyor_aws_request_errors": "counter",
    # shared.db.pool: ingest, persist, notify
    "conveyor_db_pool_connections": "gauge",
    "conveyor_db_pool_idle_connections": "gauge",
    "conveyor_db_pool_max_connections": "gauge",
    # services.ingest.metrics
    "conveyor_jobs_accepted": "counter",
    "conveyor_jobs_refused": "counter",
    "conveyor_outbox_relayed": "counter",
    # services.infer.metrics
    "conveyor_infer_model_calls": "counter",
    "conveyor_infer_batch_items": "histogram",
    "conveyor_infer_batch_jobs": "histogram",
    "conveyor_infer_batch_tokens": "histogram",
    "conveyor_infer_model_call_duration_seconds": "histogram",
    "conveyor_infer_isolated_failures": "counter",
    "conveyor_infer_jobs": "counter",
    "conveyor_infer_model_load_seconds": "gauge",
    "conveyor_infer_model_info": "gauge",
    # services.persist.metrics
    "conveyor_job_end_to_end_duration_seconds": "histogram",
    "conveyor_persist_results": "counter",
    # services.notify.metrics
    "conveyor_webhook_attempts": "counter",
    "conveyor_webhook_request_duration_seconds": "histogram",
}
"""Family names as prometheus_client reports them (a counter without its ``_total``)."""

QUEUE_VISIBLE: Final = "aws_sqs_approximate_number_of_messages_visible_average"
"""SQS ``ApproximateNumberOfMessagesVisible``, statistic Average, as the CloudWatch exporter
names it."""
QUEUE_AGE: Final = "aws_sqs_approximate_age_of_oldest_message_maximum"
"""SQS ``ApproximateAgeOfOldestMessage`` (seconds), statistic Maximum."""

EXPORTED: Final[Mapping[str, Kind]] = {
    "up": "gauge",
    QUEUE_VISIBLE: "gauge",
    QUEUE_AGE: "gauge",
}

_SUFFIXES: Final[Mapping[Kind, tuple[str, ...]]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
_LABEL: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Names of our own and the exporter's series, as they appear in PromQL: a label name never
# starts with these prefixes in the renderers' expressions.
_NAME: Final = re.compile(r"\b(?:conveyor|aws_sqs)_[a-z0-9_]+\b")


def sample_names(families: Mapping[str, Kind] | None = None) -> frozenset[str]:
    """The series names a scrape shows for ``families`` (default: ours and the exporters')."""
    families = families if families is not None else {**CONVEYOR, **EXPORTED}
    return frozenset(name + suffix for name, kind in families.items() for suffix in _SUFFIXES[kind])


def unknown_names(expressions: Iterable[str]) -> list[str]:
    """``conveyor_*``/``aws_sqs_*`` names in ``expressions`` that no family here exports."""
    known = sample_names()
    return sorted({n for e in expressions for n in _NAME.findall(e) if n not in known})


@dataclass(frozen=True)
class MonitoringOptions:
    """SLOs and thresholds of the alert rules (the dashboard draws the SLOs as lines), and
    the labels that depend on the Prometheus set-up."""

    queue_label: str = "queue_name"
    """The CloudWatch exporter's label holding the queue's name: ``queue_name`` for
    prometheus/cloudwatch_exporter, ``dimension_QueueName`` for YACE."""
    target_selector: str | None = None
    """Label matchers of Conveyor's scrape targets in ``up``. Default: the pod labels of the
    rendered manifests as the ``kubernetes-pods`` job of the prometheus-community chart maps
    them (``labelmap __meta_kubernetes_pod_label_(.+)``):
    ``app_kubernetes_io_part_of="conveyor", app_kubernetes_io_instance="<prefix>"``."""
    queue_age_slo_s: int = 300
    """The oldest message of an infer or results queue may wait this long. The notify queue
    is left out: its messages wait out the webhook retry schedule (hours) by design."""
    end_to_end_p95_slo_s: float = 30.0
    """p95 from acceptance to the final state, per model (30 s is a histogram bucket bound:
    the quantile is exact there)."""
    webhook_failure_ratio: float = 0.2
    """Failed webhook attempts (retry, gave_up) over all attempts."""
    aws_error_ratio: float = 0.05
    """Failed AWS calls over all calls, per API operation."""
    db_pool_saturation: float = 0.9
    """Connections in use over the pool's maximum."""
    no_consumer_s: int = 900
    """Messages visible and no consumer working for this long: longer than a GPU node takes
    to start and load a model when KEDA scales infer from zero."""

    def __post_init__(self) -> None:
        if not _LABEL.match(self.queue_label):
            raise ConfigError(f"queue label {self.queue_label!r} is not a Prometheus label name")
        for name in ("webhook_failure_ratio", "aws_error_ratio", "db_pool_saturation"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("queue_age_slo_s", "end_to_end_p95_slo_s", "no_consumer_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def targets(self, topology: Topology) -> str:
        return self.target_selector or (
            f'app_kubernetes_io_part_of="conveyor", app_kubernetes_io_instance="{topology.prefix}"'
        )


@dataclass(frozen=True)
class QueueSelectors:
    """PromQL label matchers of the topology's queues in the CloudWatch exporter's series."""

    topology: Topology
    label: str

    @staticmethod
    def _regex(names: Iterable[str]) -> str:
        # Queue names hold [a-z0-9.-]; only the dot means something in a regex. In a PromQL
        # string a backslash is written twice.
        return "|".join(name.replace(".", "\\\\.") for name in names)

    def _match(self, names: Iterable[str]) -> str:
        return f'{self.label}=~"{self._regex(names)}"'

    @property
    def work(self) -> str:
        """Every work queue (no DLQ)."""
        return self._match(q.name for q in self.topology.queues)

    @property
    def dlqs(self) -> str:
        return self._match(q.dlq_name for q in self.topology.queues)

    @property
    def aging(self) -> str:
        """The queues the age SLO holds for: infer and results, not notify."""
        return self._match(
            (*(q.name for q in self.topology.infer_queues), self.topology.results_queue.name)
        )

    @property
    def infer(self) -> str:
        return self._match(q.name for q in self.topology.infer_queues)

    def infer_model(self) -> tuple[str, str]:
        """(regex, replacement) for ``label_replace``: an infer queue's name -> its model."""
        model = self.topology.models[0]
        stem = self.topology.infer_queue(model).name.removesuffix(model)
        return f"{self._regex([stem])}(.+)", "$1"

    def one(self, name: str) -> str:
        return f'{self.label}="{name}"'
