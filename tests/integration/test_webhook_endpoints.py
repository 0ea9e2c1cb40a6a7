"""Per-endpoint signing secrets and their rotation, against a real receiver and PostgreSQL.

A tenant's registered endpoint is signed with its own secret, not the stack's; a rotation signs
with the old and the new secret until its overlap ends; one tenant's secret never signs another
tenant's job; the CLI shows a secret once and ``list`` never does. One test runs the notify
service itself, in-process, on its own topology.
"""

from __future__ import annotations

import base64
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence

import anyio
import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from emulator import Stack
from emulator.harness import add_topology
from services.notify import endpoints
from services.notify.delivery import InvalidSecret, WebhookSender, webhook_id_for
from services.notify.service import run as run_notify
from services.notify.ssrf import GuardedTransport
from shared.aws import AwsClients, resolve_queue_url
from shared.config import NotifySettings, load_settings
from shared.messages import Envelope, MessageType, Notification
from shared.topology import DEFAULT_MODEL, Topology
from tests.processes import run_module
from tests.webhook_receiver import ReceivedRequest, WebhookReceiver

pytestmark = pytest.mark.anyio

CLI = "conveyor.cli.webhooks"
SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")
DATA = {"job_id": "x", "status": "succeeded", "outputs": [[0.5]]}


def tenant() -> str:
    return f"wh-{uuid.uuid4().hex[:8]}"


def verifies(secret: str, request: ReceivedRequest) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


