"""LocalStack in a container (testcontainers), where a Docker engine answers.

Current LocalStack images need ``LOCALSTACK_AUTH_TOKEN``; it is passed through from the
environment. ``ENFORCE_IAM=1`` turns IAM enforcement on; LocalStack's root credentials
(``test``/``test``) remain allowed everything and serve as the administrator.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from emulator.backend import AwsEndpoint, BackendUnavailable
from emulator.docker import docker_unavailable_reason
from shared.aws.provision import AccessKey

__all__ = ["LocalStackBackend"]

DEFAULT_IMAGE = "localstack/localstack:4"


class LocalStackBackend:
    name = "localstack"

    def __init__(self, *, region: str = "us-east-1", image: str = DEFAULT_IMAGE) -> None:
        self.region = region
        self.image = image
        self._container: Any = None

    async def start(self) -> AwsEndpoint:
        reason = docker_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"the localstack backend needs Docker: {reason}")
        from testcontainers.localstack import LocalStackContainer

        container: Any = LocalStackContainer(image=self.image, region_name=self.region)
        container.with_env("ENFORCE_IAM", "1").with_env("SERVICES", "sqs,s3,iam,sts")
        token = os.environ.get("LOCALSTACK_AUTH_TOKEN")
        if token:
            container.with_env("LOCALSTACK_AUTH_TOKEN", token)
        # Publish on loopback only: the emulator is never reachable from the network.
        container.with_bind_ports(4566, ("127.0.0.1", 0))
        self._container = container
        await anyio.to_thread.run_sync(container.start)
        return AwsEndpoint(
            url=container.get_url(),
            region=self.region,
            admin=AccessKey("test", "test"),
            enforces_iam=True,
        )

    async def aclose(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(container.stop)
