"""The emulator and the cloud run the same topology: the rendered CloudFormation template,
deployed into the emulator's own CloudFormation (moto), makes what `conveyor provision` makes.

Two stacks side by side on the session's emulator (IAM enforced): ``parity-cfn`` from the
template, ``parity-api`` from :func:`shared.aws.provision.provision` (what `conveyor provision`
and the emulator run, with the emulator's per-service IAM users). Compared, with the prefix
taken out: every queue and DLQ with its attributes and redrive policy, every bucket's
encryption, versioning, public access block and lifecycle, every service's policy document.
Then the roles the template made are used: each may do what the emulator lets its service's
user do, and is denied the rest.

Where moto does not do what AWS does, the test says so and checks the template instead:

- moto's CloudFormation has no ``AWS::S3::BucketPolicy`` (the TLS-only policy) and no
  ``AWS::EKS::PodIdentityAssociation``: those resources are left out of the deployment and
  checked in the template (tests/deploy/test_cloudformation.py);
- moto's ``AWS::S3::Bucket`` applies only BucketEncryption and Tags, ignoring
  PublicAccessBlockConfiguration, VersioningConfiguration and LifecycleConfiguration: the
  template's properties are compared with what provisioning applied;
- moto keeps a queue's RedriveAllowPolicy but never reports it: the template's is compared
  with the topology's;
- moto stores a role's inline policy from CloudFormation as a Python dict (its authorizer then
  fails on it) and cannot act as EKS Pod Identity (its trust check fails on a Service
  principal): to use the roles, the test puts back the very documents moto read from the
  template as JSON, and lets the administrator assume the roles.
"""

from __future__ import annotations

import ast
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import boto3
import pytest
from botocore.exceptions import ClientError

from emulator import Stack
from shared.aws import AwsClients
from shared.aws.provision import provision
from shared.render import render_cloudformation
from shared.render.names import scaler_role_name
from shared.topology import OBSERVER, SERVICES, Topology

pytestmark = pytest.mark.anyio

CFN, API = Topology(prefix="parity-cfn"), Topology(prefix="parity-api")
STACK_NAME = "parity-cfn"
MOTO_LACKS = {"AWS::S3::BucketPolicy", "AWS::EKS::PodIdentityAssociation"}
VOLATILE = {
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesDelayed",
    "ApproximateNumberOfMessagesNotVisible",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
}


def _client(stack: Stack, name: str, **credentials: str) -> Any:
    admin = stack.admin
    return boto3.client(  # type: ignore[call-overload]
        name,
        endpoint_url=admin.endpoint_url,
        region_name=admin.region,
        aws_access_key_id=credentials.get("key", admin.access_key_id),
        aws_secret_access_key=credentials.get("secret", admin.secret_access_key),
        aws_session_token=credentials.get("token"),
    )


def _template() -> dict[str, Any]:
    template = render_cloudformation(CFN)
    template["Resources"] = {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] not in MOTO_LACKS
    }
    return template


def _queues(stack: Stack, topology: Topology) -> dict[str, dict[str, Any]]:
    """Logical name (prefix taken out) -> attributes, the redrive policy parsed."""
    sqs = _client(stack, "sqs")
    found = {}
    for url in sqs.list_queues(QueueNamePrefix=f"{topology.prefix}-").get("QueueUrls", []):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        attributes = {k: v for k, v in attributes.items() if k not in VOLATILE}
        if "RedrivePolicy" in attributes:
            policy = json.loads(attributes["RedrivePolicy"])
            policy["deadLetterTargetArn"] = _unprefixed(policy["deadLetterTargetArn"], topology)
            policy["maxReceiveCount"] = int(policy["maxReceiveCount"])
            attributes["RedrivePolicy"] = policy
        found[_unprefixed(url.rsplit("/", 1)[-1], topology)] = attributes
    return found


def _unprefixed(text: str, topology: Topology) -> str:
    return text.replace(f"{topology.prefix}-", "<prefix>-")


def _bucket(stack: Stack, name: str) -> dict[str, Any]:
    s3 = _client(stack, "s3")

    def read(call: str, key: str) -> Any:
        try:
            return getattr(s3, call)(Bucket=name).get(key)
        except ClientError as exc:
            if exc.response["Error"]["Code"].startswith("NoSuch"):
                return None
            raise

    return {
        "encryption": read("get_bucket_encryption", "ServerSideEncryptionConfiguration"),
        "versioning": read("get_bucket_versioning", "Status"),
        "public_access_block": read("get_public_access_block", "PublicAccessBlockConfiguration"),
        "lifecycle": read("get_bucket_lifecycle_configuration", "Rules"),
    }


