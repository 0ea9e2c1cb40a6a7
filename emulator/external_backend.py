"""An AWS endpoint that someone else runs: real AWS, or an emulator in another process."""

from __future__ import annotations

from emulator.backend import AwsEndpoint
from shared.aws.provision import AccessKey

__all__ = ["ExternalBackend"]


class ExternalBackend:
    name = "external"

    def __init__(
        self,
        *,
        url: str | None,
        region: str,
        admin: AccessKey | None = None,
        enforces_iam: bool = False,
    ) -> None:
        self._endpoint = AwsEndpoint(url=url, region=region, admin=admin, enforces_iam=enforces_iam)

    async def start(self) -> AwsEndpoint:
        return self._endpoint

    async def aclose(self) -> None:
        return None
