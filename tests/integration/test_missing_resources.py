"""A missing queue or bucket explains itself: which resource, where, and how to create it."""

import json

import pytest

from emulator import Stack
from shared.aws import AwsClients, aws_errors, resolve_queue_url
from shared.errors import BucketNotFound, QueueNotFound
from shared.topology import Arns, Topology

pytestmark = pytest.mark.anyio


async def test_missing_queue_names_queue_and_fix(stack: Stack) -> None:
    aws = stack.admin
    async with AwsClients(aws) as clients:
        sqs = await clients.sqs()
        with pytest.raises(QueueNotFound) as info:
            await resolve_queue_url(sqs, aws, "conveyor-infer-not-provisioned")
    text = str(info.value)
    assert "'conveyor-infer-not-provisioned' does not exist" in text
    assert str(stack.endpoint.url) in text and stack.endpoint.region in text
    assert "conveyor provision" in text


async def test_service_allowed_a_missing_queue_learns_it_is_missing(stack: Stack) -> None:
    """As on AWS: a caller whose policy names the queue gets 'does not exist', not a denial."""
    model = "not-yet-deployed"
    wider = Topology(models=(*stack.topology.models, model))
    arns = Arns(stack.endpoint.region, stack.provisioned.account_id)
    user = stack.topology.user_name("ingest")
    async with AwsClients(stack.admin) as admin:
        iam = await admin.iam()
        original = (await iam.get_user_policy(UserName=user, PolicyName=user))["PolicyDocument"]
        await iam.put_user_policy(
            UserName=user,
            PolicyName=user,
            PolicyDocument=json.dumps(wider.policy_document("ingest", arns)),
        )
        try:
            aws = stack.aws_settings("ingest")
            async with AwsClients(aws) as clients:
                with pytest.raises(QueueNotFound, match=f"conveyor-infer-{model}"):
                    await resolve_queue_url(await clients.sqs(), aws, f"conveyor-infer-{model}")
        finally:
            await iam.put_user_policy(
                UserName=user, PolicyName=user, PolicyDocument=json.dumps(original)
            )


async def test_missing_bucket_names_bucket_and_fix(stack: Stack) -> None:
    aws = stack.admin
    async with AwsClients(aws) as clients:
        s3 = await clients.s3()
        with pytest.raises(BucketNotFound) as info, aws_errors(aws, resource="conveyor-nobucket"):
            await s3.get_object(Bucket="conveyor-nobucket", Key="x")
    assert "'conveyor-nobucket' does not exist" in str(info.value)
    assert "conveyor provision" in str(info.value)
