"""The SQS runtime on the emulator: batching, per-message failure, poison, shutdown, heartbeat."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest
from structlog.testing import capture_logs

from emulator import Stack
from shared.aws import AwsClients
from shared.messages import PoisonMessage
from shared.sqs import Publisher, ReceivedMessage, RetryPolicy, SqsConsumer

pytestmark = pytest.mark.anyio


@dataclass
class ScratchQueue:
    url: str
    dlq_url: str
    clients: AwsClients


@pytest.fixture
async def queue(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[ScratchQueue]:
    """A fresh queue (with a DLQ after 2 receives) per test; visibility from the marker."""
    marker = request.node.get_closest_marker("visibility")
    visibility = str(marker.args[0]) if marker else "30"
    name = f"rt-{uuid.uuid4().hex[:10]}"
    async with AwsClients(stack.admin) as clients:
        sqs = await clients.sqs()
        dlq_url = (await sqs.create_queue(QueueName=f"{name}-dlq"))["QueueUrl"]
        dlq_arn = f"arn:aws:sqs:{stack.endpoint.region}:{stack.provisioned.account_id}:{name}-dlq"
        url = (
            await sqs.create_queue(
                QueueName=name,
                Attributes={
                    "VisibilityTimeout": visibility,
                    "RedrivePolicy": json.dumps(
                        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}
                    ),
                },
            )
        )["QueueUrl"]
        yield ScratchQueue(url, dlq_url, clients)
        await sqs.delete_queue(QueueUrl=url)
        await sqs.delete_queue(QueueUrl=dlq_url)


async def depth(q: ScratchQueue, url: str | None = None) -> int:
    sqs = await q.clients.sqs()
    attributes = (
        await sqs.get_queue_attributes(
            QueueUrl=url or q.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


async def publish(q: ScratchQueue, bodies: list[str]) -> Publisher:
    sqs = await q.clients.sqs()
    publisher = Publisher(sqs, q.clients.settings, q.url)
    async with anyio.create_task_group() as tg:
        publisher.start(tg)
        async with anyio.create_task_group() as senders:
            for body in bodies:
                senders.start_soon(publisher.publish, body)
        tg.cancel_scope.cancel()
    return publisher


async def consumer(q: ScratchQueue, handler: object, **kwargs: object) -> SqsConsumer:
    options: dict[str, object] = {"name": "test", "concurrency": 4, "wait_s": 1, "grace_s": 5}
    options.update(kwargs)
    return SqsConsumer(
        await q.clients.sqs(),
        q.clients.settings,
        q.url,
        handler,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


async def run_until(c: SqsConsumer, done: anyio.Event, timeout: float = 20) -> None:
    stopping = anyio.Event()
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            await tg.start(c.run, stopping)
            await done.wait()
            stopping.set()


async def test_publisher_batches_concurrent_sends(queue: ScratchQueue) -> None:
    publisher = await publish(queue, [f"m{i}" for i in range(25)])
    assert await depth(queue) == 25
    stats = publisher._batcher.stats
    assert stats.items == 25
    assert stats.batches < 25
    assert stats.largest <= 10


async def test_publisher_refuses_oversized_message(queue: ScratchQueue) -> None:
    sqs = await queue.clients.sqs()
    publisher = Publisher(sqs, queue.clients.settings, queue.url)
    with pytest.raises(ValueError, match="claim-check"):
        await publisher.publish("x" * (1024 * 1024 + 1))


async def test_messages_are_deleted_after_the_handler(queue: ScratchQueue) -> None:
    await publish(queue, [f"m{i}" for i in range(12)])
    seen: list[str] = []
    done = anyio.Event()

    async def handler(message: ReceivedMessage) -> None:
        seen.append(message.body)
        if len(seen) == 12:
            done.set()

    c = await consumer(queue, handler)
    await run_until(c, done)
    assert sorted(seen) == sorted(f"m{i}" for i in range(12))
    assert c.stats.succeeded == 12
    assert await depth(queue) == 0


async def test_one_failure_does_not_fail_the_batch(queue: ScratchQueue) -> None:
    await publish(queue, ["ok-1", "bad", "ok-2", "ok-3"])
    attempts: dict[str, int] = {}
    done = anyio.Event()

    async def handler(message: ReceivedMessage) -> None:
        attempts[message.body] = attempts.get(message.body, 0) + 1
        if message.body == "bad" and attempts["bad"] == 1:
            raise RuntimeError("transient")
        if len(attempts) == 4 and attempts["bad"] == 2:
            done.set()

    c = await consumer(queue, handler, retry=RetryPolicy(initial_s=1, maximum_s=1))
    await run_until(c, done)
    assert attempts == {"ok-1": 1, "bad": 2, "ok-2": 1, "ok-3": 1}
    assert c.stats.retried == 1
    assert c.stats.succeeded == 4


async def test_poison_goes_to_the_dlq_logged_once_and_the_worker_goes_on(
    queue: ScratchQueue,
) -> None:
    await publish(queue, ["poison"])
    served = anyio.Event()

    async def handler(message: ReceivedMessage) -> None:
        if message.body == "poison":
            raise PoisonMessage("undecodable")
        served.set()

    c = await consumer(queue, handler)
    with capture_logs() as logs:
        stopping = anyio.Event()
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(c.run, stopping)
                while await depth(queue, queue.dlq_url) == 0:
                    await anyio.sleep(0.1)
                await publish(queue, ["healthy"])
                await served.wait()
                stopping.set()
    poison_logs = [entry for entry in logs if "poison" in entry["event"]]
    assert len(poison_logs) == 1
    assert await depth(queue) == 0
    assert await depth(queue, queue.dlq_url) == 1
    assert c.stats.succeeded == 1


async def test_shutdown_gives_back_unstarted_and_unfinished_messages(queue: ScratchQueue) -> None:
    await publish(queue, [f"m{i}" for i in range(8)])
    started = 0
    all_started = anyio.Event()
    never = anyio.Event()

    async def handler(message: ReceivedMessage) -> None:
        nonlocal started
        started += 1
        if started == 2:
            all_started.set()
        await never.wait()  # a handler that would run past the grace period

    c = await consumer(queue, handler, concurrency=2, grace_s=0.5)
    stopping = anyio.Event()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(c.run, stopping)
            await all_started.wait()
            began = anyio.current_time()
            stopping.set()
        stopped_in = anyio.current_time() - began
    assert stopped_in < 0.5 + c.wait_s + 1
    assert c.stats.received == c.stats.given_back
    assert c.stats.succeeded == 0
    # Everything is visible again at once: nothing waits out a visibility timeout.
    sqs = await queue.clients.sqs()
    bodies: set[str] = set()
    with anyio.fail_after(10):
        while len(bodies) < 8:
            got = await sqs.receive_message(
                QueueUrl=queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            bodies |= {m["Body"] for m in got.get("Messages", [])}
    assert bodies == {f"m{i}" for i in range(8)}


@pytest.mark.visibility(2)
async def test_heartbeat_keeps_a_long_job_invisible(queue: ScratchQueue) -> None:
    await publish(queue, ["long"])
    deliveries = 0
    done = anyio.Event()

    async def handler(message: ReceivedMessage) -> None:
        nonlocal deliveries
        deliveries += 1
        await anyio.sleep(5)  # 2.5 times the queue's visibility timeout
        done.set()

    c = await consumer(queue, handler)
    await run_until(c, done)
    assert deliveries == 1
    assert c.stats.succeeded == 1
    assert await depth(queue) == 0


async def test_the_receive_loop_is_watched_while_it_runs_and_forgotten_when_it_stops(
    queue: ScratchQueue,
) -> None:
    """What /healthz on a worker's metrics port reads (shared.liveness)."""
    from shared.liveness import LIVENESS

    loop = f"liveness-test {queue.url.rsplit('/', 1)[-1]}"
    watched: list[bool] = []
    done = anyio.Event()

    async def handler(message: ReceivedMessage) -> None:
        watched.append(loop in LIVENESS.stale(after_s=-1))  # every registered loop
        done.set()

    await publish(queue, ["one"])
    c = await consumer(queue, handler, name="liveness-test")
    await run_until(c, done)
    assert watched == [True]
    assert loop not in LIVENESS.stale(after_s=-1)