def _document(raw: Any) -> dict[str, Any]:
    """A policy document as moto hands it back: a dict, JSON, or (from CloudFormation) the
    repr of a dict."""
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw)  # type: ignore[no-any-return]
    except json.JSONDecodeError:
        return ast.literal_eval(raw)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def deployed(stack: Stack) -> AsyncIterator[Stack]:
    async with AwsClients(stack.admin) as clients:
        await provision(clients, API, iam_users=True)

    def create() -> None:
        cfn = _client(stack, "cloudformation")
        cfn.create_stack(
            StackName=STACK_NAME,
            TemplateBody=json.dumps(_template()),
            Capabilities=["CAPABILITY_NAMED_IAM"],
            Parameters=[
                {"ParameterKey": "DatabaseEndpoint", "ParameterValue": "db.example.com:5432"},
                {"ParameterKey": "EksClusterName", "ParameterValue": "parity"},
            ],
        )
        status = cfn.describe_stacks(StackName=STACK_NAME)["Stacks"][0]
        assert status["StackStatus"] == "CREATE_COMPLETE", status.get("StackStatusReason")

    await anyio.to_thread.run_sync(create)
    try:
        yield stack
    finally:
        await anyio.to_thread.run_sync(_remove, stack)


def _remove(stack: Stack) -> None:
    """Leave the session's emulator as it was: both stacks' queues, buckets and identities."""
    with_errors_ignored = (ClientError,)
    with contextlib.suppress(*with_errors_ignored):
        _client(stack, "cloudformation").delete_stack(StackName=STACK_NAME)
    sqs, s3, iam = _client(stack, "sqs"), _client(stack, "s3"), _client(stack, "iam")
    for topology in (CFN, API):
        for url in sqs.list_queues(QueueNamePrefix=f"{topology.prefix}-").get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)
        for bucket in topology.buckets:
            try:
                for version in s3.list_object_versions(Bucket=bucket.name).get("Versions", []):
                    s3.delete_object(
                        Bucket=bucket.name, Key=version["Key"], VersionId=version["VersionId"]
                    )
                s3.delete_bucket(Bucket=bucket.name)
            except with_errors_ignored:
                pass
    for service in (*SERVICES, OBSERVER):
        user = API.user_name(service)
        try:
            for key in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
                iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
            iam.delete_user_policy(UserName=user, PolicyName=user)
            iam.delete_user(UserName=user)
        except with_errors_ignored:
            pass
    for role in [*(CFN.user_name(s) for s in SERVICES), scaler_role_name(CFN)]:
        try:
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                iam.delete_role_policy(RoleName=role, PolicyName=name)
            for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=role, PolicyArn=attached["PolicyArn"])
            iam.delete_role(RoleName=role)
        except with_errors_ignored:
            pass
    for policy in iam.list_policies(Scope="Local")["Policies"]:
        if policy["PolicyName"].startswith(f"{CFN.prefix}-"):
            with contextlib.suppress(*with_errors_ignored):
                iam.delete_policy(PolicyArn=policy["Arn"])


async def test_queues_and_redrive_policies_match(deployed: Stack) -> None:
    from_template, provisioned = await anyio.to_thread.run_sync(
        lambda: (_queues(deployed, CFN), _queues(deployed, API))
    )
    assert len(provisioned) == 2 * len(API.queues)
    assert from_template == provisioned
    for spec in CFN.queues:
        queue = from_template[_unprefixed(spec.name, CFN)]
        assert queue["RedrivePolicy"] == {
            "deadLetterTargetArn": _unprefixed(
                f"arn:aws:sqs:{deployed.endpoint.region}:{deployed.provisioned.account_id}:"
                f"{spec.dlq_name}",
                CFN,
            ),
            "maxReceiveCount": spec.max_receive_count,
        }
        assert queue["SqsManagedSseEnabled"] == "true"


