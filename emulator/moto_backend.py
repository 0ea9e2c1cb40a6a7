"""moto's server, in this process, on 127.0.0.1, with IAM enforced.

Enforcement is moto's ``INITIAL_NO_AUTH_ACTION_COUNT`` mechanism, driven through its
``/moto-api/reset-auth`` endpoint: with enforcement off we create one administrator user and
key, then turn enforcement on, so from then on every call, provisioning included, is signed by
a known IAM identity and checked against its policies.

moto keeps its state in module globals, so one process holds one moto emulator at a time.
"""

from __future__ import annotations

import json
import threading

import anyio
import httpx

from emulator import moto_clock, moto_fidelity, moto_speed
from emulator.backend import AwsEndpoint
from emulator.moto_server import MotoServer
from shared.aws.clients import AwsClients
from shared.aws.provision import AccessKey
from shared.config import AwsSettings

__all__ = ["MotoBackend"]

ADMIN_USER = "conveyor-emulator-admin"
_ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
_in_use = threading.Lock()


class MotoBackend:
    name = "moto"

    def __init__(
        self, *, region: str = "us-east-1", enforce_iam: bool = True, fast_clock: bool = True
    ) -> None:
        self.region = region
        self.enforce_iam = enforce_iam
        self.fast_clock = fast_clock
        self._server: MotoServer | None = None
        self._url: str | None = None
        self._holding = False

    async def start(self) -> AwsEndpoint:
        if not _in_use.acquire(blocking=False):
            raise RuntimeError(
                "a moto emulator is already running in this process (moto's state is global); "
                "share it, or use the 'external' backend to reach one in another process"
            )
        self._holding = True
        try:
            return await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> AwsEndpoint:
        moto_fidelity.install()
        moto_speed.install()
        if self.fast_clock:
            moto_clock.install()
        server = MotoServer("127.0.0.1", 0)
        self._server = server
        await anyio.to_thread.run_sync(server.start)
        self._url = url = server.url
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            (await http.post("/moto-api/reset")).raise_for_status()
            (await http.post("/moto-api/reset-auth", content=b"inf")).raise_for_status()
            admin = await self._create_admin(url)
            if self.enforce_iam:
                (await http.post("/moto-api/reset-auth", content=b"0")).raise_for_status()
        return AwsEndpoint(url=url, region=self.region, admin=admin, enforces_iam=self.enforce_iam)

    async def _create_admin(self, url: str) -> AccessKey:
        # Enforcement is off at this point, so any key signs these three calls.
        bootstrap = AwsSettings(
            endpoint_url=url,
            region=self.region,
            access_key_id="bootstrap",
            secret_access_key="bootstrap",  # noqa: S106
        )
        async with AwsClients(bootstrap) as clients:
            iam = await clients.iam()
            await iam.create_user(UserName=ADMIN_USER)
            await iam.put_user_policy(
                UserName=ADMIN_USER, PolicyName="admin", PolicyDocument=json.dumps(_ADMIN_POLICY)
            )
            key = (await iam.create_access_key(UserName=ADMIN_USER))["AccessKey"]
        return AccessKey(key["AccessKeyId"], key["SecretAccessKey"])

    async def aclose(self) -> None:
        if not self._holding:
            return
        server, self._server = self._server, None
        try:
            if server is not None and self._url is not None:
                with anyio.move_on_after(5, shield=True):
                    async with httpx.AsyncClient(base_url=self._url, timeout=5) as http:
                        # Back to moto's defaults: no enforcement, no state.
                        await http.post("/moto-api/reset-auth", content=b"inf")
                        await http.post("/moto-api/reset")
            if server is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(server.stop)
        finally:
            self._url = None
            self._holding = False
            _in_use.release()