@pytest.fixture
async def conn(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(stack.database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def sender(stack: Stack) -> AsyncIterator[WebhookSender]:
    transport = GuardedTransport(allow_loopback=True)
    async with WebhookSender(stack.webhook_secret, 5, transport=transport) as sending:
        yield sending


async def deliver_as_notify(
    conn: asyncpg.Connection, sender: WebhookSender, rx: WebhookReceiver, of_tenant: str
) -> ReceivedRequest:
    """What notify does for one job: look up the tenant's secrets for the URL, then send."""
    found = await endpoints.signing_secrets(conn, of_tenant, rx.url)
    before = len(rx.requests)
    outcome = await sender.deliver(
        rx.url,
        webhook_id=webhook_id_for(uuid.uuid4(), "job.succeeded"),
        event_type="job.succeeded",
        data=DATA,
        secrets=found or None,
    )
    assert outcome.succeeded, outcome.error
    return (await rx.wait_for_requests(before + 1))[before]


def signatures(request: ReceivedRequest) -> list[str]:
    return request.headers["webhook-signature"].split(" ")


# -- signing with an endpoint's secrets --------------------------------------------------------


async def test_a_registered_endpoint_is_signed_with_its_own_secret_only(
    stack: Stack, conn: asyncpg.Connection, sender: WebhookSender
) -> None:
    owner = tenant()
    async with WebhookReceiver() as rx:
        endpoint, secret = await endpoints.add_endpoint(conn, owner, rx.url)
        assert SECRET.fullmatch(secret)
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        assert (endpoint.tenant, endpoint.url) == (owner, rx.url)
        assert await endpoints.signing_secrets(conn, owner, rx.url) == [secret]

        request = await deliver_as_notify(conn, sender, rx, owner)
    assert len(signatures(request)) == 1
    assert verifies(secret, request)
    assert not verifies(stack.webhook_secret, request)


async def test_an_unregistered_url_is_signed_with_the_stack_secret(
    stack: Stack, conn: asyncpg.Connection, sender: WebhookSender
) -> None:
    async with WebhookReceiver() as rx:
        assert await endpoints.signing_secrets(conn, tenant(), rx.url) == []
        request = await deliver_as_notify(conn, sender, rx, tenant())
    assert verifies(stack.webhook_secret, request)


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    stack: Stack, conn: asyncpg.Connection, sender: WebhookSender
) -> None:
    owner = tenant()
    async with WebhookReceiver() as rx:
        endpoint, old = await endpoints.add_endpoint(conn, owner, rx.url)
        new = await endpoints.rotate(conn, endpoint.id, overlap_s=3600)
        assert SECRET.fullmatch(new)
        assert new != old
        assert await endpoints.signing_secrets(conn, owner, rx.url) == [new, old]

        request = await deliver_as_notify(conn, sender, rx, owner)
    first, second = signatures(request)
    assert first.startswith("v1,")
    assert second.startswith("v1,")
    assert verifies(old, request)  # a receiver that has not switched yet
    assert verifies(new, request)  # a receiver that already has
    assert not verifies(stack.webhook_secret, request)
    # The current secret's signature comes first.
    current_only = dict(request.headers, **{"webhook-signature": first})
    Webhook(new).verify(request.body, current_only)
    [listed] = await endpoints.list_endpoints(conn, owner)
    assert listed.rotated_at is not None


async def test_after_the_overlap_only_the_new_secret_signs(
    conn: asyncpg.Connection, sender: WebhookSender
) -> None:
    owner = tenant()
    async with WebhookReceiver() as rx:
        endpoint, old = await endpoints.add_endpoint(conn, owner, rx.url)
        new = await endpoints.rotate(conn, endpoint.id, overlap_s=1)
        during = await deliver_as_notify(conn, sender, rx, owner)
        await anyio.sleep(1.5)
        assert await endpoints.signing_secrets(conn, owner, rx.url) == [new]
        after = await deliver_as_notify(conn, sender, rx, owner)
        newest = await endpoints.rotate(conn, endpoint.id, overlap_s=0)  # no overlap at all
        assert await endpoints.signing_secrets(conn, owner, rx.url) == [newest]
        stored = await conn.fetch(
            "SELECT secret FROM webhook_secrets WHERE endpoint_id = $1", endpoint.id
        )
    # The expired one was deleted by the rotation; the one it replaced stays until the next.
    assert sorted(r["secret"] for r in stored) == sorted([new, newest])
    assert verifies(old, during)
    assert verifies(new, during)
    assert len(signatures(after)) == 1
    assert verifies(new, after)
    assert not verifies(old, after)


async def test_a_secret_of_one_tenant_never_signs_another_tenants_job(
    stack: Stack, conn: asyncpg.Connection, sender: WebhookSender
) -> None:
    a, b = tenant(), tenant()
    async with WebhookReceiver() as rx:
        _, secret_a = await endpoints.add_endpoint(conn, a, rx.url)
        assert await endpoints.signing_secrets(conn, b, rx.url) == []
        for_b = await deliver_as_notify(conn, sender, rx, b)
        _, secret_b = await endpoints.add_endpoint(conn, b, rx.url)  # same URL, own secret
        for_b_registered = await deliver_as_notify(conn, sender, rx, b)
        for_a = await deliver_as_notify(conn, sender, rx, a)
    assert secret_a != secret_b
    assert verifies(stack.webhook_secret, for_b)
    assert not verifies(secret_a, for_b)
    assert verifies(secret_b, for_b_registered)
    assert not verifies(secret_a, for_b_registered)
    assert verifies(secret_a, for_a)
    assert not verifies(secret_b, for_a)


async def test_urls_match_as_ingest_stores_them(conn: asyncpg.Connection) -> None:
    owner = tenant()
    endpoint, secret = await endpoints.add_endpoint(conn, owner, "HTTP://Hooks.Example.COM:80")
    assert endpoint.url == "http://hooks.example.com/"  # what pydantic's AnyUrl makes of it
    for spelling in ("http://hooks.example.com/", "http://hooks.example.com"):
        assert await endpoints.signing_secrets(conn, owner, spelling) == [secret]
    assert await endpoints.signing_secrets(conn, owner, "http://hooks.example.com/x") == []
    assert await endpoints.signing_secrets(conn, owner, "not a url") == []
    with pytest.raises(ValueError, match="already registered"):
        await endpoints.add_endpoint(conn, owner, "http://hooks.example.com/")
    with pytest.raises(ValueError, match="http"):
        await endpoints.add_endpoint(conn, owner, "ftp://hooks.example.com/")
    with pytest.raises(ValueError, match="tenant"):
        await endpoints.add_endpoint(conn, "a b", "http://hooks.example.com/")


async def test_remove_and_unknown_endpoints(conn: asyncpg.Connection) -> None:
    owner = tenant()
    endpoint, _ = await endpoints.add_endpoint(conn, owner, "http://remove.example/")
    assert await endpoints.remove_endpoint(conn, endpoint.id)
    assert await endpoints.signing_secrets(conn, owner, "http://remove.example/") == []
    assert await endpoints.list_endpoints(conn, owner) == []
    assert not await endpoints.remove_endpoint(conn, endpoint.id)
    with pytest.raises(endpoints.UnknownEndpoint):
        await endpoints.rotate(conn, endpoint.id, 60)
    with pytest.raises(ValueError, match="overlap"):
        await endpoints.rotate(conn, endpoint.id, -1)


@pytest.mark.parametrize(
    "given",
    [[], "whsec_" + base64.b64encode(bytes(32)).decode(), ["whsec_c2hvcnQ="], ["nope"]],
    ids=["empty", "a-bare-string", "too-short", "no-prefix"],
)
async def test_bad_signing_secrets_are_refused_without_quoting_them(
    sender: WebhookSender, given: Sequence[str]
) -> None:
    with pytest.raises(InvalidSecret) as caught:
        await sender.deliver(
            "http://127.0.0.1:9/", webhook_id="msg_x", event_type="e", data={}, secrets=given
        )
    for secret in [given] if isinstance(given, str) else given:
        assert secret not in str(caught.value)


# -- the notify service itself -----------------------------------------------------------------


async def test_the_notify_service_signs_with_the_tenants_endpoint_secret(
    stack: Stack, conn: asyncpg.Connection, clean_env: pytest.MonkeyPatch
) -> None:
    own = await add_topology(stack, Topology(prefix="wep", models=(DEFAULT_MODEL,)), seed=False)
    for name, value in own.service_env("notify").items():
        clean_env.setenv(name, value)
    clean_env.setenv("SQS_WAIT_S", "1")
    clean_env.setenv("SHUTDOWN_GRACE_S", "5")
    settings = load_settings(NotifySettings)
    a, b = tenant(), tenant()
    async with WebhookReceiver() as rx:
        _, secret_a = await endpoints.add_endpoint(conn, a, rx.url)
        jobs = {a: uuid.uuid4(), b: uuid.uuid4()}
        async with AwsClients(own.admin) as clients:
            sqs = await clients.sqs()
            queue = await resolve_queue_url(sqs, own.admin, own.topology.notify_queue.name)
            for owner, job_id in jobs.items():
                await conn.execute(
                    """
                    INSERT INTO jobs (id, tenant_id, model, status, callback_url, finished_at)
                    VALUES ($1, $2, 'm', 'succeeded', $3, now())
                    """,
                    job_id,
                    owner,
                    rx.url,
                )
                envelope = Envelope(
                    type=MessageType.JOB_NOTIFICATION,
                    job_id=job_id,
                    tenant=owner,
                    payload=Notification(event="job.succeeded", callback_url=rx.url).model_dump(
                        mode="json"
                    ),
                )
                await sqs.send_message(QueueUrl=queue, MessageBody=envelope.model_dump_json())
        stopping = anyio.Event()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_notify, settings, stopping)
                await rx.wait_for_requests(2, timeout=30)
                stopping.set()
        by_id = {r.headers["webhook-id"]: r for r in rx.requests}
    for_a = by_id[webhook_id_for(jobs[a], "job.succeeded")]
    for_b = by_id[webhook_id_for(jobs[b], "job.succeeded")]
    assert verifies(secret_a, for_a)
    assert not verifies(stack.webhook_secret, for_a)
    assert verifies(stack.webhook_secret, for_b)  # same URL, not registered for tenant b
    assert not verifies(secret_a, for_b)


