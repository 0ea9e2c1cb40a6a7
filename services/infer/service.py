"""infer: pulls jobs of one model in batches, runs the model, publishes results.

A shell until the pipeline lands: it resolves its queues and idles."""

from __future__ import annotations

import anyio

from shared.config import InferSettings
from shared.service import wait_ready

__all__ = ["queues", "run"]


def queues(settings: InferSettings) -> list[str]:
    """The queues this service talks to."""
    topology = settings.topology()
    return [topology.infer_queue(settings.served_model).name, topology.results_queue.name]


async def run(settings: InferSettings, stopping: anyio.Event) -> None:
    await wait_ready(settings, queues(settings), stopping)
