"""The offline harness: AWS emulator + PostgreSQL + the provisioned topology, as one resource.

    async with Emulator() as stack:
        stack.service_env("ingest")   # the environment a service process runs with
        stack.exports()               # the same, as `export NAME=value` lines

Start-up: the AWS backend starts (moto in-process on 127.0.0.1 by default, IAM enforced),
PostgreSQL starts (embedded unless a URL is given) while the topology is provisioned with the
administrator key, one IAM user and key per service; then the schema migrations run and each
service with a database gets a login role of its own (``shared/db/roles.py``), as it gets an
IAM key of its own. Shutdown undoes all of it, leaving no process and no temporary directory
behind.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import secrets
import shlex
from collections.abc import Awaitable, Callable, Mapping
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
from shared.db.roles import GROUPS, credentials_of, drop_login, ensure_login, login_url
from shared.errors import ConfigError, leaves
from shared.topology import OBSERVER, SERVICES, Topology

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
    postgres_port: int | None = None
    """Embedded PostgreSQL only: also listen on 127.0.0.1 at this port (0: a free one), and
    give the services URLs over TCP with passwords (for service containers on the host
    network, which cannot reach the server's private socket)."""
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
    """The operator's URL: the owner of the schema, who migrates (tests set up with it)."""
    topology: Topology
    provisioned: Provisioned
    webhook_secret: str = field(repr=False, default="")
    """The notify service's signing secret (``whsec_...``), made for this stack."""
    restart_database: Callable[[float], Awaitable[None]] | None = field(
        default=None, repr=False, compare=False
    )
    """Stop PostgreSQL, stay down the given seconds, start it again (embedded only)."""
    database_logins: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Each service with a database -> the URL of its own login role (infer has none)."""

    @property
    def admin(self) -> AwsSettings:
        return _admin_settings(self.endpoint)

    def aws_settings(self, service: str) -> AwsSettings:
        """Connection values for ``service``'s own IAM identity."""
        return _settings(self.endpoint, self.provisioned.credentials[service])

    def common_env(self) -> dict[str, str]:
        env = {
            "AWS_REGION": self.endpoint.region,
            "CONVEYOR_PREFIX": self.topology.prefix,
            "CONVEYOR_MODELS": ",".join(self.topology.models),
            "CONVEYOR_MAX_RECEIVE_COUNT": str(self.topology.max_receive_count),
            "CONVEYOR_NOTIFY_MAX_RECEIVE_COUNT": str(self.topology.notify_max_receive_count),
        }
        if self.endpoint.url:
            env["AWS_ENDPOINT_URL"] = self.endpoint.url
        return env

    def credential_env(self, service: str) -> dict[str, str]:
        """One identity's own credentials, behind its prefix: its AWS key pair
        (``<SERVICE>_AWS_ACCESS_KEY_ID`` / ``..._SECRET_ACCESS_KEY``) and its database login
        (``<SERVICE>_DATABASE_URL``; ``ADMIN_DATABASE_URL`` is the operator's; infer has none)."""
        prefix = service.upper()
        env: dict[str, str] = {}
        database = self.database_url if service == "admin" else self.database_logins.get(service)
        if database:
            env[f"{prefix}_DATABASE_URL"] = database
        key = (
            self.endpoint.admin if service == "admin" else self.provisioned.credentials.get(service)
        )
        if key is not None:
            env[f"{prefix}_AWS_ACCESS_KEY_ID"] = key.access_key_id
            env[f"{prefix}_AWS_SECRET_ACCESS_KEY"] = key.secret_access_key
        return env

    def secret_env(self, service: str) -> dict[str, str]:
        if service == "notify" and self.webhook_secret:
            return {"NOTIFY_WEBHOOK_SECRET": self.webhook_secret}
        return {}

    def dev_env(self, service: str) -> dict[str, str]:
        """What only a development stack sets: callbacks to loopback (and nothing else) are
        allowed."""
        if service in ("ingest", "notify"):
            return {f"{service.upper()}_ALLOW_LOOPBACK_CALLBACKS": "true"}
        return {}

    def service_env(self, service: str) -> dict[str, str]:
        """The whole environment ``python -m services.<service>`` needs, with only its own
        keys and database login (none for infer)."""
        return {
            **self.common_env(),
            **self.credential_env(service),
            **self.secret_env(service),
            **self.dev_env(service),
        }

    def export_env(self) -> dict[str, str]:
        """Everything: common values, then each identity's credentials (its key pair and its
        database URL: ``ADMIN_DATABASE_URL``, ``INGEST_DATABASE_URL``...)."""
        env = self.common_env()
        for identity in (*SERVICES, OBSERVER, "admin"):
            env.update(self.credential_env(identity))
            env.update(self.secret_env(identity))
            env.update(self.dev_env(identity))
        return env

    def exports(self) -> list[str]:
        """:meth:`export_env` for a shell (quoted: a database URL holds ``?``)."""
        return [f"export {name}={shlex.quote(value)}" for name, value in self.export_env().items()]


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
        if o.postgres_port is not None and kind != "embedded":
            raise ConfigError("a PostgreSQL port applies to the embedded PostgreSQL only")
        if kind == "url":
            if not o.database_url:
                raise ValueError("postgres='url' needs database_url")
            return ExternalPostgres(o.database_url)
        if kind == "container":
            return ContainerPostgres()
        return EmbeddedPostgres(tcp_port=o.postgres_port)

    async def start(self) -> Stack:
        try:
            aws_backend = self._aws_backend()
            pg_backend = self._postgres_backend()
            self._stack.push_async_callback(aws_backend.aclose)
            self._stack.push_async_callback(pg_backend.aclose)
            endpoint: AwsEndpoint | None = None
            provisioned: Provisioned | None = None
            database_url = ""
            logins: dict[str, str] = {}

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
                    if isinstance(pg_backend, ExternalPostgres):  # the others vanish whole
                        self._stack.push_async_callback(_drop_logins, database_url, logins)
                    base = getattr(pg_backend, "tcp_url", None) or database_url
                    logins.update(await _make_logins(conn, base))
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
            endpoint,
            database_url,
            self.options.topology,
            provisioned,
            secret,
            restart,
            database_logins=dict(logins),
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


async def _make_logins(conn: asyncpg.Connection, database_url: str) -> dict[str, str]:
    """A login role per service with a database, named and keyed for this stack alone (the
    roles of a cluster are shared by every stack on it): service -> its URL."""
    logins = {}
    for service in GROUPS:
        user = f"{service}_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(24)
        await ensure_login(conn, service, user, password)
        logins[service] = login_url(database_url, user, password)
    return logins


async def _drop_logins(database_url: str, logins: Mapping[str, str]) -> None:
    """Leave a server the emulator did not start without the logins it made there."""
    with (
        anyio.move_on_after(10),
        contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError),
    ):
        conn = await asyncpg.connect(database_url)
        try:
            for url in logins.values():
                await drop_login(conn, credentials_of(url)[0])
        finally:
            await conn.close()


async def add_topology(stack: Stack, topology: Topology, *, seed: bool = True) -> Stack:
    """Provision another stack (its own prefix) on the same emulator and database.

    Tests use this to run pipelines with their own models and queues side by side.
    """
    async with AwsClients(stack.admin) as clients:
        provisioned = await provision(clients, topology, iam_users=stack.endpoint.url is not None)
    if seed:
        await seed_default_model(stack.admin, topology)
    return dataclasses.replace(stack, topology=topology, provisioned=provisioned)
