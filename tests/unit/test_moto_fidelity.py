"""emulator.moto_fidelity: moto's SQS keeps what AWS keeps when requests overlap."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from moto.sqs.models import Message, Queue, SQSBackend, sqs_backends

from emulator import moto_fidelity

ACCOUNT = "123456789012"
REGION = "us-east-1"


@pytest.fixture
def sqs() -> Iterator[SQSBackend]:
    moto_fidelity.install()
    with mock_aws():
        yield sqs_backends[ACCOUNT][REGION]


class OwnedLock:
    """A queue's lock (a Condition) that tells which thread holds it."""

    def __init__(self, condition: Any) -> None:
        self._condition = condition
        self.owner: threading.Thread | None = None

    def __enter__(self) -> OwnedLock:
        self._condition.__enter__()
        self.owner = threading.current_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner = None
        self._condition.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._condition, name)


def test_a_message_sent_while_another_is_deleted_is_kept(sqs: SQSBackend) -> None:
    """The delete is held where moto puts its copy of the queue's messages in place, and a send
    runs on another thread meanwhile, as two requests on two server threads can: the sent
    message stays."""
    queue = sqs.create_queue("overlap")
    sqs.send_message("overlap", "deleted")
    sqs.send_message("overlap", "kept")
    (received,) = sqs.receive_message("overlap", 1, 0, 30)
    entered, release = threading.Event(), threading.Event()

    def delete() -> None:
        sqs.delete_message("overlap", received.receipt_handle)

    deleter = threading.Thread(target=delete)

    class HeldQueue(Queue):
        """Holds the deleting thread as it replaces the message list."""

        @property
        def _messages(self) -> list[Message]:
            return self.__dict__["_held_messages"]  # type: ignore[no-any-return]

        @_messages.setter
        def _messages(self, messages: list[Message]) -> None:
            if threading.current_thread() is deleter and not entered.is_set():
                entered.set()
                release.wait(5)
            self.__dict__["_held_messages"] = messages

    queue.__dict__["_held_messages"] = queue.__dict__.pop("_messages")
    queue.__class__ = HeldQueue
    lock = OwnedLock(queue._messages_lock)
    queue._messages_lock = lock
    sender = threading.Thread(target=sqs.send_message, args=("overlap", "sent meanwhile"))
    deleter.start()
    try:
        assert entered.wait(5)
        sender.start()
        if lock.owner is not deleter:  # nothing holds the send back: let it finish first
            sender.join(5)
    finally:
        release.set()
        deleter.join(5)
    sender.join(5)
    assert not deleter.is_alive() and not sender.is_alive()
    assert received.body == "deleted"
    assert sorted(m.body for m in queue._messages) == ["kept", "sent meanwhile"]


def test_install_is_idempotent() -> None:
    moto_fidelity.install()
    patched = Queue.delete_message
    moto_fidelity.install()
    assert Queue.delete_message is patched
    assert getattr(patched, "__wrapped__", None) is not None
