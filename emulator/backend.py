"""The seams of the harness: where AWS and PostgreSQL come from.

An AWS backend is started, hands back an :class:`AwsEndpoint` (URL, region, administrator
credentials, whether IAM is enforced) and is closed. Likewise a PostgreSQL backend hands back
a database URL. Backends are chosen by name; each closes safely twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.aws.provision import AccessKey

__all__ = ["AwsBackend", "AwsEndpoint", "BackendUnavailable", "PostgresBackend"]


class BackendUnavailable(RuntimeError):
    """This backend cannot run on this machine (no Docker engine, say); the reason says why."""


@dataclass(frozen=True)
class AwsEndpoint:
    url: str | None
    """None means real AWS."""
    region: str
    admin: AccessKey | None
    """Credentials allowed everything, used to provision; None means the default chain."""
    enforces_iam: bool


class AwsBackend(Protocol):
    name: str

    async def start(self) -> AwsEndpoint: ...

    async def aclose(self) -> None: ...


class PostgresBackend(Protocol):
    name: str

    async def start(self) -> str:
        """Start (or reach) the server and return a database URL."""
        ...

    async def aclose(self) -> None: ...