# -- the command line --------------------------------------------------------------------------


async def webhooks(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(run_module, [CLI, *args], env)


async def test_cli_add_list_rotate_remove(stack: Stack, conn: asyncpg.Connection) -> None:
    env = {"DATABASE_URL": stack.database_url}
    owner = tenant()
    url = f"http://hooks.example/{owner}"

    added = await webhooks(env, "add", "--tenant", owner, "--url", url)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert SECRET.fullmatch(secret), added.stdout
    assert "shown only this once" in added.stderr
    assert secret not in added.stderr
    assert await endpoints.signing_secrets(conn, owner, url) == [secret]
    [endpoint] = await endpoints.list_endpoints(conn, owner)

    again = await webhooks(env, "add", "--tenant", owner, "--url", url)
    assert again.returncode == 2
    assert "already registered" in again.stderr
    assert "whsec_" not in again.stdout + again.stderr

    rotated = await webhooks(env, "rotate", str(endpoint.id), "--overlap-hours", "1")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert SECRET.fullmatch(new), rotated.stdout
    assert new != secret
    assert new not in rotated.stderr
    assert await endpoints.signing_secrets(conn, owner, url) == [new, secret]

    for listed in (await webhooks(env, "list", "--tenant", owner), await webhooks(env, "list")):
        assert listed.returncode == 0, listed.stderr
        output = listed.stdout + listed.stderr
        assert "whsec_" not in output
        for shown in (secret, new):
            assert shown.removeprefix("whsec_")[:12] not in output
    [header, row] = (await webhooks(env, "list", "--tenant", owner)).stdout.splitlines()
    assert header.split() == ["ID", "TENANT", "URL", "CREATED", "ROTATED"]
    assert row.split()[:3] == [str(endpoint.id), owner, url]
    assert row.rstrip().endswith("UTC")  # rotated, and when

    removed = await webhooks(env, "remove", str(endpoint.id))
    assert removed.returncode == 0, removed.stderr
    assert await endpoints.signing_secrets(conn, owner, url) == []
    assert (await webhooks(env, "remove", str(endpoint.id))).returncode == 1
    unknown = await webhooks(env, "rotate", str(endpoint.id))
    assert unknown.returncode == 1
    assert "no webhook endpoint" in unknown.stderr
    assert "whsec_" not in unknown.stdout
    nobody = await webhooks(env, "list", "--tenant", owner)
    assert nobody.stdout.strip() == f"no webhook endpoints for tenant {owner}"


async def test_cli_without_a_database_says_which_variable() -> None:
    missing = await webhooks({}, "list")
    assert missing.returncode == 1
    assert "ADMIN_DATABASE_URL or DATABASE_URL is not set" in missing.stderr


def test_secrets_are_32_random_bytes() -> None:
    made = {endpoints.new_secret() for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
