"""notify: delivers signed webhooks with retries.

A shell until the pipeline lands: it resolves its queue and idles."""

from __future__ import annotations

import anyio

from shared.config import NotifySettings
from shared.service import wait_ready

__all__ = ["queues", "run"]


def queues(settings: NotifySettings) -> list[str]:
    """The queues this service talks to."""
    topology = settings.topology()
    return [topology.notify_queue.name]


async def run(settings: NotifySettings, stopping: anyio.Event) -> None:
    await wait_ready(settings, queues(settings), stopping)
