"""Who may do what, for CloudFormation: one IAM role per service, the autoscaler's and the
observer's policies, and who may assume them.

Each service's role carries :meth:`Topology.policy_document` as its inline policy, the very
document the emulator attaches to that service's IAM user and enforces; the KEDA operator gets
:meth:`Topology.scaler_policy_document`; the observer's read-only document (``conveyor top``)
is a managed policy for the operators' own role. No policy is spelled twice.

Roles trust EKS Pod Identity (``pods.eks.amazonaws.com``, ``sts:AssumeRole`` +
``sts:TagSession``, limited by its session tags to this cluster, namespace and ServiceAccount),
or, given an OIDC provider, IRSA (``sts:AssumeRoleWithWebIdentity`` for that ServiceAccount).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from shared.errors import TopologyError
from shared.render.names import (
    PSEUDO_ARNS,
    SCALER,
    logical_id,
    role_name,
    scaler_role_name,
    service_account,
    sub,
)
from shared.topology import OBSERVER, SERVICES, Topology

__all__ = [
    "IDENTITY_CONDITIONS",
    "CloudFormationOptions",
    "identity_parameters",
    "render_identities",
]

_CREATE_SCALER_ROLE: Final = "CreateKedaOperatorRole"
IDENTITY_CONDITIONS: Final = {
    _CREATE_SCALER_ROLE: {"Fn::Equals": [{"Ref": "KedaOperatorRoleName"}, ""]},
}


@dataclass(frozen=True)
class CloudFormationOptions:
    namespace: str = "conveyor"
    """The Kubernetes namespace of the services' ServiceAccounts."""
    keda_namespace: str = "keda"
    keda_service_account: str = "keda-operator"
    irsa_oidc_provider: str | None = None
    """``oidc.eks.<region>.amazonaws.com/id/<ID>``: trust IRSA instead of Pod Identity."""

    def __post_init__(self) -> None:
        provider = self.irsa_oidc_provider
        if provider is not None and ("/" not in provider or "://" in provider):
            raise TopologyError(
                f"OIDC provider {provider!r}: expected the issuer without https://, "
                "e.g. oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
            )


def identity_parameters(options: CloudFormationOptions) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "KedaOperatorRoleName": {
            "Type": "String",
            "Default": "",
            "Description": "the IAM role the KEDA operator already runs as, to attach the "
            "queue-depth policy to; empty: create one (with its Pod Identity association)",
        },
    }
    if options.irsa_oidc_provider is None:
        parameters["EksClusterName"] = {
            "Type": "String",
            "Description": "the existing EKS cluster the services run in (Pod Identity)",
            "MinLength": 1,
        }
    return parameters


def render_identities(
    topology: Topology,
    options: CloudFormationOptions,
    resources: dict[str, Any],
    outputs: dict[str, Any],
    tags: list[Any],
) -> None:
    """Add the roles, associations and policies to ``resources``, their ARNs to ``outputs``."""
    for service in SERVICES:
        identity = _Identity(
            logical=logical_id(service),
            role=role_name(topology, service),
            namespace=options.namespace,
            service_account=service_account(topology, service),
        )
        _role(identity, topology.policy_document(service, PSEUDO_ARNS), options, resources, tags)
        outputs[f"{identity.logical}RoleArn"] = {
            "Description": f"the IAM role of {service}",
            "Value": {"Fn::GetAtt": [f"{identity.logical}Role", "Arn"]},
        }
    _scaler(topology, options, resources, outputs, tags)
    resources["ObserverPolicy"] = {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "ManagedPolicyName": topology.user_name(OBSERVER),
            "Description": f"read-only view of Conveyor {topology.prefix!r} (conveyor top): "
            "attach to the operators' role",
            "PolicyDocument": sub(topology.policy_document(OBSERVER, PSEUDO_ARNS)),
        },
    }
    outputs["ObserverPolicyArn"] = {
        "Description": "attach to whoever runs `conveyor top`",
        "Value": {"Ref": "ObserverPolicy"},
    }


@dataclass(frozen=True)
class _Identity:
    logical: str
    role: str
    namespace: str
    service_account: str


