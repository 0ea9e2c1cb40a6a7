"""Apply the topology to an AWS endpoint through API calls (idempotent).

The emulator uses this to stand up a stack; ``conveyor provision`` runs it against any
endpoint. Queues and buckets are safe to provision in a real account. IAM *users* with access
keys exist for the emulator only (``iam_users=True``); in the cloud each service runs under a
role carrying the same policy document (IRSA), rendered from the same topology.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import anyio
from botocore.exceptions import ClientError

from shared.aws.clients import AwsClients
from shared.aws.errors import aws_errors
from shared.errors import leaves
from shared.topology import OBSERVER, SERVICES, Arns, BucketSpec, QueueSpec, Topology

if TYPE_CHECKING:
    from types_aiobotocore_sqs.literals import QueueAttributeNameType

__all__ = ["AccessKey", "Provisioned", "provision"]


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True)
class Provisioned:
    """What provisioning created: queue URLs by physical name, and per-service keys."""

    account_id: str
    queue_urls: dict[str, str]
    credentials: dict[str, AccessKey]


async def provision(
    clients: AwsClients, topology: Topology, *, iam_users: bool = False
) -> Provisioned:
    aws = clients.settings
    sts = await clients.sts()
    with aws_errors(aws):
        account_id = (await sts.get_caller_identity())["Account"]
    arns = Arns(region=aws.region, account_id=account_id)
    queue_urls: dict[str, str] = {}
    credentials: dict[str, AccessKey] = {}

    async def queue_pair(spec: QueueSpec) -> None:
        dlq_url = await _ensure_queue(
            clients, spec.dlq_name, spec.dlq_attributes(arns.queue(spec.name))
        )
        attributes = {
            **spec.attributes(),
            "RedrivePolicy": spec.redrive_policy(arns.queue(spec.dlq_name)),
        }
        queue_urls[spec.dlq_name] = dlq_url
        queue_urls[spec.name] = await _ensure_queue(clients, spec.name, attributes)

    async def user(service: str) -> None:
        credentials[service] = await _ensure_user(
            clients, topology.user_name(service), topology.policy_document(service, arns)
        )

    try:
        async with anyio.create_task_group() as tg:
            for spec in topology.queues:
                tg.start_soon(queue_pair, spec)
            for bucket in topology.buckets:
                tg.start_soon(_ensure_bucket, clients, bucket)
            if iam_users:
                for service in (*SERVICES, OBSERVER):
                    tg.start_soon(user, service)
    except BaseExceptionGroup as group:  # report the first failure itself, not the group
        raise leaves(group)[0] from group
    return Provisioned(account_id=account_id, queue_urls=queue_urls, credentials=credentials)


async def _ensure_queue(clients: AwsClients, name: str, spec: dict[str, str]) -> str:
    sqs = await clients.sqs()
    attributes = cast("Mapping[QueueAttributeNameType, str]", spec)
    with aws_errors(clients.settings, resource=name):
        try:
            return (await sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "QueueAlreadyExists",
                "QueueNameExists",
            ):
                raise
        # It exists with other attributes (an earlier topology): bring it up to date.
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        await sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        return url


async def _ensure_bucket(clients: AwsClients, bucket: BucketSpec) -> None:
    s3 = await clients.s3()
    region = clients.settings.region
    with aws_errors(clients.settings, resource=bucket.name):
        try:
            if region == "us-east-1":  # the one region that refuses a LocationConstraint
                await s3.create_bucket(Bucket=bucket.name)
            else:
                await s3.create_bucket(
                    Bucket=bucket.name,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        await s3.put_public_access_block(
            Bucket=bucket.name,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        await s3.put_bucket_encryption(
            Bucket=bucket.name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": bucket.sse_algorithm}}
                ]
            },
        )
        if bucket.versioned:
            await s3.put_bucket_versioning(
                Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"}
            )
        if bucket.expire_after_days is not None:
            await s3.put_bucket_lifecycle_configuration(
                Bucket=bucket.name,
                LifecycleConfiguration={
                    "Rules": [
                        {
                            "ID": "expire-payloads",
                            "Status": "Enabled",
                            "Filter": {"Prefix": ""},
                            "Expiration": {"Days": bucket.expire_after_days},
                        }
                    ]
                },
            )


async def _ensure_user(clients: AwsClients, user_name: str, policy: dict[str, object]) -> AccessKey:
    iam = await clients.iam()
    with aws_errors(clients.settings, resource=user_name):
        try:
            await iam.create_user(UserName=user_name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
                raise
        await iam.put_user_policy(
            UserName=user_name, PolicyName=user_name, PolicyDocument=json.dumps(policy)
        )
        # Re-provisioning issues a fresh key; old ones go (IAM allows two per user).
        for old in (await iam.list_access_keys(UserName=user_name))["AccessKeyMetadata"]:
            await iam.delete_access_key(UserName=user_name, AccessKeyId=old["AccessKeyId"])
        key = (await iam.create_access_key(UserName=user_name))["AccessKey"]
    return AccessKey(key["AccessKeyId"], key["SecretAccessKey"])