def test_redrive_allow_policies_match_in_the_template() -> None:
    """moto never reports RedriveAllowPolicy: the template's is the topology's."""
    resources = render_cloudformation(CFN)["Resources"]
    dlqs = {
        r["Properties"]["QueueName"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::SQS::Queue"
    }
    for spec in CFN.queues:
        sent = json.loads(spec.dlq_attributes("<source>")["RedriveAllowPolicy"])
        rendered = dlqs[spec.dlq_name]["RedriveAllowPolicy"]
        assert rendered["redrivePermission"] == sent["redrivePermission"] == "byQueue"
        (source,) = rendered["sourceQueueArns"]
        assert source["Fn::Sub"].endswith(f":{spec.name}")


async def test_buckets_match(deployed: Stack) -> None:
    resources = render_cloudformation(CFN)["Resources"]
    for cfn_bucket, api_bucket in zip(CFN.buckets, API.buckets, strict=True):
        from_template, provisioned = await anyio.to_thread.run_sync(
            lambda c=cfn_bucket, a=api_bucket: (
                _bucket(deployed, c.name),
                _bucket(deployed, a.name),
            )
        )
        # Applied by moto from the template: compared as deployed.
        assert from_template["encryption"] == provisioned["encryption"]
        assert provisioned["encryption"]["Rules"][0]["ApplyServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "AES256"
        }
        # Ignored by moto's CloudFormation: the template against what provisioning applied.
        properties = resources[f"{cfn_bucket.key.capitalize()}Bucket"]["Properties"]
        assert properties["PublicAccessBlockConfiguration"] == provisioned["public_access_block"]
        assert (
            properties.get("VersioningConfiguration", {}).get("Status")
            == (provisioned["versioning"])
        )
        expiry = [
            r["ExpirationInDays"]
            for r in properties.get("LifecycleConfiguration", {}).get("Rules", [])
        ]
        assert expiry == [r["Expiration"]["Days"] for r in provisioned["lifecycle"] or []]
    assert [b.versioned for b in CFN.buckets] == [False, True]  # models only


async def test_role_policies_are_the_emulator_users_policies(deployed: Stack) -> None:
    def read() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        iam = _client(deployed, "iam")
        pairs = {}
        for service in SERVICES:
            role, user = CFN.user_name(service), API.user_name(service)
            (name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
            assert name == role
            from_template = _document(
                iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            )
            enforced = iam.get_user_policy(UserName=user, PolicyName=user)["PolicyDocument"]
            pairs[service] = (from_template, _document(enforced))
        return pairs

    def read_observer() -> tuple[dict[str, Any], dict[str, Any]]:
        iam = _client(deployed, "iam")
        (policy,) = [
            p
            for p in iam.list_policies(Scope="Local")["Policies"]
            if p["PolicyName"] == CFN.user_name(OBSERVER)
        ]
        version = iam.get_policy_version(
            PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"]
        )["PolicyVersion"]["Document"]
        user = API.user_name(OBSERVER)
        enforced = iam.get_user_policy(UserName=user, PolicyName=user)["PolicyDocument"]
        return _document(version), _document(enforced)

    pairs = await anyio.to_thread.run_sync(read)
    pairs[OBSERVER] = await anyio.to_thread.run_sync(read_observer)
    for service, (from_template, enforced) in pairs.items():
        assert json.loads(_unprefixed(json.dumps(from_template), CFN)) == json.loads(
            _unprefixed(json.dumps(enforced), API)
        ), service


def _assume(stack: Stack, role: str) -> dict[str, str]:
    """Credentials of ``role``, for the test's sake (see the module's docstring)."""
    iam, sts = _client(stack, "iam"), _client(stack, "sts")
    admin = sts.get_caller_identity()["Arn"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": admin}, "Action": "sts:AssumeRole"}],
    }
    iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = _document(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))
    arn = iam.get_role(RoleName=role)["Role"]["Arn"]
    credentials = sts.assume_role(RoleArn=arn, RoleSessionName="parity")["Credentials"]
    return {
        "key": credentials["AccessKeyId"],
        "secret": credentials["SecretAccessKey"],
        "token": credentials["SessionToken"],
    }


def _outcome(call: Any) -> str:
    try:
        call()
    except ClientError as exc:
        code = str(exc.response["Error"]["Code"])
        return "denied" if code in ("AccessDenied", "AccessDeniedException", "403") else code
    return "allowed"


async def test_the_roles_may_do_their_work_and_nothing_else(deployed: Stack) -> None:
    def exercise() -> dict[tuple[str, str, str], str]:
        sqs = _client(deployed, "sqs")
        url = {q.key: sqs.get_queue_url(QueueName=q.name)["QueueUrl"] for q in CFN.queues}
        infer = f"infer-{CFN.models[0]}"
        outcomes = {}
        ingest = _client(deployed, "sqs", **_assume(deployed, CFN.user_name("ingest")))
        outcomes["ingest", "send", infer] = _outcome(
            lambda: ingest.send_message(QueueUrl=url[infer], MessageBody="{}")
        )
        outcomes["ingest", "receive", infer] = _outcome(
            lambda: ingest.receive_message(QueueUrl=url[infer], WaitTimeSeconds=0)
        )
        outcomes["ingest", "send", "results"] = _outcome(
            lambda: ingest.send_message(QueueUrl=url["results"], MessageBody="{}")
        )
        keda = _client(deployed, "sqs", **_assume(deployed, scaler_role_name(CFN)))
        for key, queue in url.items():
            outcomes["keda", "depth", key] = _outcome(
                lambda q=queue: keda.get_queue_attributes(
                    QueueUrl=q, AttributeNames=["ApproximateNumberOfMessages"]
                )
            )
        outcomes["keda", "receive", infer] = _outcome(
            lambda: keda.receive_message(QueueUrl=url[infer], WaitTimeSeconds=0)
        )
        sqs.purge_queue(QueueUrl=url[infer])
        return outcomes

    outcomes = await anyio.to_thread.run_sync(exercise)
    infer = f"infer-{CFN.models[0]}"
    assert outcomes == {
        ("ingest", "send", infer): "allowed",
        ("ingest", "receive", infer): "denied",
        ("ingest", "send", "results"): "denied",
        **{("keda", "depth", q.key): "allowed" for q in CFN.queues},
        ("keda", "receive", infer): "denied",
    }
