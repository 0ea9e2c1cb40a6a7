"""moto's answers are unchanged by emulator.moto_speed, and the per-message costs are gone."""

import json
from collections.abc import Iterator
from typing import Any

import moto.backends
import pytest
from moto import mock_aws
from moto.sqs.models import Queue, SQSBackend, sqs_backends

from emulator import moto_speed

ACCOUNT = "123456789012"
REGION = "us-east-1"


@pytest.fixture
def sqs() -> Iterator[SQSBackend]:
    moto_speed.install()
    with mock_aws():
        yield sqs_backends[ACCOUNT][REGION]


def eager(queue: Queue) -> dict[str, Any]:
    """moto's own ``Queue.attributes``, kept by the patch."""
    original: Any = Queue.__dict__["_eager_attributes"]
    return dict(original.fget(queue))


def test_install_is_idempotent() -> None:
    moto_speed.install()
    moto_speed.install()
    assert moto_speed.installed()
    assert moto.backends.list_of_moto_modules.__wrapped__ is not None  # type: ignore[attr-defined]


def test_the_module_list_is_motos() -> None:
    moto_speed.install()
    original: Any = moto.backends.list_of_moto_modules.__wrapped__  # type: ignore[attr-defined]
    assert list(moto.backends.list_of_moto_modules()) == list(original())
    assert "sqs" in moto.backends.list_of_moto_modules()


def test_queue_attributes_are_motos_in_every_shape(sqs: SQSBackend) -> None:
    dlq = sqs.create_queue("dead")
    queues = [
        sqs.create_queue("plain"),
        sqs.create_queue(
            "redriven",
            RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq.queue_arn, "maxReceiveCount": 3}),
            Policy=json.dumps({"Version": "2012-10-17", "Statement": []}),
            VisibilityTimeout="45",
        ),
        sqs.create_queue("ordered.fifo", FifoQueue="true", ContentBasedDeduplication="true"),
        sqs.create_queue("sealed", KmsMasterKeyId="alias/aws/sqs"),
    ]
    for queue in queues:
        sqs.send_message(
            queue.name, "a body", group_id="g" if queue.fifo_queue else None, delay_seconds=0
        )
        lazy = queue.attributes
        assert isinstance(lazy, moto_speed.QueueAttributes)
        assert list(lazy.items()) == list(eager(queue).items()), queue.name
        assert lazy.get("NoSuchAttribute") is None
    assert queues[0].attributes["ApproximateNumberOfMessages"] == 1
    assert queues[1].attributes["RedrivePolicy"] == json.dumps(queues[1].redrive_policy)
    assert queues[2].attributes["FifoQueue"] == "true"
    # What the API answers goes through the same mapping.
    answered = sqs.get_queue_attributes("redriven", ["All"])
    assert dict(answered) == eager(queues[1])


def test_sending_and_receiving_do_not_count_the_queue(
    sqs: SQSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts walk every message: reading them per message made a receive quadratic."""
    queue = sqs.create_queue("busy")
    for i in range(20):
        sqs.send_message("busy", f"message {i}", delay_seconds=0)
    counted: list[str] = []
    original = Queue.approximate_number_of_messages

    def counting(self: Queue) -> int:
        counted.append(self.name)
        return int(original.fget(self))  # type: ignore[attr-defined]

    monkeypatch.setattr(Queue, "approximate_number_of_messages", property(counting))
    for i in range(5):
        sqs.send_message("busy", f"more {i}", delay_seconds=0)
    received = sqs.receive_message("busy", 10, 0, 30)
    assert len(received) == 10
    assert counted == []
    # The figure is still there for whoever asks for it.
    assert sqs.get_queue_attributes("busy", ["ApproximateNumberOfMessages"]) == {
        "ApproximateNumberOfMessages": 15
    }
    assert set(counted) == {"busy"}
    assert queue.attributes["ApproximateNumberOfMessagesNotVisible"] == 10
