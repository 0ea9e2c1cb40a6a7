"""moto's answers are unchanged by emulator.moto_speed, and the per-message costs are gone."""

import json
import string
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import moto.backends
import moto.sqs.models
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
    assert moto.sqs.models.generate_receipt_handle is moto_speed.generate_receipt_handle


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


def walked(queue: Queue) -> set[str]:
    """moto's own ``Queue.pending_message_groups``, kept by the patch."""
    original: Any = Queue.__dict__["_walked_pending_message_groups"]
    return set(original.fget(queue))


def test_pending_groups_are_motos_and_a_standard_queue_has_none(sqs: SQSBackend) -> None:
    fifo = sqs.create_queue("groups.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    plain = sqs.create_queue("no-groups")
    for group in ("a", "a", "b", "c"):
        sqs.send_message(fifo.name, f"in {group} {id(group)}", group_id=group, delay_seconds=0)
        sqs.send_message(plain.name, f"plain {group}", delay_seconds=0)
    # FIFO: one message per group is handed out while its group is pending.
    assert len(sqs.receive_message(fifo.name, 10, 0, 30)) == 3
    assert len(sqs.receive_message(fifo.name, 10, 0, 30)) == 0  # "a" is still pending
    assert fifo.pending_message_groups == walked(fifo) == {"a", "b", "c"}
    assert len(sqs.receive_message(plain.name, 10, 0, 30)) == 4
    assert len(plain.pending_messages) == 4
    assert plain.pending_message_groups == walked(plain) == set()


def test_pending_groups_survive_a_concurrent_change(sqs: SQSBackend) -> None:
    """Another server thread adds and removes in-flight messages while a receive walks them:
    moto's walk raised 'Set changed size during iteration'. Both walks run against a thread
    that changes the set, with thread switches forced as often as the interpreter allows."""
    fifo = sqs.create_queue("busy.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    for i in range(400):
        sqs.send_message(fifo.name, f"m{i}", group_id=f"g{i}", delay_seconds=0)
    sqs.receive_message(fifo.name, 10, 0, 30)
    others = list(fifo.messages)[100:300]
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for message in others:
                fifo.pending_messages.add(message)
            for message in others:
                fifo.pending_messages.discard(message)

    def failures(walk: Callable[[], object]) -> int:
        failed = 0
        for _ in range(300):
            try:
                walk()
            except RuntimeError:
                failed += 1
        return failed

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    changer = threading.Thread(target=churn, daemon=True)
    changer.start()
    try:
        patched = failures(lambda: fifo.pending_message_groups)
        original = failures(lambda: walked(fifo))
    finally:
        stop.set()
        changer.join(timeout=5)
        sys.setswitchinterval(interval)
    # moto's own walk fails in some runs of this test, not all: the race is the scheduler's.
    assert patched == 0, f"{patched} of 300 walks failed (moto's own: {original})"


def test_receipt_handles_have_motos_shape_and_follow_its_seed(sqs: SQSBackend) -> None:
    from moto.moto_api._internal import mock_random
    from moto.sqs.utils import generate_receipt_handle as motos

    sqs.create_queue("handles")
    for i in range(3):
        sqs.send_message("handles", f"m{i}", delay_seconds=0)
    handles = [m.receipt_handle for m in sqs.receive_message("handles", 10, 0, 30)]
    assert len(set(handles)) == 3
    for handle in [*handles, motos()]:
        assert len(handle) == moto_speed.RECEIPT_HANDLE_LENGTH
        assert set(handle) <= set(string.ascii_lowercase)
    mock_random.seed(7)
    first = moto_speed.generate_receipt_handle()
    mock_random.seed(7)
    assert moto_speed.generate_receipt_handle() == first
