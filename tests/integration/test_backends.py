"""Backends other than the default: LocalStack and container PostgreSQL need Docker."""

import anyio
import pytest

from emulator import BackendUnavailable, Emulator, EmulatorOptions, Stack
from emulator.docker import docker_unavailable_reason
from shared.aws import AwsClients, aws_errors
from shared.errors import AccessDenied
from shared.topology import Topology
from tests.processes import run_module

pytestmark = pytest.mark.anyio

NO_DOCKER = docker_unavailable_reason()


def _containers_unavailable_reason(images: tuple[str, ...]) -> str | None:
    """Why the container backends cannot run here even with an engine: they publish ports
    through the bridge network, and tests pull nothing (no registry is reached from a test)."""
    if NO_DOCKER is not None:
        return f"LocalStack needs Docker: {NO_DOCKER}"
    import docker
    import docker.errors

    client = docker.from_env(timeout=10)
    try:
        if not client.networks.list(names=["bridge"]):
            return "the Docker engine has no bridge network (dockerd --bridge=none, as in CI)"
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                return f"image {image} is not on this engine (tests pull nothing)"
    finally:
        client.close()
    return None


NO_CONTAINERS = _containers_unavailable_reason(("localstack/localstack:4", "postgres:16-alpine"))


async def test_localstack_refuses_clearly_without_docker() -> None:
    if NO_DOCKER is None:
        pytest.skip("a Docker engine answers here; the refusal path cannot be exercised")
    with pytest.raises(BackendUnavailable, match="needs Docker"):
        await Emulator(EmulatorOptions(aws="localstack")).start()


@pytest.mark.docker
@pytest.mark.skipif(NO_CONTAINERS is not None, reason=str(NO_CONTAINERS))
async def test_localstack_enforces_iam() -> None:
    with anyio.fail_after(300):
        async with Emulator(
            EmulatorOptions(aws="localstack", postgres="container", topology=Topology(prefix="ls"))
        ) as stack:
            aws = stack.aws_settings("ingest")
            async with AwsClients(aws) as clients:
                sqs = await clients.sqs()
                await sqs.send_message(
                    QueueUrl=stack.provisioned.queue_urls[stack.topology.infer_queues[0].name],
                    MessageBody="{}",
                )
                with pytest.raises(AccessDenied), aws_errors(aws):
                    await sqs.send_message(
                        QueueUrl=stack.provisioned.queue_urls[stack.topology.results_queue.name],
                        MessageBody="{}",
                    )


async def test_provision_command_creates_a_stack_on_an_external_endpoint(stack: Stack) -> None:
    """`conveyor provision`, the fix every missing-resource error names, really provisions."""
    env = {
        **stack.common_env(),
        **stack.credential_env("admin"),
        "CONVEYOR_PREFIX": "provcmd",
        "CONVEYOR_MODELS": "tiny",
    }
    result = await anyio.to_thread.run_sync(run_module, ["conveyor", "provision"], env)
    assert result.returncode == 0, result.stderr
    for name in (
        "provcmd-infer-tiny",
        "provcmd-infer-tiny-dlq",
        "provcmd-results",
        "provcmd-notify",
    ):
        assert f"queue  {name}  " in result.stdout
    assert "bucket provcmd-models" in result.stdout
    # The stack's database is already migrated: provisioning it again changes nothing.
    assert "migrations applied: none (up to date)" in result.stdout
