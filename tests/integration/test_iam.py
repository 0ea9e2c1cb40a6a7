"""IAM is enforced: each service can do its job and is denied the rest."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from emulator import Stack
from shared.aws import AwsClients, aws_errors
from shared.errors import AccessDenied

pytestmark = pytest.mark.anyio

Call = Callable[[AwsClients, Stack], Awaitable[object]]


@dataclass(frozen=True)
class Case:
    description: str
    call: Call


def send(queue: Callable[[Stack], str]) -> Call:
    async def call(clients: AwsClients, stack: Stack) -> object:
        sqs = await clients.sqs()
        url = stack.provisioned.queue_urls[queue(stack)]
        return await sqs.send_message(QueueUrl=url, MessageBody="{}")

    return call


def receive(queue: Callable[[Stack], str]) -> Call:
    async def call(clients: AwsClients, stack: Stack) -> object:
        sqs = await clients.sqs()
        url = stack.provisioned.queue_urls[queue(stack)]
        return await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0, VisibilityTimeout=0)

    return call


def queue_url(queue: Callable[[Stack], str]) -> Call:
    async def call(clients: AwsClients, stack: Stack) -> object:
        return await (await clients.sqs()).get_queue_url(QueueName=queue(stack))

    return call


def put_object(bucket: Callable[[Stack], str]) -> Call:
    async def call(clients: AwsClients, stack: Stack) -> object:
        s3 = await clients.s3()
        return await s3.put_object(Bucket=bucket(stack), Key="iam-test/object", Body=b"x")

    return call


def get_object(bucket: Callable[[Stack], str], key: str) -> Call:
    async def call(clients: AwsClients, stack: Stack) -> object:
        response = await (await clients.s3()).get_object(Bucket=bucket(stack), Key=key)
        async with response["Body"] as body:  # release the connection
            return await body.read()

    return call


async def create_queue(clients: AwsClients, stack: Stack) -> object:
    return await (await clients.sqs()).create_queue(QueueName=f"{stack.topology.prefix}-rogue")


async def list_users(clients: AwsClients, stack: Stack) -> object:
    return await (await clients.iam()).list_users()


def infer_q(s: Stack) -> str:
    return s.topology.infer_queues[0].name


def infer_dlq(s: Stack) -> str:
    return s.topology.infer_queues[0].dlq_name


def results_q(s: Stack) -> str:
    return s.topology.results_queue.name


def notify_q(s: Stack) -> str:
    return s.topology.notify_queue.name


def payloads(s: Stack) -> str:
    return s.topology.payloads_bucket.name


def models(s: Stack) -> str:
    return s.topology.models_bucket.name


ALLOWED: dict[str, list[Case]] = {
    "ingest": [
        Case("enqueue a job", send(infer_q)),
        Case("resolve its queue", queue_url(infer_q)),
        Case("claim-check a payload", put_object(payloads)),
        Case("read whether a model is deployed", get_object(models, "iam-test/LATEST")),
    ],
    "infer": [
        Case("receive jobs", receive(infer_q)),
        Case("publish a result", send(results_q)),
        Case("read a payload", get_object(payloads, "iam-test/object")),
    ],
    "persist": [
        Case("receive results", receive(results_q)),
        Case("publish a notification", send(notify_q)),
    ],
    "notify": [
        Case("receive notifications", receive(notify_q)),
        Case("resolve its queue", queue_url(notify_q)),
    ],
}

DENIED: dict[str, list[Case]] = {
    "ingest": [
        Case("send to another service's queue", send(results_q)),
        Case("receive (it only publishes)", receive(infer_q)),
        Case("read a model", get_object(models, "any/manifest.json")),
        Case("read a model file", get_object(models, "iam-test/1/model.safetensors")),
        Case("read a LATEST-like key deeper down", get_object(models, "iam-test/1/LATEST.json")),
        Case("read a payload (it only writes them)", get_object(payloads, "iam-test/object")),
        Case("create a queue", create_queue),
    ],
    "infer": [
        Case("send to the notify queue", send(notify_q)),
        Case("receive from the results queue", receive(results_q)),
        Case("write into the models bucket", put_object(models)),
        Case("touch its DLQ", receive(infer_dlq)),
    ],
    "persist": [
        Case("send to an infer queue", send(infer_q)),
        Case("receive from the notify queue", receive(notify_q)),
        Case("write a payload", put_object(payloads)),
        Case("resolve another service's queue", queue_url(infer_q)),
    ],
    "notify": [
        Case("send to the results queue", send(results_q)),
        Case("send to its own queue (it only consumes)", send(notify_q)),
        Case("list IAM users", list_users),
        Case("write a payload", put_object(payloads)),
    ],
}


@pytest.fixture(scope="module", autouse=True)
async def payload_object(stack: Stack) -> None:
    async with AwsClients(stack.admin) as clients:
        s3 = await clients.s3()
        await s3.put_object(
            Bucket=stack.topology.payloads_bucket.name, Key="iam-test/object", Body=b"x"
        )
        models = stack.topology.models_bucket.name
        for key in ("iam-test/LATEST", "iam-test/1/model.safetensors", "iam-test/1/LATEST.json"):
            await s3.put_object(Bucket=models, Key=key, Body=b"1")


@pytest.mark.parametrize("service", sorted(ALLOWED))
async def test_service_can_do_its_job(stack: Stack, service: str) -> None:
    aws = stack.aws_settings(service)
    async with AwsClients(aws) as clients:
        for case in ALLOWED[service]:
            with aws_errors(aws):
                await case.call(clients, stack)


@pytest.mark.parametrize("service", sorted(DENIED))
async def test_service_is_denied_the_rest(stack: Stack, service: str) -> None:
    aws = stack.aws_settings(service)
    async with AwsClients(aws) as clients:
        for case in DENIED[service]:
            with pytest.raises(AccessDenied), aws_errors(aws):  # noqa: PT012 - one call, checked
                await case.call(clients, stack)
                pytest.fail(f"{service} was allowed to {case.description}")


async def test_unknown_key_is_refused(stack: Stack) -> None:
    from shared.config import AwsSettings

    forged = AwsSettings(
        endpoint_url=stack.endpoint.url,
        region=stack.endpoint.region,
        access_key_id="AKIAFORGEDFORGED0000",
        secret_access_key="forged",
    )
    async with AwsClients(forged) as clients:
        with pytest.raises(AccessDenied), aws_errors(forged):
            await send(infer_q)(clients, stack)
