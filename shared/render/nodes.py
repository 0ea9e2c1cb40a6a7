"""Nodes for the stack, from Karpenter v1: a GPU NodePool for infer alone, a general one.

GPU nodes cost the most, so they exist only while there is GPU work and carry only GPU work:

- the GPU NodePool taints its nodes ``nvidia.com/gpu=true:NoSchedule``; infer is the only
  workload that tolerates it (and selects the pool); everything else lands on the general pool;
- ``limits`` caps the GPUs (and so the bill) the pool can ever hold;
- a node with no infer pod left is removed after ``consolidateAfter``; infer pods carry
  ``karpenter.sh/do-not-disrupt`` so that consolidation, drift and expiry never take a node
  from under a batch (KEDA scales infer to zero when the queue is empty, which empties the
  node); ``terminationGracePeriod`` bounds how long such a pod can hold a drifted node.

The NVIDIA device plugin is a prerequisite (without it a GPU node never advertises
``nvidia.com/gpu`` and infer never schedules); it is a cluster add-on, not rendered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from shared.topology import Topology

__all__ = ["GPU_TAINT", "NodeOptions", "render_nodes"]

KARPENTER_API: Final = "karpenter.sh/v1"
EC2_API: Final = "karpenter.k8s.aws/v1"
GPU_TAINT: Final = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodeOptions:
    gpu_instance_families: tuple[str, ...] = ("g5", "g6", "g6e")
    max_gpus: int = 8
    """The GPU pool's limit: at most this many GPUs, whatever the backlog."""
    gpu_capacity_types: tuple[str, ...] = ("on-demand",)
    general_max_cpu: int = 64
    node_role: str | None = None
    """The IAM role of Karpenter's nodes (default ``KarpenterNodeRole-<cluster>``, as in
    Karpenter's getting-started stack)."""
    ami_alias: str = "al2023@latest"
    """Pin it in production (``al2023@v<date>``): a new AMI then arrives as drift you chose."""
    gpu_consolidate_after: str = "5m"

    def gpu_pool(self, topology: Topology) -> str:
        return f"{topology.prefix}-gpu"

    def general_pool(self, topology: Topology) -> str:
        return f"{topology.prefix}-general"


def render_nodes(
    topology: Topology, options: NodeOptions, cluster_name: str, labels: dict[str, str]
) -> list[dict[str, Any]]:
    gpu, general = options.gpu_pool(topology), options.general_pool(topology)
    return [
        _node_class(gpu, options, cluster_name, labels, volume_gi=100),
        _node_class(general, options, cluster_name, labels, volume_gi=40),
        {
            "apiVersion": KARPENTER_API,
            "kind": "NodePool",
            "metadata": {"name": gpu, "labels": labels},
            "spec": {
                "template": {
                    "metadata": {"labels": {"conveyor/nodes": "gpu"}},
                    "spec": {
                        "nodeClassRef": _class_ref(gpu),
                        "taints": [GPU_TAINT],
                        "requirements": [
                            _requirement(
                                "karpenter.k8s.aws/instance-family",
                                options.gpu_instance_families,
                            ),
                            _requirement(
                                "karpenter.k8s.aws/instance-gpu-manufacturer", ("nvidia",)
                            ),
                            # One GPU per node: one infer replica per node, so an idle replica
                            # frees a whole node.
                            _requirement("karpenter.k8s.aws/instance-gpu-count", ("1",)),
                            _requirement("karpenter.sh/capacity-type", options.gpu_capacity_types),
                            _requirement("kubernetes.io/arch", ("amd64",)),
                        ],
                        "expireAfter": "720h",
                        "terminationGracePeriod": "1h",
                    },
                },
                "limits": {"nvidia.com/gpu": str(options.max_gpus)},
                "disruption": {
                    "consolidationPolicy": "WhenEmpty",
                    "consolidateAfter": options.gpu_consolidate_after,
                    "budgets": [{"nodes": "20%"}],
                },
            },
        },
        {
            "apiVersion": KARPENTER_API,
            "kind": "NodePool",
            "metadata": {"name": general, "labels": labels},
            "spec": {
                "template": {
                    "metadata": {"labels": {"conveyor/nodes": "general"}},
                    "spec": {
                        "nodeClassRef": _class_ref(general),
                        "requirements": [
                            _requirement("karpenter.k8s.aws/instance-category", ("c", "m", "r")),
                            _requirement("karpenter.sh/capacity-type", ("on-demand", "spot")),
                            _requirement("kubernetes.io/arch", ("amd64",)),
                        ],
                        "expireAfter": "720h",
                    },
                },
                "limits": {"cpu": str(options.general_max_cpu)},
                "disruption": {
                    "consolidationPolicy": "WhenEmptyOrUnderutilized",
                    "consolidateAfter": "1m",
                },
            },
        },
    ]


def _class_ref(name: str) -> dict[str, str]:
    return {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": name}


def _requirement(key: str, values: tuple[str, ...]) -> dict[str, Any]:
    return {"key": key, "operator": "In", "values": list(values)}


def _node_class(
    name: str,
    options: NodeOptions,
    cluster_name: str,
    labels: dict[str, str],
    *,
    volume_gi: int,
) -> dict[str, Any]:
    discovery = {"tags": {"karpenter.sh/discovery": cluster_name}}
    return {
        "apiVersion": EC2_API,
        "kind": "EC2NodeClass",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "role": options.node_role or f"KarpenterNodeRole-{cluster_name}",
            # For a GPU instance type the al2023 alias resolves to the NVIDIA variant (drivers
            # installed); the device plugin still has to be deployed.
            "amiSelectorTerms": [{"alias": options.ami_alias}],
            "subnetSelectorTerms": [discovery],
            "securityGroupSelectorTerms": [discovery],
            "blockDeviceMappings": [
                {
                    "deviceName": "/dev/xvda",
                    "ebs": {
                        "volumeSize": f"{volume_gi}Gi",
                        "volumeType": "gp3",
                        "encrypted": True,
                        "deleteOnTermination": True,
                    },
                }
            ],
            # IMDSv2 only, one hop: pods cannot borrow the node's role (they have their own).
            "metadataOptions": {
                "httpEndpoint": "enabled",
                "httpProtocolIPv6": "disabled",
                "httpPutResponseHopLimit": 1,
                "httpTokens": "required",
            },
            "tags": {"conveyor:cluster": cluster_name},
        },
    }
