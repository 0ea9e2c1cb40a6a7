"""The topology as Kubernetes manifests for EKS: one stream, applied with ``kubectl apply -f``.

    render_kubernetes(topology, KubernetesOptions(account_id=..., image_registry=...,
                                                  image_tag=...))  -> [manifest, ...]

What it holds, all derived from the topology and the services' settings:

- a Namespace (Pod Security ``restricted``) and one ConfigMap with every non-secret setting;
  secrets come from Secret references (``<prefix>-<service>``: ``database-url``,
  ``webhook-secret``), never literals: the Secrets are made by the platform, not rendered;
- per service a ServiceAccount named like its IAM role (Pod Identity associates the two; with
  IRSA it carries the role's ARN); per service a Deployment, one per model for infer; a PDB;
- ingest behind a Service, readiness on ``/readyz``, liveness on ``/healthz``, an HPA on CPU;
- workers probed on their metrics port (the process serves; :func:`shared.render.pods.probes`
  says what that does not prove), and drained on SIGTERM: ``terminationGracePeriodSeconds``
  covers ``SHUTDOWN_GRACE_S`` plus one long poll (``SQS_WAIT_S``) plus a margin;
- infer tolerates the GPU taint, requests ``nvidia.com/gpu: 1``, selects the GPU NodePool and
  carries ``karpenter.sh/do-not-disrupt``; nothing else tolerates the taint;
- KEDA ScaledObjects, one per queue (:mod:`shared.render.autoscaling`), and Karpenter
  NodePools and EC2NodeClasses (:mod:`shared.render.nodes`).

What each pod is made of (security contexts, probes, resources, volumes) is
:mod:`shared.render.pods`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from shared.config import CommonSettings
from shared.errors import TopologyError
from shared.render import pods
from shared.render.autoscaling import AutoscalingOptions, render_autoscaling
from shared.render.names import role_name, service_account
from shared.render.nodes import NodeOptions, render_nodes
from shared.topology import SERVICES, Topology

__all__ = ["INGEST_REPLICAS", "KubernetesOptions", "render_kubernetes"]

INGEST_REPLICAS: Final = (2, 10)
"""The ingest HPA's bounds: two replicas at least, for a rolling update and a zone outage."""
MODEL_LABEL: Final = "conveyor/model"
_ACCOUNT = re.compile(r"^[0-9]{12}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _default(settings: type[CommonSettings], name: str) -> Any:
    return settings.model_fields[name].default


@dataclass(frozen=True)
class KubernetesOptions:
    account_id: str
    """The AWS account of the queues (KEDA needs their URLs) and, with IRSA, of the roles."""
    image_registry: str
    """Where the images are, e.g. ``123456789012.dkr.ecr.us-east-1.amazonaws.com``; each
    service's image is ``<registry>/conveyor-<target>:<tag>`` (compose/Dockerfile targets)."""
    image_tag: str
    region: str = "us-east-1"
    namespace: str = "conveyor"
    cluster_name: str = "conveyor"
    irsa: bool = False
    """Annotate the ServiceAccounts with their roles' ARNs (IRSA) instead of relying on Pod
    Identity associations (made by the CloudFormation stack)."""
    shutdown_grace_s: float = _default(CommonSettings, "shutdown_grace_s")
    sqs_wait_s: int = _default(CommonSettings, "sqs_wait_s")
    ingest_replicas: tuple[int, int] = INGEST_REPLICAS
    nodes: NodeOptions = field(default_factory=NodeOptions)
    autoscaling: AutoscalingOptions = field(default_factory=AutoscalingOptions)

    def __post_init__(self) -> None:
        if not _ACCOUNT.match(self.account_id):
            raise TopologyError(f"account id {self.account_id!r}: expected 12 digits")
        if not _TAG.match(self.image_tag) or self.image_tag == "latest":
            raise TopologyError(
                f"image tag {self.image_tag!r}: expected a fixed version such as 0.1.0 "
                "(never 'latest': a rollout must name what it runs)"
            )
        if not self.image_registry or self.image_registry.endswith("/"):
            raise TopologyError(f"image registry {self.image_registry!r}: expected host[/path]")

    def image(self, target: str) -> str:
        return f"{self.image_registry}/conveyor-{target}:{self.image_tag}"


def render_kubernetes(topology: Topology, options: KubernetesOptions) -> list[dict[str, Any]]:
    labels = _Labels(topology, options)
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": options.namespace,
                "labels": {
                    **labels.common(),
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
        },
        _config_map(topology, options, labels),
    ]
    for service in SERVICES:
        docs.append(_service_account(topology, options, labels, service))
    docs.append(_deployment(topology, options, labels, "ingest"))
    docs.append(_ingest_service(options, labels))
    docs.append(_ingest_hpa(topology, options, labels))
    for model in topology.models:
        docs.append(_deployment(topology, options, labels, "infer", model))
    docs.append(_deployment(topology, options, labels, "persist"))
    docs.append(_deployment(topology, options, labels, "notify"))
    for service in SERVICES:
        docs.append(_pdb(topology, options, labels, service))
    docs.extend(
        render_autoscaling(
            topology,
            options.autoscaling,
            namespace=options.namespace,
            region=options.region,
            account_id=options.account_id,
            labels=labels.common(),
            deployment=lambda key: deployment_name(topology, key),
        )
    )
    docs.extend(render_nodes(topology, options.nodes, options.cluster_name, labels.common()))
    # Plain data with no node shared between documents (YAML would write aliases, and a
    # caller changing one document must not change another).
    return json.loads(json.dumps(docs))  # type: ignore[no-any-return]


