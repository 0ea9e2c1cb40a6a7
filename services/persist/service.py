"""persist: writes results and final job states to PostgreSQL, then enqueues notifications.

A shell until the pipeline lands: it resolves its queues and idles."""

from __future__ import annotations

import anyio

from shared.config import PersistSettings
from shared.service import wait_ready

__all__ = ["queues", "run"]


def queues(settings: PersistSettings) -> list[str]:
    """The queues this service talks to."""
    topology = settings.topology()
    return [topology.results_queue.name, topology.notify_queue.name]


async def run(settings: PersistSettings, stopping: anyio.Event) -> None:
    await wait_ready(settings, queues(settings), stopping)
