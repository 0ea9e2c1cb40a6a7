"""The offline harness: AWS emulator + PostgreSQL + the provisioned topology, as one resource.

    async with Emulator() as stack:
        stack.service_env("ingest")   # the environment a service process runs with
        stack.exports()               # the same, as `export NAME=value` lines

Start-up: the AWS backend starts (moto in-process on 127.0.0.1 by default, IAM enforced),
PostgreSQL starts (embedded unless a URL is given) while the topology is provisioned with the
administrator key, one IAM user and key per service; then the schema migrations run.
Shutdown undoes all of it, leaving no process and no temporary directory behind.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import anyio
import asyncpg

from emulator.backend import AwsBackend, AwsEndpoint, PostgresBackend
from emulator.external_backend import ExternalBackend
from emulator.localstack_backend import LocalStackBackend
from emulator.moto_backend import MotoBackend
from emulator.postgres import ContainerPostgres, EmbeddedPostgres, ExternalPostgres
from emulator.seed import seed_default_model
from shared.aws.clients import AwsClients
from shared.aws.provision import AccessKey, Provisioned, provision
from shared.config import AwsSettings
from shared.db import migrate
from shared.errors import leaves
from shared.topology import SERVICES, Topology

__all__ = ["Emulator", "EmulatorOptions", "Stack", "add_topology"]

AwsBackendName = Literal["moto", "localstack", "external"]
PostgresBackendName = Literal["embedded", "url", "container"]


@dataclass(frozen=True)
class EmulatorOptions:
    topology: Topology = field(default_factory=Topology)
    aws: AwsBackendName = "moto"
    region: str = "us-east-1"
    postgres: PostgresBackendName | None = None
    """None: ``url`` when ``database_url`` is given, else ``embedded``."""
    database_url: str | None = None
    external_url: str | None = None
    """For ``aws="external"``: the endpoint (None: real AWS)."""
    external_admin: AccessKey | None = None
    fast_clock: bool = True
    seed_default_model: bool = True
    """Push all-MiniLM-L6-v2 into the models bucket when the topology serves it."""


@dataclass(frozen=True)
class Stack:
    """A running stack: where everything is and who may do what."""

    endpoint: AwsEndpoint
    database_url: str
    topology: Topology
    provisioned: Provisioned
    webhook_secret: str = field(repr=False, default="")
    """The notify service's signing secret (``whsec_...``), made for this stack."""
    restart_database: Callable[[float], Awaitable[None]] | None = field(
        default=None, repr=False, compare=False
    )
    """Stop PostgreSQL, stay down the given seconds, start it again (embedded only)."""

    @property
    def admin(self) -> AwsSettings:
        return _admin_settings(self.endpoint)

    def aws_settings(self, service: str) -> AwsSettings:
        """Connection values for ``service``'s own IAM identity."""
        return _settings(self.endpoint, self.provisioned.credentials[service])

    def common_env(self) -> dict[str, str]:
        env = {
            "AWS_REGION": self.endpoint.region,
            "DATABASE_URL": self.database_url,
            "CONVEYOR_PREFIX": self.topology.prefix,
            "CONVEYOR_MODELS": ",".join(self.topology.models),
            "CONVEYOR_MAX_RECEIVE_COUNT": str(self.topology.max_receive_count),
            "CONVEYOR_NOTIFY_MAX_RECEIVE_COUNT": str(self.topology.notify_max_receive_count),
        }
        if self.endpoint.url:
            env["AWS_ENDPOINT_URL"] = self.endpoint.url
        return env

    def credential_env(self, service: str) -> dict[str, str]:
        """``<SERVICE>_AWS_ACCESS_KEY_ID`` / ``..._SECRET_ACCESS_KEY`` for one identity."""
        key = (
            self.endpoint.admin if service == "admin" else self.provisioned.credentials.get(service)
        )
        if key is None:
            return {}
        prefix = service.upper()
        return {
            f"{prefix}_AWS_ACCESS_KEY_ID": key.access_key_id,
            f"{prefix}_AWS_SECRET_ACCESS_KEY": key.secret_access_key,
        }

    def secret_env(self, service: str) -> dict[str, str]:
        if service == "notify" and self.webhook_secret:
            return {"NOTIFY_WEBHOOK_SECRET": self.webhook_secret}
        return {}

    def dev_env(self, service: str) -> dict[str, str]:
        """What only a development stack sets: callbacks to loopback are allowed."""
        if service in ("ingest", "notify"):
            return {f"{service.upper()}_ALLOW_PRIVATE_CALLBACKS": "true"}
        return {}

    def service_env(self, service: str) -> dict[str, str]:
        """The whole environment ``python -m services.<service>`` needs (and only its keys)."""
        return {
            **self.common_env(),
            **self.credential_env(service),
            **self.secret_env(service),
            **self.dev_env(service),
        }

    def exports(self) -> list[str]:
        """Everything, for a shell: common values, then each identity's key pair."""
        env = self.common_env()
        for identity in (*SERVICES, "admin"):
            env.update(self.credential_env(identity))
            env.update(self.secret_env(identity))
            env.update(self.dev_env(identity))
        return [f"export {name}={value}" for name, value in env.items()]


