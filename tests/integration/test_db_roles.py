"""Each service connects to PostgreSQL as a login of its own, holding only what its SQL needs.

The grants are migration 0009's (one NOLOGIN group per service) and the logins are made by
``shared/db/roles.py``. What a service does, its own queries do here under its own login; what
it does not do is refused (SQLSTATE 42501, ``InsufficientPrivilegeError``); infer has no
database at all.
"""

from __future__ import annotations

import base64
import datetime
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from emulator import Stack
from services.ingest import idempotency, jobs, outbox
from services.notify import endpoints, store
from services.notify.delivery import DeliveryOutcome
from services.persist.writer import Recorded, ResultWriter, WriteRequest, mark_running
from shared.apikeys import authenticate, create_key
from shared.config import (
    CommonSettings,
    IngestSettings,
    NotifySettings,
    PersistSettings,
    load_settings,
)
from shared.db import migrate
from shared.db.roles import GROUPS, credentials_of, ensure_login, login_url, scram_verifier
from shared.messages import JobResult, JobStarted, JobStatus, Vectors
from shared.vectors import unpack
from tests.processes import run_module

pytestmark = pytest.mark.anyio

SETTINGS: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "persist": PersistSettings,
    "notify": NotifySettings,
}
NOW = datetime.datetime.now(datetime.UTC)


