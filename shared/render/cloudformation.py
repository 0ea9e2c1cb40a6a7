"""The topology as a CloudFormation template: what ``conveyor provision`` makes, for AWS.

    render_cloudformation(Topology(prefix="acme", models=("m1",)))  -> the template, as data

Queues and DLQs carry the attributes :class:`~shared.topology.QueueSpec` gives the emulator
(retention, visibility, long polling, SSE, the redrive policy and the DLQ's redrive-allow
policy), buckets those of :class:`~shared.topology.BucketSpec` plus what only the cloud needs
(a TLS-only bucket policy, bucket-owner-enforced ownership). The IAM half (a role per service
with the emulator's own policy document, the KEDA operator's and the observer's policies,
Pod Identity or IRSA trust) is :mod:`shared.render.iam`. The EKS cluster and the RDS database
exist already: they are parameters, not resources.

Checks suppressed for checkov are named on the resource (``Metadata.checkov.skip``) with the
reason, so the reason travels with the template.
"""

from __future__ import annotations

import json
from typing import Any, Final

from shared.errors import TopologyError
from shared.render.iam import (
    IDENTITY_CONDITIONS,
    CloudFormationOptions,
    identity_parameters,
    render_identities,
)
from shared.render.names import PSEUDO_ARNS, logical_id, sub
from shared.topology import BucketSpec, QueueSpec, Topology

__all__ = ["CloudFormationOptions", "render_cloudformation"]

_INTEGER_ATTRIBUTES: Final = frozenset(
    {"VisibilityTimeout", "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds"}
)
_JSON_ATTRIBUTES: Final = frozenset({"RedrivePolicy", "RedriveAllowPolicy"})
# Said outright (cfn-lint I3011): a deleted stack takes its queues and their messages with
# it. Replacing a queue never happens in place: its name is fixed, so CloudFormation refuses.
_QUEUE_POLICIES: Final = {"DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete"}
_SSE_SQS: Final = {
    "checkov": {
        "skip": [
            {
                "id": "CKV_AWS_27",
                "comment": "encrypted at rest with SQS-managed SSE (SqsManagedSseEnabled), which "
                "this check does not recognise (it looks for KmsMasterKeyId only); SSE-KMS "
                "would add kms:GenerateDataKey/kms:Decrypt to every service's policy",
            }
        ]
    }
}


def render_cloudformation(
    topology: Topology, options: CloudFormationOptions | None = None
) -> dict[str, Any]:
    options = options or CloudFormationOptions()
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    tags = [{"Key": "conveyor:stack", "Value": topology.prefix}]

    for spec in topology.queues:
        _queue_pair(spec, resources, outputs, tags)
    for bucket in topology.buckets:
        _bucket(bucket, resources, outputs, tags)
    render_identities(topology, options, resources, outputs, tags)

    parameters: dict[str, Any] = {
        "DatabaseEndpoint": {
            "Type": "String",
            "Description": "host:port of the existing RDS PostgreSQL (the services' "
            "DATABASE_URLs live in Kubernetes Secrets, not here)",
            "AllowedPattern": r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        },
        **identity_parameters(options),
    }
    outputs["DatabaseEndpoint"] = {
        "Description": "the RDS endpoint the services' DATABASE_URLs point at",
        "Value": {"Ref": "DatabaseEndpoint"},
    }
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            f"Conveyor stack {topology.prefix!r} (models: {', '.join(topology.models)}): "
            "queues, buckets and IAM roles, rendered from shared.topology by "
            "`conveyor render cloudformation`. Do not edit: render again."
        ),
        "Parameters": parameters,
        "Conditions": IDENTITY_CONDITIONS,
        "Resources": resources,
        "Outputs": outputs,
    }
    # A tree with no shared nodes (YAML would write them as aliases, which CloudFormation
    # refuses), holding nothing but JSON.
    return json.loads(json.dumps(template))  # type: ignore[no-any-return]