def _trust(identity: _Identity, options: CloudFormationOptions) -> dict[str, Any]:
    """Who may assume the role: that one ServiceAccount, through Pod Identity or IRSA."""
    provider = options.irsa_oidc_provider
    if provider is not None:
        statement: dict[str, Any] = {
            "Sid": "IrsaServiceAccount",
            "Effect": "Allow",
            "Principal": {
                "Federated": {
                    "Fn::Sub": f"arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:"
                    f"oidc-provider/{provider}"
                }
            },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{provider}:sub": (
                        f"system:serviceaccount:{identity.namespace}:{identity.service_account}"
                    ),
                    f"{provider}:aud": "sts.amazonaws.com",
                }
            },
        }
    else:
        statement = {
            "Sid": "EksPodIdentity",
            "Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": {
                "StringEquals": {
                    "aws:SourceAccount": {"Ref": "AWS::AccountId"},
                    "aws:RequestTag/eks-cluster-name": {"Ref": "EksClusterName"},
                    "aws:RequestTag/kubernetes-namespace": identity.namespace,
                    "aws:RequestTag/kubernetes-service-account": identity.service_account,
                }
            },
        }
    return {"Version": "2012-10-17", "Statement": [statement]}


def _role(
    identity: _Identity,
    policy: dict[str, Any],
    options: CloudFormationOptions,
    resources: dict[str, Any],
    tags: list[Any],
    *,
    condition: str | None = None,
) -> None:
    role: dict[str, Any] = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "RoleName": identity.role,
            "Description": f"Conveyor: {identity.namespace}/{identity.service_account}",
            "AssumeRolePolicyDocument": _trust(identity, options),
            "Tags": tags,
        },
    }
    if policy["Statement"]:
        role["Properties"]["Policies"] = [
            {"PolicyName": identity.role, "PolicyDocument": sub(policy)}
        ]
    if condition:
        role["Condition"] = condition
    resources[f"{identity.logical}Role"] = role
    if options.irsa_oidc_provider is None:
        association: dict[str, Any] = {
            "Type": "AWS::EKS::PodIdentityAssociation",
            "Properties": {
                "ClusterName": {"Ref": "EksClusterName"},
                "Namespace": identity.namespace,
                "ServiceAccount": identity.service_account,
                "RoleArn": {"Fn::GetAtt": [f"{identity.logical}Role", "Arn"]},
                "Tags": tags,
            },
        }
        if condition:
            association["Condition"] = condition
        resources[f"{identity.logical}PodIdentity"] = association


def _scaler(
    topology: Topology,
    options: CloudFormationOptions,
    resources: dict[str, Any],
    outputs: dict[str, Any],
    tags: list[Any],
) -> None:
    """The KEDA operator reads queue depth with its own identity: KEDA's ``identityOwner:
    workload`` does not work with Pod Identity associations (kedacore/keda#6418). One
    ServiceAccount has one association per cluster, so a second stack attaches its policy to
    the role the first made (parameter KedaOperatorRoleName)."""
    identity = _Identity(
        logical=logical_id(SCALER),
        role=scaler_role_name(topology),
        namespace=options.keda_namespace,
        service_account=options.keda_service_account,
    )
    _role(
        identity,
        {"Statement": []},
        options,
        resources,
        tags,
        condition=_CREATE_SCALER_ROLE,
    )
    resources["KedaQueueDepthPolicy"] = {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "ManagedPolicyName": f"{topology.prefix}-queue-depth",
            "Description": f"read the depth of Conveyor {topology.prefix!r} queues (KEDA)",
            "PolicyDocument": sub(topology.scaler_policy_document(PSEUDO_ARNS)),
            "Roles": [
                {
                    "Fn::If": [
                        _CREATE_SCALER_ROLE,
                        {"Ref": f"{identity.logical}Role"},
                        {"Ref": "KedaOperatorRoleName"},
                    ]
                }
            ],
        },
    }
    outputs["KedaQueueDepthPolicyArn"] = {
        "Description": "attach to the KEDA operator's role",
        "Value": {"Ref": "KedaQueueDepthPolicy"},
    }
