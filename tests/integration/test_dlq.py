"""Dead-letter queue operations: depths, a sample that consumes nothing, redrive to the source.

The queues belong to a stack of their own (prefix ``dlqops``) that redrives after one delivery,
so messages reach a DLQ after two receives. moto lacks ``StartMessageMoveTask``, so redrive
falls back to receive, send and delete here.
"""

import datetime
import json
import re
import subprocess
import uuid
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from emulator import Stack
from emulator.harness import add_topology
from shared.aws import AwsClients
from shared.errors import TopologyError
from shared.messages import Envelope, MessageType, decode_envelope
from shared.sqs.dlq import (
    DECODABLE_REASON,
    RedriveMethod,
    RedriveResult,
    _await_move_task,
    dlq_depths,
    find_queue,
    not_implemented_reason,
    peek,
    redrive,
    resolve_dlq,
)
from shared.topology import Topology
from tests.conftest import PYTHON, REPO, subprocess_env
from tests.processes import run_module

pytestmark = pytest.mark.anyio

TOPOLOGY = Topology(prefix="dlqops", max_receive_count=1)
INFER_KEY = TOPOLOGY.infer_queues[0].key


@pytest.fixture(scope="module")
async def dlq_stack(stack: Stack) -> Stack:
    return await add_topology(stack, TOPOLOGY, seed=False)


def envelope() -> Envelope:
    return Envelope(
        type=MessageType.JOB_RESULT, job_id=uuid.uuid4(), tenant="t1", payload={"status": "x"}
    )


POISON = ["not json {", json.dumps({"schema_version": 99, "type": "job.result"})]


async def visible(sqs: Any, url: str) -> tuple[int, int]:
    attributes = (
        await sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def drive_to_dlq(sqs: Any, url: str, dlq_url: str, count: int) -> None:
    """Receive without deleting (visibility 0) until the redrive policy moved ``count``."""
    with anyio.fail_after(30):
        for _ in range(20):
            await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
            )
            if (await visible(sqs, dlq_url))[0] >= count:
                return
    raise AssertionError(f"fewer than {count} messages reached {dlq_url}")


async def drain(sqs: Any, url: str, count: int) -> list[Any]:
    """Receive ``count`` messages (held, then deleted) from ``url``."""
    got: dict[str, Any] = {}
    with anyio.fail_after(30):
        for _ in range(20):
            response = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=30,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            )
            for message in response.get("Messages", []):
                got[message["MessageId"]] = message
            if len(got) >= count:
                break
    for message in got.values():
        await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return list(got.values())


async def test_depths_peek_and_redrive(dlq_stack: Stack) -> None:
    good = [envelope() for _ in range(3)]
    bodies = [e.model_dump_json() for e in good] + POISON
    tagged = {"origin": {"DataType": "String", "StringValue": "dlq-test"}}
    async with AwsClients(dlq_stack.admin) as clients:
        sqs = await clients.sqs()
        target = await resolve_dlq(clients, TOPOLOGY, "results")
        assert target.spec == TOPOLOGY.results_queue
        assert target.dlq_arn.endswith(":dlqops-results-dlq")
        for index, body in enumerate(bodies):
            await sqs.send_message(
                QueueUrl=target.source_url,
                MessageBody=body,
                MessageAttributes=tagged if index == 0 else {},
            )
        await drive_to_dlq(sqs, target.source_url, target.dlq_url, len(bodies))

        depths = {d.key: d for d in await dlq_depths(clients, TOPOLOGY)}
        assert set(depths) == {q.key for q in TOPOLOGY.queues}
        assert depths["results"].dlq == "dlqops-results-dlq"
        assert (depths["results"].dlq_messages, depths["results"].source_messages) == (5, 0)

        sample = await peek(clients, target.dlq_url, limit=10)
        assert sorted(m.body for m in sample) == sorted(bodies)
        by_body = {m.body: m for m in sample}
        assert by_body[POISON[0]].reason.startswith("undecodable message")
        assert by_body[POISON[1]].reason == "unknown schema_version 99"
        assert by_body[POISON[1]].job_id is None
        for item in good:
            dead = by_body[item.model_dump_json()]
            assert dead.reason.startswith(DECODABLE_REASON)
            assert str(item.job_id) in dead.reason and "job.result" in dead.reason
            assert (dead.message_type, dead.job_id) == ("job.result", str(item.job_id))
        now = datetime.datetime.now(datetime.UTC)
        for dead in sample:
            assert dead.receive_count >= 2  # its delivery in the source, and this peek
            assert dead.sent_at is not None and dead.sent_at <= now
            assert dead.first_received_at is not None
            assert dead.body_size == len(dead.body.encode())
        # Nothing was consumed, and nothing is left hidden.
        assert await visible(sqs, target.dlq_url) == (5, 0)
        assert len(await peek(clients, target.dlq_url, limit=2)) == 2
        assert await visible(sqs, target.dlq_url) == (5, 0)

        moves = {
            "dlq_url": target.dlq_url,
            "source_url": target.source_url,
            "dlq_arn": target.dlq_arn,
        }
        first = await redrive(clients, **moves, max_messages=2, timeout_s=30)
        assert first.method is RedriveMethod.RECEIVE_SEND_DELETE
        assert (first.moved, first.failed, first.undeleted, first.complete) == (2, 0, 0, True)
        assert first.fallback_reason  # why the move task was not used is recorded
        assert await visible(sqs, target.dlq_url) == (3, 0)
        rest = await redrive(clients, **moves, max_messages=100, batch=2, timeout_s=30)
        assert (rest.method, rest.moved, rest.failed, rest.complete) == (
            RedriveMethod.RECEIVE_SEND_DELETE,
            3,
            0,
            True,
        )
        assert await visible(sqs, target.dlq_url) == (0, 0)
        assert await redrive(clients, **moves, max_messages=10, timeout_s=30) == RedriveResult(
            RedriveMethod.RECEIVE_SEND_DELETE, moved=0, fallback_reason=rest.fallback_reason
        )

        back = await drain(sqs, target.source_url, len(bodies))
        assert sorted(m["Body"] for m in back) == sorted(bodies)
        attributes = {m["Body"]: m.get("MessageAttributes") for m in back}
        assert attributes[bodies[0]] == tagged
        assert attributes[bodies[1]] is None
        decoded = {decode_envelope(m["Body"]).job_id for m in back if m["Body"] not in POISON}
        assert decoded == {e.job_id for e in good}