def url_of(stack: Stack, service: str) -> str:
    """The service's database URL, as the emulator gives it to the service's process."""
    return stack.service_env(service)[f"{service.upper()}_DATABASE_URL"]


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """The operator: owner of the schema."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def new_job(admin: asyncpg.Connection, status: str = "queued") -> uuid.UUID:
    job_id = uuid.uuid4()
    await admin.execute(
        "INSERT INTO jobs (id, tenant_id, model, status, inputs_count)"
        " VALUES ($1, 't', 'm', $2, 1)",
        job_id,
        status,
    )
    return job_id


# -- who connects as whom ----------------------------------------------------------------------


async def test_each_service_gets_a_login_of_its_own_and_infer_none(
    stack: Stack, admin: asyncpg.Connection, clean_env: pytest.MonkeyPatch
) -> None:
    assert not [name for name in stack.service_env("infer") if "DATABASE" in name]
    operator = await admin.fetchval("SELECT current_user")
    users = {}
    for service, cls in SETTINGS.items():
        env = stack.service_env(service)
        assert [name for name in env if "DATABASE" in name] == [f"{service.upper()}_DATABASE_URL"]
        for name, value in env.items():
            clean_env.setenv(name, value)
        settings: Any = load_settings(cls)
        url = settings.database_url.get_secret_value()
        for name in env:
            clean_env.delenv(name)
        assert url == url_of(stack, service)
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow(
                "SELECT current_user AS user, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
                " FROM pg_roles WHERE rolname = current_user"
            )
            groups = {
                group: await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", group)
                for group in GROUPS.values()
            }
        finally:
            await conn.close()
        assert row["user"] == credentials_of(url)[0] != operator
        assert not any(
            (row["rolsuper"], row["rolcreaterole"], row["rolcreatedb"], row["rolbypassrls"])
        )
        assert groups == {group: group == GROUPS[service] for group in GROUPS.values()}
        users[service] = row["user"]
    assert len(set(users.values())) == 3

    exports = stack.export_env()
    assert exports["ADMIN_DATABASE_URL"] == stack.database_url
    assert {name for name in exports if "DATABASE" in name} == {
        "ADMIN_DATABASE_URL",
        "INGEST_DATABASE_URL",
        "PERSIST_DATABASE_URL",
        "NOTIFY_DATABASE_URL",
        "OBSERVER_DATABASE_URL",
    }, "no DATABASE_URL for everyone, none for infer"


# -- what each service does, it may do ---------------------------------------------------------


async def test_ingest_does_its_work_under_its_own_role(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    tenant = f"roles-{uuid.uuid4().hex[:8]}"
    key, _ = await create_key(admin, tenant, "roles test")  # the operator makes keys
    queue = f"roles-{uuid.uuid4().hex[:8]}"
    job_id = uuid.uuid4()
    heard: list[str] = []
    conn = await asyncpg.connect(url_of(stack, "ingest"))
    listener = await asyncpg.connect(url_of(stack, "ingest"))
    try:
        await listener.add_listener("job_finished", lambda *args: heard.append(args[3]))
        assert await authenticate(conn, key) == tenant  # and marks it used
        async with conn.transaction():
            digest = idempotency.request_hash({"inputs": ["x"]})
            assert await idempotency.claim(conn, tenant, "k1", digest, 86_400) is None
            assert await jobs.insert_job(
                conn,
                job_id=job_id,
                tenant=tenant,
                model="m",
                inputs_count=1,
                callback_url=None,
                queue=queue,
                message="{}",
            )
            await idempotency.complete(conn, tenant, "k1", 202, "{}")
        assert await outbox.unsent(conn, queue) == 1
        async with conn.transaction():
            [row] = await outbox.claim(conn, [queue], 10)
            await outbox.mark_failed(conn, [row.id], "SQS away")
        async with conn.transaction():
            [row] = await outbox.claim(conn, [queue], 10)
            await outbox.mark_sent(conn, [row.id])
        assert await outbox.prune(conn, 86_400) >= 0
        assert await idempotency.prune(conn, 86_400 * 365) >= 0
        view = await jobs.get_job(conn, job_id, tenant)
        assert view is not None
        assert view.status == JobStatus.QUEUED
        async with conn.transaction():
            assert await jobs.cancel_job(conn, job_id, tenant)
        with anyio.fail_after(5):
            while str(job_id) not in heard:
                await anyio.sleep(0.05)
        # The state machine's trigger still rules this role: a final state stays final.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE jobs SET status = 'queued' WHERE id = $1", job_id)
    finally:
        await listener.close()
        await conn.close()
    assert await admin.fetchval("SELECT last_used_at FROM api_keys WHERE tenant_id = $1", tenant)


async def test_persist_does_its_work_under_its_own_role(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    job_id = await new_job(admin)
    started = JobStarted(model="m", model_version="1", started_at=NOW)
    result = JobResult(
        status=JobStatus.SUCCEEDED,
        model="m",
        model_version="1",
        vectors=Vectors.of([[1.0, 0.0]]),
        started_at=NOW,
        finished_at=NOW,
    )
    heard: list[str] = []
    listener = await asyncpg.connect(url_of(stack, "ingest"))  # ?wait= listens as ingest
    try:
        await listener.add_listener("job_finished", lambda *args: heard.append(args[3]))
        async with asyncpg.create_pool(url_of(stack, "persist"), min_size=1, max_size=2) as pool:
            assert await mark_running(pool, job_id, "t", started)
            writer = ResultWriter(pool)
            request = WriteRequest(job_id, "t", result)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    writer.start(tg)
                    assert await writer.record(request) == Recorded.NEW
                    assert await writer.record(request) == Recorded.DUPLICATE
                    tg.cancel_scope.cancel()
            with pytest.raises(asyncpg.CheckViolationError):  # the trigger, under this role
                await pool.execute("UPDATE jobs SET status = 'running' WHERE id = $1", job_id)
        with anyio.fail_after(5):
            while str(job_id) not in heard:
                await anyio.sleep(0.05)
    finally:
        await listener.close()
    row = await admin.fetchrow(
        "SELECT j.status, r.vectors, r.dimensions FROM jobs j JOIN results r ON r.job_id = j.id "
        "WHERE j.id = $1",
        job_id,
    )
    assert row["status"] == "succeeded"
    assert unpack(row["vectors"], row["dimensions"]) == [[1.0, 0.0]]


async def test_notify_does_its_work_under_its_own_role(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    job_id = await new_job(admin, "succeeded")
    await admin.execute(
        "INSERT INTO results (job_id, outputs, model_version) VALUES ($1, '[[0.5]]', '1')", job_id
    )
    url = f"http://hooks.example/{uuid.uuid4().hex}"
    _, secret = await endpoints.add_endpoint(admin, "t", url)  # the operator registers it
    event = "job.succeeded"
    outcome = DeliveryOutcome(
        succeeded=True,
        status_code=200,
        error=None,
        retry_after_s=None,
        give_up=False,
        duration_ms=3,
    )
    conn = await asyncpg.connect(url_of(stack, "notify"))
    try:
        async with conn.transaction():
            assert not await store.already_delivered(conn, job_id, event)
            data = await store.load_notification_data(conn, job_id)
            assert data is not None
            assert data["outputs"] == [[0.5]]
            assert await store.claim_delivery(conn, job_id, event, 30)
            assert not await store.claim_delivery(conn, job_id, event, 30)  # leased
            assert await endpoints.signing_secrets(conn, "t", url) == [secret]
            assert await store.attempts_so_far(conn, job_id, event) == 0
        async with conn.transaction():
            await store.record_attempt(
                conn,
                job_id=job_id,
                webhook_id="msg_1",
                event=event,
                attempt=1,
                url=url,
                outcome=outcome,
            )
            await store.release_delivery(conn, job_id, event)
        assert await store.already_delivered(conn, job_id, event)
        assert await store.claim_delivery(conn, job_id, event, 30)  # released: free again
    finally:
        await conn.close()


# -- what it does not do, it may not do --------------------------------------------------------

EVERY_SERVICE = [
    "CREATE TABLE intruder (a int)",
    "CREATE TEMPORARY TABLE intruder (a int)",
    "CREATE SCHEMA intruder",
    "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE ROLE intruder",
    "DROP TABLE jobs",
    "TRUNCATE jobs",
    "ALTER TABLE jobs ADD COLUMN intruder text",
    "ALTER TABLE jobs DISABLE TRIGGER jobs_state_machine",
    "DROP FUNCTION jobs_check_transition() CASCADE",
    "DELETE FROM jobs WHERE false",
    "SELECT * FROM schema_migrations",
    "UPDATE jobs SET tenant_id = 'another' WHERE false",
    "UPDATE jobs SET callback_url = 'http://elsewhere.example/' WHERE false",
    "INSERT INTO api_keys (id, tenant_id, key_hash) VALUES ('0123456789abcdef', 't', '')",
    "UPDATE api_keys SET revoked_at = NULL WHERE false",
    "UPDATE webhook_secrets SET expires_at = NULL WHERE false",
    "INSERT INTO webhook_endpoints (tenant_id, url) VALUES ('t', 'http://x.example/')",
    "DELETE FROM results WHERE false",
    "UPDATE results SET outputs = '[]' WHERE false",
]
# UPDATE and DELETE touch no row (WHERE false): privileges are checked before any row is.
REFUSED = {
    "ingest": [
        "INSERT INTO results (job_id) VALUES (gen_random_uuid())",
        "UPDATE jobs SET error = 'forged' WHERE false",
        "UPDATE jobs SET model_version = 'forged' WHERE false",
        "SELECT * FROM api_keys",  # name, created_at: only the columns that check a key
        "SELECT * FROM webhook_secrets",
        "SELECT * FROM webhook_deliveries",
        "INSERT INTO webhook_deliveries DEFAULT VALUES",
        "DELETE FROM webhook_leases WHERE false",
    ],
    "persist": [
        "SELECT id FROM api_keys",
        "SELECT * FROM webhook_secrets",
        "SELECT * FROM outbox",
        "SELECT * FROM idempotency_keys",
        "SELECT outputs FROM results",
        "INSERT INTO jobs (id, tenant_id, model) VALUES (gen_random_uuid(), 't', 'm')",
        "INSERT INTO outbox DEFAULT VALUES",
        "INSERT INTO webhook_deliveries DEFAULT VALUES",
    ],
    "notify": [
        "UPDATE jobs SET status = 'failed' WHERE false",
        "UPDATE jobs SET finished_at = now() WHERE false",
        "INSERT INTO results (job_id) VALUES (gen_random_uuid())",
        "UPDATE webhook_deliveries SET succeeded = true WHERE false",
        "DELETE FROM webhook_deliveries WHERE false",
        "UPDATE webhook_leases SET job_id = gen_random_uuid() WHERE false",
        "SELECT id FROM api_keys",
        "SELECT * FROM outbox",
        "SELECT * FROM idempotency_keys",
        "INSERT INTO webhook_secrets (endpoint_id, secret) VALUES (1, 'whsec_x')",
    ],
}


@pytest.mark.parametrize("service", SETTINGS)
async def test_each_role_is_refused_outside_its_grants(stack: Stack, service: str) -> None:
    others = [group for group in GROUPS.values() if group != GROUPS[service]]
    statements = [
        *EVERY_SERVICE,
        *REFUSED[service],
        *(f"SET ROLE {group}" for group in others),
        *(f"GRANT {group} TO current_user" for group in others),
    ]
    allowed = []
    conn = await asyncpg.connect(url_of(stack, service))
    try:
        for statement in statements:
            try:
                async with conn.transaction():  # rolled back, whatever happens
                    await conn.execute(statement)
                    raise _RollBack
            except asyncpg.InsufficientPrivilegeError:
                continue
            except _RollBack:
                pass
            allowed.append(statement)
    finally:
        await conn.close()
    assert allowed == [], f"{service} may do what it should not"


class _RollBack(Exception):
    pass


async def test_a_login_reaches_only_its_own_database(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    """The groups are cluster-wide; CONNECT keeps one stack's logins out of another database."""
    name = f"roles_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        other = stack.database_url.replace("/conveyor?", f"/{name}?")
        conn = await asyncpg.connect(other)
        try:
            await migrate(conn)  # the groups exist already: the migration takes them as they are
        finally:
            await conn.close()
        for service in SETTINGS:
            user, password = credentials_of(url_of(stack, service))
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="CONNECT"):
                await asyncpg.connect(login_url(other, user, password or ""))
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_the_groups_hold_exactly_these_grants(admin: asyncpg.Connection) -> None:
    """Every privilege of every group, and what PUBLIC no longer has: nothing more."""
    expected = {
        "conveyor_ingest": {
            "jobs: SELECT, INSERT",
            "jobs.status: UPDATE",
            "jobs.finished_at: UPDATE",
            "results: SELECT",
            "outbox: SELECT, INSERT, DELETE",
            "outbox.sent_at: UPDATE",
            "outbox.attempts: UPDATE",
            "outbox.last_error: UPDATE",
            "outbox_id_seq: USAGE",
            "idempotency_keys: SELECT, INSERT, DELETE",
            *(
                f"idempotency_keys.{column}: UPDATE"
                for column in (
                    "request_hash",
                    "response_status",
                    "response_body",
                    "created_at",
                    "completed_at",
                )
            ),
            *(
                f"api_keys.{column}: SELECT"
                for column in ("id", "tenant_id", "key_hash", "revoked_at")
            ),
            "api_keys.last_used_at: SELECT, UPDATE",
        },
        "conveyor_persist": {
            "jobs: SELECT",
            *(
                f"jobs.{column}: UPDATE"
                for column in (
                    "status",
                    "error",
                    "model_version",
                    "started_at",
                    "finished_at",
                    "updated_at",
                    "version",
                )
            ),
            "results: INSERT",
            "results.job_id: SELECT",
        },
        "conveyor_notify": {
            "jobs: SELECT",
            "results: SELECT",
            "webhook_endpoints: SELECT",
            "webhook_secrets: SELECT",
            "webhook_deliveries: SELECT, INSERT",
            "webhook_deliveries_id_seq: USAGE",
            "webhook_leases: SELECT, INSERT, DELETE",
            "webhook_leases.lease_until: UPDATE",
        },
        # conveyor top: states, models, timestamps, outcomes; no input, output or secret.
        "conveyor_observer": {
            *(
                f"jobs.{column}: SELECT"
                for column in ("id", "model", "status", "created_at", "started_at", "finished_at")
            ),
            *(
                f"webhook_deliveries.{column}: SELECT"
                for column in (
                    "job_id",
                    "event",
                    "attempt",
                    "status_code",
                    "succeeded",
                    "attempted_at",
                )
            ),
            *(f"outbox.{column}: SELECT" for column in ("model", "created_at", "sent_at")),
        },
    }
    rows = await admin.fetch(
        """
        WITH acls AS (
            SELECT c.relname AS object, c.relacl AS acl FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace
            UNION ALL
            SELECT c.relname || '.' || att.attname, att.attacl FROM pg_class c
            JOIN pg_attribute att ON att.attrelid = c.oid
            WHERE c.relnamespace = 'public'::regnamespace AND att.attacl IS NOT NULL
        )
        SELECT g.rolname AS grantee, a.object,
               string_agg(p.privilege_type, ', ' ORDER BY array_position(
                   ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'USAGE'], p.privilege_type::text
               )) AS privileges
        FROM acls a CROSS JOIN LATERAL aclexplode(a.acl) p
        JOIN pg_roles g ON g.oid = p.grantee
        WHERE g.rolname = ANY($1::text[])
        GROUP BY 1, 2
        """,
        list(GROUPS.values()),
    )
    found: dict[str, set[str]] = {group: set() for group in GROUPS.values()}
    for row in rows:
        found[row["grantee"]].add(f"{row['object']}: {row['privileges']}")
    assert found == expected
    database = await admin.fetchval(
        "SELECT has_database_privilege('public', current_database(), 'CONNECT')"
        " OR has_database_privilege('public', current_database(), 'TEMPORARY')"
    )
    schema = await admin.fetchval("SELECT has_schema_privilege('public', 'public', 'CREATE')")
    assert (database, schema) == (False, False)


