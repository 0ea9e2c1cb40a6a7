"""Checks shared by the tests of lookups that time out during an outage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

__all__ = ["only_the_first_waits"]

T = TypeVar("T")


async def only_the_first_waits(answer: Callable[[], Awaitable[T]], timeout_s: float) -> list[T]:
    """Call ``answer()`` six times, 50 ms apart: the first waits out ``timeout_s``, each of
    the other five answers within 0.15 s. Returns the six answers."""
    with anyio.fail_after(5):
        began = anyio.current_time()
        answers = [await answer()]
        assert anyio.current_time() - began >= timeout_s  # this one waited out the timeout
        for _ in range(5):
            await anyio.sleep(0.05)
            began = anyio.current_time()
            answers.append(await answer())
            assert anyio.current_time() - began < 0.15  # these did not
    return answers
