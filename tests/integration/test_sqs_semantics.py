"""SQS behaviour the services rely on, on the emulator with its fast clock installed."""

import json
from collections.abc import AsyncIterator

import anyio
import pytest

from emulator import Stack, moto_clock
from shared.aws import AwsClients
from shared.aws.provision import Provisioned, provision
from shared.topology import Topology

pytestmark = pytest.mark.anyio

DLQ_TOPOLOGY = Topology(prefix="dlqtest", max_receive_count=2)


@pytest.fixture(scope="module")
async def dlq_stack(stack: Stack) -> AsyncIterator[Provisioned]:
    """A second, small stack (its own prefix) in the same emulator, redriving after 2."""
    async with AwsClients(stack.admin) as clients:
        yield await provision(clients, DLQ_TOPOLOGY)


async def test_fast_clock_is_installed(stack: Stack) -> None:
    assert moto_clock.installed()


async def test_message_received_max_receive_count_times_moves_to_dlq(
    stack: Stack, dlq_stack: Provisioned
) -> None:
    queue = DLQ_TOPOLOGY.results_queue
    url, dlq_url = dlq_stack.queue_urls[queue.name], dlq_stack.queue_urls[queue.dlq_name]
    async with AwsClients(stack.admin) as clients:
        sqs = await clients.sqs()
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"poison": True}))
        receipts = 0
        for _ in range(queue.max_receive_count):
            got = await sqs.receive_message(
                QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=1, AttributeNames=["All"]
            )
            assert len(got.get("Messages", [])) == 1
            receipts += 1
        # The next receive finds the count exceeded: the message moves to the DLQ.
        after = await sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=0)
        assert after.get("Messages", []) == []
        dead = await sqs.receive_message(
            QueueUrl=dlq_url, WaitTimeSeconds=1, AttributeNames=["All"]
        )
        messages = dead.get("Messages", [])
        assert [json.loads(m["Body"]) for m in messages] == [{"poison": True}]
        assert int(messages[0]["Attributes"]["ApproximateReceiveCount"]) >= receipts


async def test_visibility_timeout_and_delay_still_hold(
    stack: Stack, dlq_stack: Provisioned
) -> None:
    """The rebound clock keeps the semantics: hidden messages reappear, delayed ones wait."""
    url = dlq_stack.queue_urls[DLQ_TOPOLOGY.notify_queue.name]
    async with AwsClients(stack.admin) as clients:
        sqs = await clients.sqs()
        await sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=1)
        assert (await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)).get("Messages") is None
        with anyio.fail_after(10):
            first = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, VisibilityTimeout=1)
        assert [m["Body"] for m in first["Messages"]] == ["delayed"]
        assert (await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)).get("Messages") is None
        with anyio.fail_after(10):
            again = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)
        assert [m["Body"] for m in again["Messages"]] == ["delayed"]
        await sqs.delete_message(QueueUrl=url, ReceiptHandle=again["Messages"][0]["ReceiptHandle"])