# -- making logins -----------------------------------------------------------------------------


async def test_passwords_go_as_the_verifier_the_server_itself_would_store(
    admin: asyncpg.Connection,
) -> None:
    user = f"scram_{uuid.uuid4().hex[:8]}"
    await admin.execute(
        f"SET password_encryption = 'scram-sha-256'; CREATE ROLE {user} PASSWORD 'pw-1'"
    )
    try:
        stored = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", user)
        salt = base64.b64decode(stored.split("$")[1].split(":")[1])
        assert scram_verifier("pw-1", salt=salt) == stored
        assert scram_verifier("pw-2", salt=salt) != stored
    finally:
        await admin.execute(f"DROP ROLE {user}")


async def test_a_login_is_never_the_operator_a_powerful_role_or_shared(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    operator = await admin.fetchval("SELECT current_user")
    with pytest.raises(ValueError, match="operator"):
        await ensure_login(admin, "ingest", operator, "pw")
    with pytest.raises(ValueError, match="group"):
        await ensure_login(admin, "ingest", "conveyor_persist", "pw")
    persist_user = credentials_of(url_of(stack, "persist"))[0]
    with pytest.raises(ValueError, match="conveyor_persist"):
        await ensure_login(admin, "notify", persist_user, "pw")
    assert not await admin.fetchval(
        "SELECT pg_has_role($1, 'conveyor_notify', 'MEMBER')", persist_user
    )
    powerful = f"powerful_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE ROLE {powerful} LOGIN CREATEDB")
    try:
        with pytest.raises(ValueError, match="may create roles or databases"):
            await ensure_login(admin, "ingest", powerful, "pw")
        assert not await admin.fetchval(
            "SELECT pg_has_role($1, 'conveyor_ingest', 'MEMBER')", powerful
        )
    finally:
        await admin.execute(f"DROP ROLE {powerful}")


