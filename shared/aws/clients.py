"""AWS clients for one set of credentials, as one async resource."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import aioboto3
from anyio.abc import AsyncResource
from botocore.config import Config

from shared.aws.instrument import instrument
from shared.config import AwsSettings

if TYPE_CHECKING:
    from types_aiobotocore_iam import IAMClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sts import STSClient

__all__ = ["AwsClients", "client_config"]

# The read timeout must outlast SQS long polling (WaitTimeSeconds up to 20 s).
LONG_POLL_READ_TIMEOUT_S = 30


def client_config(max_pool_connections: int = 32) -> Config:
    return Config(
        connect_timeout=5,
        read_timeout=LONG_POLL_READ_TIMEOUT_S,
        retries={"mode": "standard", "max_attempts": 4},
        max_pool_connections=max_pool_connections,
    )


class AwsClients(AsyncResource):
    """SQS, S3, IAM and STS clients sharing one session; ``aclose`` is safe to call twice.

    Clients are opened on first use, so a service only connects to what it needs.
    """

    def __init__(self, aws: AwsSettings) -> None:
        self.settings = aws
        self._session = aioboto3.Session(
            aws_access_key_id=aws.access_key_id,
            aws_secret_access_key=aws.secret_access_key,
            region_name=aws.region,
        )
        self._stack = AsyncExitStack()
        self._clients: dict[str, object] = {}

    async def _client(self, name: str) -> object:
        if name not in self._clients:
            ctx = self._session.client(  # type: ignore[call-overload]
                name, endpoint_url=self.settings.endpoint_url, config=client_config()
            )
            client = await self._stack.enter_async_context(ctx)
            instrument(client)  # every call timed and its failures counted
            self._clients[name] = client
        return self._clients[name]

    async def sqs(self) -> SQSClient:
        return await self._client("sqs")  # type: ignore[return-value]

    async def s3(self) -> S3Client:
        return await self._client("s3")  # type: ignore[return-value]

    async def iam(self) -> IAMClient:
        return await self._client("iam")  # type: ignore[return-value]

    async def sts(self) -> STSClient:
        return await self._client("sts")  # type: ignore[return-value]

    async def aclose(self) -> None:
        self._clients.clear()
        await self._stack.aclose()
