"""What every pod of the stack is made of: security contexts, ports, probes, resources,
writable volumes, secret references, and how long a drain may take.

Every container runs as the images' user 10001 (compose/Dockerfile), non-root, with a
read-only root filesystem, no privilege escalation, every capability dropped and the
RuntimeDefault seccomp profile; the paths it writes are emptyDir volumes.
"""

from __future__ import annotations

import math
from typing import Any, Final

__all__ = [
    "CACHE_DIR",
    "DRAIN_MARGIN_S",
    "GPU",
    "HTTP_PORT",
    "METRICS_PORT",
    "PRE_STOP_S",
    "UID",
    "container_security",
    "env",
    "pod_security",
    "ports",
    "probes",
    "resources",
    "termination_grace_s",
    "volumes",
]

UID: Final = 10001
"""The images' user and group (compose/Dockerfile)."""
METRICS_PORT: Final = 9090
HTTP_PORT: Final = 8000
PRE_STOP_S: Final = 5
"""ingest keeps serving this long after SIGTERM is due, while endpoints drop it."""
DRAIN_MARGIN_S: Final = 10
"""Beyond the drain the settings allow: logging the summary, closing clients, exiting."""
CACHE_DIR: Final = "/var/cache/conveyor"
GPU: Final = "nvidia.com/gpu"


# Secret references: service -> (environment variable, key in the Secret <prefix>-<service>).
_SECRETS: Final = {
    "ingest": (("INGEST_DATABASE_URL", "database-url"),),
    "infer": (),
    "persist": (("PERSIST_DATABASE_URL", "database-url"),),
    "notify": (
        ("NOTIFY_DATABASE_URL", "database-url"),
        ("NOTIFY_WEBHOOK_SECRET", "webhook-secret"),
    ),
}
_RESOURCES: Final = {
    "ingest": {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    },
    "infer": {
        "requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "12Gi", GPU: "1"},
        "limits": {"cpu": "4", "memory": "12Gi", "ephemeral-storage": "24Gi", GPU: "1"},
    },
    "persist": {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    },
    "notify": {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    },
}


def termination_grace_s(service: str, shutdown_grace_s: float, sqs_wait_s: int) -> int:
    """Seconds Kubernetes waits after SIGTERM before SIGKILL: the whole drain, and a margin.

    Workers stop receiving (the poll in flight ends within ``SQS_WAIT_S``), then let started
    work finish within ``SHUTDOWN_GRACE_S``. ingest first waits out its preStop hook, then
    lets requests finish (up to the grace) and makes a last relay pass (up to the grace).
    """
    if service == "ingest":
        drain = PRE_STOP_S + 2 * shutdown_grace_s
    else:
        drain = sqs_wait_s + shutdown_grace_s
    return math.ceil(drain) + DRAIN_MARGIN_S


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def ports(service: str) -> list[dict[str, Any]]:
    found = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    if service == "ingest":
        found.insert(0, {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"})
    return found


def resources(service: str) -> dict[str, Any]:
    return {kind: dict(amounts) for kind, amounts in _RESOURCES[service].items()}


def volumes(service: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The writable paths (mounts) and the emptyDir volumes behind them."""
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108 - an emptyDir of its own
    found: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if service == "infer":
        mounts.append({"name": "cache", "mountPath": CACHE_DIR})
        found.append({"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}})
    return mounts, found


def env(prefix: str, service: str, model: str | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if model is not None:
        env.append({"name": "INFER_MODEL", "value": model})
    for variable, key in _SECRETS[service]:
        env.append(
            {
                "name": variable,
                "valueFrom": {"secretKeyRef": {"name": f"{prefix}-{service}", "key": key}},
            }
        )
    return env


def probes(service: str) -> dict[str, Any]:
    if service == "ingest":
        return {
            "startupProbe": _http("/healthz", period=2, failures=30),
            "readinessProbe": _http("/readyz", period=5, failures=2),
            "livenessProbe": _http("/healthz", period=10, failures=3),
        }
    # A worker serves /metrics and /healthz on its metrics port from the start of its process
    # (shared.liveness): /healthz is 503 once its SQS receive loop has made no progress (no
    # receive, no message finished) for minutes, so a loop that hangs without raising is
    # restarted; a model still loading has no loop yet and is not "dead".
    health = {"httpGet": {"path": "/healthz", "port": "metrics"}, "timeoutSeconds": 3}
    return {
        "startupProbe": {**health, "periodSeconds": 2, "failureThreshold": 60},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 3},
    }


def _http(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }
