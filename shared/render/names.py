"""The names the CloudFormation and Kubernetes renderings share, so that they meet.

A service's IAM role, its Kubernetes ServiceAccount and the Pod Identity association between
them all carry :meth:`Topology.user_name` (``<prefix>-<service>``, the emulator's IAM user);
the KEDA operator's permission is the topology's scaler policy. ARNs inside the template are
built by the same :class:`~shared.topology.Arns` the emulator uses, with CloudFormation's
pseudo parameters in place of the region and account.
"""

from __future__ import annotations

import re
from typing import Any, Final

from shared.errors import TopologyError
from shared.topology import Arns, Topology

__all__ = [
    "PSEUDO_ARNS",
    "SCALER",
    "logical_id",
    "role_name",
    "scaler_role_name",
    "service_account",
    "sub",
]

PSEUDO_ARNS: Final = Arns(
    region="${AWS::Region}", account_id="${AWS::AccountId}", partition="${AWS::Partition}"
)
"""ARNs for a template: ``Fn::Sub`` fills in the stack's partition, region and account."""

SCALER: Final = "keda-operator"
"""The identity that reads queue depth for autoscaling (not a Conveyor service)."""


def role_name(topology: Topology, service: str) -> str:
    return topology.user_name(service)


def service_account(topology: Topology, service: str) -> str:
    return topology.user_name(service)


def scaler_role_name(topology: Topology) -> str:
    return f"{topology.prefix}-{SCALER}"


def sub(value: Any) -> Any:
    """``value`` with every string that names a pseudo parameter wrapped in ``Fn::Sub``."""
    if isinstance(value, str):
        return {"Fn::Sub": value} if "${" in value else value
    if isinstance(value, list):
        return [sub(item) for item in value]
    if isinstance(value, dict):
        return {key: sub(item) for key, item in value.items()}
    return value


_WORD = re.compile(r"[a-z0-9]+")


def logical_id(*parts: str) -> str:
    """A CloudFormation logical id (``[A-Za-z0-9]+``) from names such as ``infer-m1.5``:
    each word capitalised, a dot spelled ``Dot`` so that ``m1.5`` and ``m15`` stay apart."""
    words: list[str] = []
    for part in parts:
        for word in _WORD.findall(part.lower().replace(".", "-dot-")):
            words.append(word[:1].upper() + word[1:])
    name = "".join(words)
    if not name or len(name) > 255:
        raise TopologyError(f"cannot make a CloudFormation logical id from {parts!r}")
    return name
