"""The emulator stands up the whole topology, on loopback, with IAM enforced."""

import json
import urllib.parse

import pytest

from emulator import Stack
from shared.aws import AwsClients
from shared.topology import SERVICES, Arns

pytestmark = pytest.mark.anyio


async def test_every_queue_has_its_dlq_and_redrive_policy(stack: Stack) -> None:
    topology = stack.topology
    arns = Arns(stack.endpoint.region, stack.provisioned.account_id)
    async with AwsClients(stack.admin) as clients:
        sqs = await clients.sqs()
        listed = set((await sqs.list_queues(QueueNamePrefix=topology.prefix))["QueueUrls"])
        for queue in topology.queues:
            url = (await sqs.get_queue_url(QueueName=queue.name))["QueueUrl"]
            dlq_url = (await sqs.get_queue_url(QueueName=queue.dlq_name))["QueueUrl"]
            assert {url, dlq_url} <= listed
            attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))[
                "Attributes"
            ]
            redrive = json.loads(attributes["RedrivePolicy"])
            assert redrive["deadLetterTargetArn"] == arns.queue(queue.dlq_name)
            assert int(redrive["maxReceiveCount"]) == queue.max_receive_count
            dlq_attributes = (
                await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])
            )["Attributes"]
            assert int(dlq_attributes["MessageRetentionPeriod"]) > int(
                attributes["MessageRetentionPeriod"]
            )
            assert "RedrivePolicy" not in dlq_attributes
        # Nothing but the topology's queues was created.
        assert len(listed) == 2 * len(topology.queues)


async def test_buckets_and_iam_users_exist(stack: Stack) -> None:
    async with AwsClients(stack.admin) as clients:
        s3 = await clients.s3()
        names = {b["Name"] for b in (await s3.list_buckets())["Buckets"]}
        assert {b.name for b in stack.topology.buckets} <= names
        lifecycle = await s3.get_bucket_lifecycle_configuration(
            Bucket=stack.topology.payloads_bucket.name
        )
        assert lifecycle["Rules"][0]["Expiration"]["Days"] == stack.topology.payload_expiry_days
        iam = await clients.iam()
        for service in SERVICES:
            user = stack.topology.user_name(service)
            policy = await iam.get_user_policy(UserName=user, PolicyName=user)
            assert policy["PolicyDocument"]["Statement"]
            keys = (await iam.list_access_keys(UserName=user))["AccessKeyMetadata"]
            assert [k["AccessKeyId"] for k in keys] == [
                stack.provisioned.credentials[service].access_key_id
            ]


async def test_emulator_listens_on_loopback_only(stack: Stack) -> None:
    assert stack.endpoint.url is not None
    assert urllib.parse.urlsplit(stack.endpoint.url).hostname == "127.0.0.1"
    assert stack.endpoint.enforces_iam
    assert "host=/" in stack.database_url  # embedded PostgreSQL: a Unix socket, no TCP port


async def test_service_env_carries_only_its_own_keys(stack: Stack) -> None:
    env = stack.service_env("persist")
    assert (
        env["PERSIST_AWS_ACCESS_KEY_ID"] == stack.provisioned.credentials["persist"].access_key_id
    )
    assert not any(k.startswith(("INGEST_", "INFER_", "NOTIFY_", "ADMIN_")) for k in env)
    exports = stack.exports()
    for service in (*SERVICES, "admin"):
        assert any(
            line.startswith(f"export {service.upper()}_AWS_ACCESS_KEY_ID=") for line in exports
        )


async def test_provisioning_again_is_idempotent(stack: Stack) -> None:
    from shared.aws.provision import provision

    async with AwsClients(stack.admin) as clients:
        again = await provision(clients, stack.topology)
    assert again.queue_urls == {name: url for name, url in stack.provisioned.queue_urls.items()}


async def test_embedded_postgres_on_a_loopback_port_requires_passwords(stack: Stack) -> None:
    """``--postgres-port``: for service containers on the host network. Services log in over
    TCP with their passwords; nobody gets in over TCP without one (the operator's login has
    none, so it stays on the private socket)."""
    import asyncpg

    from emulator.harness import Emulator, EmulatorOptions
    from shared.errors import ConfigError
    from shared.topology import Topology

    options = EmulatorOptions(  # moto is one per process: this stack's AWS side is the shared one
        topology=Topology(prefix="pgtcp"),
        aws="external",
        external_url=stack.endpoint.url,
        external_admin=stack.endpoint.admin,
        postgres_port=0,
        seed_default_model=False,
    )
    async with Emulator(options) as stack:
        persist = urllib.parse.urlsplit(stack.service_env("persist")["PERSIST_DATABASE_URL"])
        assert persist.hostname == "127.0.0.1" and persist.port
        conn = await asyncpg.connect(persist.geturl())
        try:
            assert (await conn.fetchval("SELECT current_user")) == persist.username
        finally:
            await conn.close()
        refused = [
            persist._replace(netloc=f"{persist.username}:wrong@127.0.0.1:{persist.port}"),
            persist._replace(netloc=f"postgres@127.0.0.1:{persist.port}"),
        ]
        for url in refused:
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(url.geturl())
        admin = await asyncpg.connect(stack.database_url)  # the socket, as before
        await admin.close()
    with pytest.raises(ConfigError, match="embedded PostgreSQL only"):
        await Emulator(EmulatorOptions(postgres_port=0, database_url="postgresql://x/y")).start()