class Emulator:
    """Starts and provisions a stack; ``aclose`` (or leaving ``async with``) removes it."""

    def __init__(self, options: EmulatorOptions | None = None) -> None:
        self.options = options or EmulatorOptions()
        self._stack = AsyncExitStack()
        self.stack: Stack | None = None

    def _aws_backend(self) -> AwsBackend:
        o = self.options
        if o.aws == "moto":
            return MotoBackend(region=o.region, fast_clock=o.fast_clock)
        if o.aws == "localstack":
            return LocalStackBackend(region=o.region)
        return ExternalBackend(url=o.external_url, region=o.region, admin=o.external_admin)

    def _postgres_backend(self) -> PostgresBackend:
        o = self.options
        kind = o.postgres or ("url" if o.database_url else "embedded")
        if kind == "url":
            if not o.database_url:
                raise ValueError("postgres='url' needs database_url")
            return ExternalPostgres(o.database_url)
        if kind == "container":
            return ContainerPostgres()
        return EmbeddedPostgres()

    async def start(self) -> Stack:
        try:
            aws_backend = self._aws_backend()
            pg_backend = self._postgres_backend()
            self._stack.push_async_callback(aws_backend.aclose)
            self._stack.push_async_callback(pg_backend.aclose)
            endpoint: AwsEndpoint | None = None
            provisioned: Provisioned | None = None
            database_url = ""

            async def start_aws() -> None:
                nonlocal endpoint, provisioned
                endpoint = await aws_backend.start()
                async with AwsClients(_admin_settings(endpoint)) as clients:
                    # Real AWS (no URL) gets no IAM users: services there run under roles.
                    provisioned = await provision(
                        clients, self.options.topology, iam_users=endpoint.url is not None
                    )
                if self.options.seed_default_model:
                    await seed_default_model(_admin_settings(endpoint), self.options.topology)

            async def start_postgres() -> None:
                nonlocal database_url
                database_url = await pg_backend.start()
                conn = await asyncpg.connect(database_url)
                try:
                    await migrate(conn)
                finally:
                    await conn.close()

            # PostgreSQL starts while the AWS side is provisioned.
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(start_aws)
                    tg.start_soon(start_postgres)
            except BaseExceptionGroup as group:  # report the failure itself, not the group
                raise leaves(group)[0] from group
            assert endpoint is not None
            assert provisioned is not None
        except BaseException:
            await self.aclose()
            raise
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        restart = pg_backend.restart if isinstance(pg_backend, EmbeddedPostgres) else None
        self.stack = Stack(
            endpoint, database_url, self.options.topology, provisioned, secret, restart
        )
        return self.stack

    async def aclose(self) -> None:
        self.stack = None
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

    async def __aenter__(self) -> Stack:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _settings(endpoint: AwsEndpoint, key: AccessKey | None) -> AwsSettings:
    return AwsSettings(
        endpoint_url=endpoint.url,
        region=endpoint.region,
        access_key_id=key.access_key_id if key else None,
        secret_access_key=key.secret_access_key if key else None,
    )


def _admin_settings(endpoint: AwsEndpoint) -> AwsSettings:
    return _settings(endpoint, endpoint.admin)


async def add_topology(stack: Stack, topology: Topology, *, seed: bool = True) -> Stack:
    """Provision another stack (its own prefix) on the same emulator and database.

    Tests use this to run pipelines with their own models and queues side by side.
    """
    async with AwsClients(stack.admin) as clients:
        provisioned = await provision(clients, topology, iam_users=stack.endpoint.url is not None)
    if seed:
        await seed_default_model(stack.admin, topology)
    return dataclasses.replace(stack, topology=topology, provisioned=provisioned)