async def test_redrive_splits_batches_within_the_request_limit(dlq_stack: Stack) -> None:
    """Three 400 kB messages cannot share one 1 MiB SendMessageBatch: they go in two."""
    bodies = [letter * 400_000 for letter in "abc"]
    async with AwsClients(dlq_stack.admin) as clients:
        sqs = await clients.sqs()
        target = await resolve_dlq(clients, TOPOLOGY, "notify")
        for body in bodies:
            await sqs.send_message(QueueUrl=target.dlq_url, MessageBody=body)
        result = await redrive(
            clients,
            dlq_url=target.dlq_url,
            source_url=target.source_url,
            dlq_arn=target.dlq_arn,
            max_messages=10,
            timeout_s=30,
        )
        assert (result.moved, result.failed, result.undeleted) == (3, 0, 0)
        assert await visible(sqs, target.dlq_url) == (0, 0)
        back = await drain(sqs, target.source_url, len(bodies))
        assert sorted(m["Body"] for m in back) == bodies


async def test_redrive_refuses_bad_bounds(dlq_stack: Stack) -> None:
    async with AwsClients(dlq_stack.admin) as clients:
        target = await resolve_dlq(clients, TOPOLOGY, "notify")
        moves = {
            "dlq_url": target.dlq_url,
            "source_url": target.source_url,
            "dlq_arn": target.dlq_arn,
        }
        with pytest.raises(ValueError, match="max_messages"):
            await redrive(clients, **moves, max_messages=0)
        with pytest.raises(ValueError, match="batch"):
            await redrive(clients, **moves, max_messages=1, batch=11)
        with pytest.raises(ValueError, match="limit"):
            await peek(clients, target.dlq_url, limit=0)


def test_queues_are_found_by_logical_or_physical_name() -> None:
    results = TOPOLOGY.results_queue
    for name in ("results", "dlqops-results", "dlqops-results-dlq", "results-dlq"):
        assert find_queue(TOPOLOGY, name) == results
    assert find_queue(TOPOLOGY, INFER_KEY) == TOPOLOGY.infer_queues[0]
    assert find_queue(TOPOLOGY, "dlqops-notify") == TOPOLOGY.notify_queue
    with pytest.raises(TopologyError) as caught:
        find_queue(TOPOLOGY, "conveyor-results")
    message = str(caught.value)
    assert "'conveyor-results'" in message
    assert f"{INFER_KEY} (dlqops-{INFER_KEY})" in message
    assert "results (dlqops-results)" in message and "notify (dlqops-notify)" in message


def client_error(status: int, code: str, message: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "StartMessageMoveTask",
    )


MOTO_PAGE = "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (500, "500", MOTO_PAGE),  # what moto 5.2 answers
        (400, "InvalidAction", "The action StartMessageMoveTask is not valid"),
        (400, "UnsupportedOperation", "not supported"),
        (400, "400", "<ErrorResponse><Error><Code>NotImplemented</Code></Error></ErrorResponse>"),
        (501, "501", ""),
        (500, "InternalFailure", "The start_message_move_task action has not been implemented"),
    ],
)
def test_endpoints_without_the_move_task_are_recognised(
    status: int, code: str, message: str
) -> None:
    assert not_implemented_reason(client_error(status, code, message))


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "AccessDenied"), (500, "InternalError"), (400, "ResourceNotFoundException")],
)
def test_other_move_task_errors_are_not_mistaken_for_missing_support(
    status: int, code: str
) -> None:
    assert not_implemented_reason(client_error(status, code, "no")) is None