async def test_conveyor_migrate_makes_the_logins_named_by_the_services_urls(
    stack: Stack, admin: asyncpg.Connection
) -> None:
    user = f"ingest_{uuid.uuid4().hex[:8]}"
    ingest_url = login_url(stack.database_url, user, "first-password")
    env = {"ADMIN_DATABASE_URL": stack.database_url, "INGEST_DATABASE_URL": ingest_url}
    try:
        done = await anyio.to_thread.run_sync(run_module, ["conveyor", "migrate"], env)
        assert done.returncode == 0, done.stderr
        assert f"database login {user} for ingest (role conveyor_ingest)" in done.stdout
        assert "first-password" not in done.stdout + done.stderr
        again = await anyio.to_thread.run_sync(run_module, ["conveyor", "migrate"], env)
        assert again.returncode == 0, again.stderr  # idempotent
        conn = await asyncpg.connect(ingest_url)
        try:
            assert await conn.fetchval("SELECT pg_has_role('conveyor_ingest', 'MEMBER')")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("INSERT INTO results (job_id) VALUES (gen_random_uuid())")
        finally:
            await conn.close()
        shared = {**env, "PERSIST_DATABASE_URL": ingest_url}
        refused = await anyio.to_thread.run_sync(run_module, ["conveyor", "migrate"], shared)
        assert refused.returncode == 1
        assert "PERSIST_DATABASE_URL" in refused.stderr
        assert "conveyor_ingest" in refused.stderr
    finally:
        await admin.execute(f"DROP OWNED BY {user}; DROP ROLE IF EXISTS {user}")


def test_login_url_replaces_only_the_credentials() -> None:
    url = login_url("postgresql://postgres:@/conveyor?host=/tmp/pg-1", "ingest_1", "p/w@x")
    assert url == "postgresql://ingest_1:p%2Fw%40x@/conveyor?host=/tmp/pg-1"
    assert credentials_of(url) == ("ingest_1", "p/w@x")
    parts = urllib.parse.urlsplit(
        login_url("postgresql://op:secret@db.internal:5432/conveyor?sslmode=require", "n", "pw")
    )
    assert (parts.username, parts.password, parts.hostname, parts.port, parts.query) == (
        "n",
        "pw",
        "db.internal",
        5432,
        "sslmode=require",
    )