def deployment_name(topology: Topology, key: str) -> str:
    """The Deployment that consumes queue ``key`` (``infer-<model>``, ``results``, ``notify``)
    or serves ``ingest``."""
    service = {"results": "persist", "notify": "notify", "ingest": "ingest"}.get(key)
    if service is None:
        return f"{topology.prefix}-{key}"  # infer-<model>
    return f"{topology.prefix}-{service}"


class _Labels:
    def __init__(self, topology: Topology, options: KubernetesOptions) -> None:
        self.prefix = topology.prefix
        self.version = options.image_tag

    def common(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/part-of": "conveyor",
            "app.kubernetes.io/instance": self.prefix,
            "app.kubernetes.io/managed-by": "conveyor-render",
        }

    def selector(self, service: str, model: str | None = None) -> dict[str, str]:
        selector = {"app.kubernetes.io/instance": self.prefix, "app.kubernetes.io/name": service}
        if model is not None:
            selector[MODEL_LABEL] = model
        return selector

    def workload(self, service: str, model: str | None = None) -> dict[str, str]:
        return {
            **self.common(),
            **self.selector(service, model),
            "app.kubernetes.io/version": self.version,
        }


def _metadata(
    name: str, options: KubernetesOptions, labels: dict[str, str], **extra: Any
) -> dict[str, Any]:
    return {"name": name, "namespace": options.namespace, "labels": labels, **extra}


def config_map_name(topology: Topology) -> str:
    return f"{topology.prefix}-config"


def _config_map(topology: Topology, options: KubernetesOptions, labels: _Labels) -> dict[str, Any]:
    data = {
        "AWS_REGION": options.region,
        "CONVEYOR_PREFIX": topology.prefix,
        "CONVEYOR_MODELS": ",".join(topology.models),
        "CONVEYOR_MAX_RECEIVE_COUNT": str(topology.max_receive_count),
        "CONVEYOR_NOTIFY_MAX_RECEIVE_COUNT": str(topology.notify_max_receive_count),
        "SQS_WAIT_S": str(options.sqs_wait_s),
        "SHUTDOWN_GRACE_S": f"{options.shutdown_grace_s:g}",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "METRICS_HOST": "0.0.0.0",  # inside the pod, for Prometheus to scrape
        "METRICS_PORT": str(pods.METRICS_PORT),
        "INGEST_HTTP_HOST": "0.0.0.0",  # inside the pod, behind the Service
        "INGEST_HTTP_PORT": str(pods.HTTP_PORT),
        "INFER_DEVICE": "cuda",
        "INFER_CACHE_DIR": f"{pods.CACHE_DIR}/models",
        # Read-only root filesystem: libraries that cache go to the writable volumes.
        "HF_HOME": f"{pods.CACHE_DIR}/huggingface",
        "XDG_CACHE_HOME": "/tmp/.cache",  # noqa: S108 - an emptyDir of the pod's own
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(topology), options, labels.common()),
        "data": data,
    }


