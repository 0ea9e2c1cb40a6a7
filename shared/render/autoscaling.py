"""Queue-depth autoscaling with KEDA: one ScaledObject per work queue, one TriggerAuthentication.

Each consumer Deployment scales on the depth of the queue it reads (``aws-sqs-queue``
scaler, keda.sh/v1alpha1). infer scales to zero: its GPU nodes go away when no job waits, and
its cooldown outlasts a GPU node's start so that a short lull does not pay for a new node.
persist and notify keep one replica (they are cheap, and latency matters to them).

KEDA reads queue depth with the operator's own identity (``identityOwner: keda``): the
workload's identity through Pod Identity associations does not work (kedacore/keda#6418), so
the operator gets the topology's read-only scaler policy (see the CloudFormation template).
Messages in flight count towards the depth for infer and persist (a replica busy with them is
doing the work); not for notify, whose in-flight messages are mostly webhooks waiting, hours
sometimes, for their next retry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from shared.config import InferSettings, NotifySettings, PersistSettings
from shared.topology import QueueSpec, Topology

__all__ = ["AutoscalingOptions", "queue_url", "render_autoscaling", "trigger_authentication"]

KEDA_API: Final = "keda.sh/v1alpha1"


@dataclass(frozen=True)
class AutoscalingOptions:
    infer_max_replicas: int = 8
    worker_max_replicas: int = 10
    infer_cooldown_s: int = 600
    """Seconds without a waiting job before infer scales to zero: longer than a GPU node
    takes to start and load the model (a few minutes), so a lull does not cost a cold start."""
    polling_interval_s: int = 15
    infer_queue_length: int = InferSettings.model_fields["concurrency"].default
    """Jobs (waiting + in flight) one infer replica is meant to carry: its INFER_CONCURRENCY."""
    persist_queue_length: int = PersistSettings.model_fields["concurrency"].default
    notify_queue_length: int = NotifySettings.model_fields["concurrency"].default


def queue_url(region: str, account_id: str, name: str) -> str:
    return f"https://sqs.{region}.amazonaws.com/{account_id}/{name}"


def trigger_authentication(topology: Topology) -> str:
    return f"{topology.prefix}-aws"


def render_autoscaling(
    topology: Topology,
    options: AutoscalingOptions,
    *,
    namespace: str,
    region: str,
    account_id: str,
    labels: dict[str, str],
    deployment: Callable[[str], str],
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": KEDA_API,
            "kind": "TriggerAuthentication",
            "metadata": {
                "name": trigger_authentication(topology),
                "namespace": namespace,
                "labels": labels,
            },
            "spec": {"podIdentity": {"provider": "aws", "identityOwner": "keda"}},
        }
    ]

    def scaled(
        spec: QueueSpec,
        *,
        low: int,
        high: int,
        length: int,
        in_flight: bool,
        cooldown_s: int,
    ) -> dict[str, Any]:
        name = deployment(spec.key)
        return {
            "apiVersion": KEDA_API,
            "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicaCount": low,
                "maxReplicaCount": high,
                "pollingInterval": options.polling_interval_s,
                "cooldownPeriod": cooldown_s,
                "advanced": {
                    "horizontalPodAutoscalerConfig": {
                        "behavior": {
                            # Scale in gently: one replica a minute, after five quiet minutes;
                            # each one removed drains first.
                            "scaleDown": {
                                "stabilizationWindowSeconds": 300,
                                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                            }
                        }
                    }
                },
                "triggers": [
                    {
                        "type": "aws-sqs-queue",
                        "name": spec.key,
                        "authenticationRef": {"name": trigger_authentication(topology)},
                        "metadata": {
                            "queueURL": queue_url(region, account_id, spec.name),
                            "awsRegion": region,
                            "queueLength": str(length),
                            "activationQueueLength": "0",
                            "scaleOnInFlight": "true" if in_flight else "false",
                        },
                    }
                ],
            },
        }

    for spec in topology.infer_queues:
        docs.append(
            scaled(
                spec,
                low=0,
                high=options.infer_max_replicas,
                length=options.infer_queue_length,
                in_flight=True,
                cooldown_s=options.infer_cooldown_s,
            )
        )
    docs.append(
        scaled(
            topology.results_queue,
            low=1,
            high=options.worker_max_replicas,
            length=options.persist_queue_length,
            in_flight=True,
            cooldown_s=300,
        )
    )
    docs.append(
        scaled(
            topology.notify_queue,
            low=1,
            high=options.worker_max_replicas,
            length=options.notify_queue_length,
            in_flight=False,
            cooldown_s=300,
        )
    )
    return docs
