"""ingest: the HTTP API that accepts jobs and enqueues them per model.

A shell until the pipeline lands: it resolves the queues it will publish to and idles."""

from __future__ import annotations

import anyio

from shared.config import IngestSettings
from shared.service import wait_ready

__all__ = ["queues", "run"]


def queues(settings: IngestSettings) -> list[str]:
    """The queues this service talks to."""
    topology = settings.topology()
    return [q.name for q in topology.infer_queues]


async def run(settings: IngestSettings, stopping: anyio.Event) -> None:
    await wait_ready(settings, queues(settings), stopping)