def _service_account(
    topology: Topology, options: KubernetesOptions, labels: _Labels, service: str
) -> dict[str, Any]:
    annotations = {}
    if options.irsa:
        annotations["eks.amazonaws.com/role-arn"] = (
            f"arn:aws:iam::{options.account_id}:role/{role_name(topology, service)}"
        )
    metadata = _metadata(service_account(topology, service), options, labels.workload(service))
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        # The services never call the Kubernetes API. (Pod Identity and IRSA project tokens
        # of their own, which this does not turn off.)
        "automountServiceAccountToken": False,
    }


def _deployment(
    topology: Topology,
    options: KubernetesOptions,
    labels: _Labels,
    service: str,
    model: str | None = None,
) -> dict[str, Any]:
    mounts, volumes = pods.volumes(service)
    container: dict[str, Any] = {
        "name": service,
        "image": options.image(service),
        "imagePullPolicy": "IfNotPresent",
        "envFrom": [{"configMapRef": {"name": config_map_name(topology)}}],
        "env": pods.env(topology.prefix, service, model),
        "ports": pods.ports(service),
        "resources": pods.resources(service),
        **pods.probes(service),
        "securityContext": pods.container_security(),
        "volumeMounts": mounts,
    }
    if service == "ingest":
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": pods.PRE_STOP_S}}}
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(pods.METRICS_PORT),
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": service_account(topology, service),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": pods.termination_grace_s(
            service, options.shutdown_grace_s, options.sqs_wait_s
        ),
        "securityContext": pods.pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if service == "infer":
        # GPU nodes are for GPU work: only infer tolerates their taint, and it asks for them.
        pod_spec["tolerations"] = [{"key": pods.GPU, "operator": "Exists", "effect": "NoSchedule"}]
        pod_spec["nodeSelector"] = {"karpenter.sh/nodepool": options.nodes.gpu_pool(topology)}
        # Karpenter must not take the node from under a batch in flight (consolidation,
        # drift, expiry); scale-in by KEDA still comes as SIGTERM, which drains.
        annotations["karpenter.sh/do-not-disrupt"] = "true"
    if service == "ingest":
        pod_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": labels.selector(service)},
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            deployment_name(topology, f"infer-{model}" if model else service),
            options,
            labels.workload(service, model),
        ),
        # No replicas: the HPA (ingest) and KEDA (the workers) own that number.
        "spec": {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": labels.selector(service, model)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels.workload(service, model),
                    "annotations": annotations,
                },
                "spec": pod_spec,
            },
        },
    }


def _ingest_service(options: KubernetesOptions, labels: _Labels) -> dict[str, Any]:
    name = f"{labels.prefix}-ingest"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, options, labels.workload("ingest")),
        "spec": {
            "type": "ClusterIP",
            "selector": labels.selector("ingest"),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _ingest_hpa(topology: Topology, options: KubernetesOptions, labels: _Labels) -> dict[str, Any]:
    low, high = options.ingest_replicas
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(f"{topology.prefix}-ingest", options, labels.workload("ingest")),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(topology, "ingest"),
            },
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def _pdb(
    topology: Topology, options: KubernetesOptions, labels: _Labels, service: str
) -> dict[str, Any]:
    # ingest keeps one replica serving through voluntary disruptions; a worker loses at most
    # one replica at a time (its messages come back to the queue after a drain either way).
    budget = {"minAvailable": 1} if service == "ingest" else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(f"{topology.prefix}-{service}", options, labels.workload(service)),
        "spec": {
            **budget,
            # infer's Deployments (one per model) share this label; the model label splits
            # them, the PDB covers all.
            "selector": {"matchLabels": labels.selector(service)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