def _queue_properties(attributes: dict[str, str]) -> dict[str, Any]:
    """SQS CreateQueue attributes (all strings) as CloudFormation properties (same names)."""
    properties: dict[str, Any] = {}
    for name, value in attributes.items():
        if name in _INTEGER_ATTRIBUTES:
            properties[name] = int(value)
        elif name in _JSON_ATTRIBUTES:
            properties[name] = sub(json.loads(value))
        elif value in ("true", "false"):
            properties[name] = value == "true"
        else:
            properties[name] = value
    return properties


def _queue_pair(
    spec: QueueSpec, resources: dict[str, Any], outputs: dict[str, Any], tags: list[Any]
) -> None:
    queue, dlq = logical_id(spec.key, "queue"), logical_id(spec.key, "dlq")
    if queue in resources or dlq in resources:
        raise TopologyError(f"queue {spec.key!r} collides with another in CloudFormation ids")
    resources[dlq] = {
        "Type": "AWS::SQS::Queue",
        **_QUEUE_POLICIES,
        "Metadata": _SSE_SQS,
        "Properties": {
            "QueueName": spec.dlq_name,
            **_queue_properties(spec.dlq_attributes(PSEUDO_ARNS.queue(spec.name))),
            "Tags": tags,
        },
    }
    resources[queue] = {
        "Type": "AWS::SQS::Queue",
        # The redrive policy names the DLQ by its ARN (built, not looked up): wait for it.
        "DependsOn": dlq,
        **_QUEUE_POLICIES,
        "Metadata": _SSE_SQS,
        "Properties": {
            "QueueName": spec.name,
            **_queue_properties(
                {**spec.attributes(), "RedrivePolicy": spec.redrive_policy(_dlq_arn(spec))}
            ),
            "Tags": tags,
        },
    }
    outputs[f"{queue}Url"] = {"Description": spec.name, "Value": {"Ref": queue}}
    outputs[f"{dlq}Url"] = {"Description": spec.dlq_name, "Value": {"Ref": dlq}}


def _dlq_arn(spec: QueueSpec) -> str:
    return PSEUDO_ARNS.queue(spec.dlq_name)


def _bucket(
    spec: BucketSpec, resources: dict[str, Any], outputs: dict[str, Any], tags: list[Any]
) -> None:
    name = logical_id(spec.key, "bucket")
    skip = [
        {
            "id": "CKV_AWS_18",
            "comment": "server access logging needs a log bucket that the platform team owns "
            "(one per account, not per stack); CloudTrail data events are the alternative",
        }
    ]
    properties: dict[str, Any] = {
        "BucketName": spec.name,
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": spec.sse_algorithm}}
            ]
        },
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        "Tags": tags,
    }
    if spec.versioned:
        properties["VersioningConfiguration"] = {"Status": "Enabled"}
    else:
        skip.append(
            {
                "id": "CKV_AWS_21",
                "comment": "claim-checked payloads are transient copies of job inputs and "
                "outputs, deleted by the lifecycle rule; versioning would keep them",
            }
        )
    if spec.expire_after_days is not None:
        properties["LifecycleConfiguration"] = {
            "Rules": [
                {
                    "Id": "expire-payloads",
                    "Status": "Enabled",
                    "ExpirationInDays": spec.expire_after_days,
                }
            ]
        }
    resources[name] = {
        "Type": "AWS::S3::Bucket",
        # Models and in-flight payloads outlive a deleted stack; remove them on purpose.
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Metadata": {"checkov": {"skip": skip}},
        "Properties": properties,
    }
    arn = PSEUDO_ARNS.bucket(spec.name)
    resources[f"{name}Policy"] = {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": {"Ref": name},
            "PolicyDocument": sub(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "TlsOnly",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [arn, f"{arn}/*"],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                }
            ),
        },
    }
    outputs[f"{name}Name"] = {"Description": f"the {spec.key} bucket", "Value": {"Ref": name}}