class MoveTasks:
    """ListMessageMoveTasks answers, in order (moto has no move tasks to follow)."""

    def __init__(self, *tasks: dict[str, Any]) -> None:
        self.tasks = list(tasks)

    async def list_message_move_tasks(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs == {"SourceArn": "arn:dlq", "MaxResults": 1}
        return {"Results": [self.tasks.pop(0)] if len(self.tasks) > 1 else self.tasks}


async def test_a_move_task_is_followed_until_it_ends(dlq_stack: Stack) -> None:
    running = {"Status": "RUNNING", "ApproximateNumberOfMessagesMoved": 2}
    done = {"Status": "COMPLETED", "ApproximateNumberOfMessagesMoved": 7}
    later = anyio.current_time() + 30
    sqs = MoveTasks(running, running, done)
    result = await _await_move_task(sqs, dlq_stack.admin, "arn:dlq", later, poll_s=0.01)  # type: ignore[arg-type]
    assert result == RedriveResult(RedriveMethod.MOVE_TASK, moved=7)

    failed = {
        "Status": "FAILED",
        "ApproximateNumberOfMessagesMoved": 3,
        "ApproximateNumberOfMessagesToMove": 5,
        "FailureReason": "AccessDenied on the destination",
    }
    result = await _await_move_task(MoveTasks(failed), dlq_stack.admin, "arn:dlq", later)  # type: ignore[arg-type]
    assert (result.moved, result.failed, result.complete) == (3, 2, False)
    assert result.error == "AccessDenied on the destination"

    past = anyio.current_time()
    result = await _await_move_task(MoveTasks(running), dlq_stack.admin, "arn:dlq", past)  # type: ignore[arg-type]
    assert (result.moved, result.failed, result.complete) == (2, 0, False)
    assert result.error is not None and "still running" in result.error


async def test_cli_lists_shows_and_redrives(dlq_stack: Stack) -> None:
    env = {**dlq_stack.common_env(), **dlq_stack.credential_env("admin")}
    bodies = ["garbage 1", envelope().model_dump_json()]
    async with AwsClients(dlq_stack.admin) as clients:
        sqs = await clients.sqs()
        target = await resolve_dlq(clients, TOPOLOGY, INFER_KEY)
        for body in bodies:
            await sqs.send_message(QueueUrl=target.source_url, MessageBody=body)
        await drive_to_dlq(sqs, target.source_url, target.dlq_url, len(bodies))

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await anyio.to_thread.run_sync(run_module, ["conveyor.cli.dlq", *args], env)

    listed = await cli("list")
    assert listed.returncode == 0, listed.stderr
    row = re.search(rf"{target.spec.dlq_name}\W+(\d+)\W+(\d+)\W+(\d+)", listed.stdout)
    assert row is not None, listed.stdout
    assert row.groups() == ("2", "0", "0")
    assert "dlqops-results-dlq" in listed.stdout and "dlqops-notify-dlq" in listed.stdout

    shown = await cli("show", INFER_KEY, "--limit", "5")
    assert shown.returncode == 0, shown.stderr
    assert "undecodable message" in shown.stdout
    assert DECODABLE_REASON in shown.stdout

    # Without --yes it asks; a "no" moves nothing.
    declined = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [PYTHON, "-m", "conveyor.cli.dlq", "redrive", target.spec.name],
            env=subprocess_env(env),
            cwd=REPO,
            input="n\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert declined.returncode == 1
    assert "move up to 2 of the 2 message(s)" in declined.stdout
    async with AwsClients(dlq_stack.admin) as clients:
        assert await visible(await clients.sqs(), target.dlq_url) == (2, 0)

    moved = await cli("redrive", target.spec.name, "--yes", "--max", "10")
    assert moved.returncode == 0, moved.stderr
    assert (
        f"moved 2 message(s) from {target.spec.dlq_name} to {target.spec.name} "
        "(receive-send-delete); failed 0"
    ) in moved.stdout
    assert "StartMessageMoveTask not used" in moved.stdout

    again = await cli("redrive", INFER_KEY, "--yes")
    assert again.returncode == 0, again.stderr
    assert "nothing to redrive" in again.stdout

    unknown = await cli("show", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: no queue 'nope'")
    assert f"known queues: {INFER_KEY} (dlqops-{INFER_KEY})" in unknown.stderr

    async with AwsClients(dlq_stack.admin) as clients:
        sqs = await clients.sqs()
        back = await drain(sqs, target.source_url, len(bodies))
    assert sorted(m["Body"] for m in back) == sorted(bodies)
