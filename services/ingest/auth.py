"""API-key authentication: every /v1 route needs ``Authorization: Bearer <key>``, and the key
names the tenant the request acts for (:mod:`shared.apikeys` holds the keys).

    no Authorization header, or not Bearer   401 "an API key is required ..."
    a malformed, unknown, wrong or revoked key  401 "the API key is not valid ..."
    the key store does not answer            503 with Retry-After

Both 401s carry ``WWW-Authenticate: Bearer`` (RFC 6750). The presented key is never echoed,
nor logged: a refusal logs the key's public id, and only when the string has the shape of a key.

:class:`ApiKeyAuth` is the FastAPI dependency that routes take their tenant from; through
:data:`bearer` it declares the bearer scheme in the OpenAPI description. How a key becomes a
tenant is a :data:`TenantOf`, by default :func:`key_tenants` (the ``api_keys`` table).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Final

import asyncpg
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from shared import apikeys
from shared.telemetry import get_logger

__all__ = ["ApiKeyAuth", "TenantOf", "bearer", "key_tenants"]

TenantOf = Callable[[str], Awaitable[str | None]]
"""The tenant of a presented API key, or None when the key is not valid."""

RETRY_AFTER_S: Final = 5
MISSING: Final = "an API key is required: send the header 'Authorization: Bearer <key>'"
INVALID: Final = "the API key is not valid (malformed, unknown or revoked)"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="cvk_<id>_<secret>",
    description="An API key, `Authorization: Bearer cvk_...`; it names the caller's tenant.",
)

log = get_logger("ingest")

# asyncpg's failures to reach or use the database (OSError: refused, no socket; TimeoutError:
# no connection free in time), as opposed to bugs, which stay 500s.
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def key_tenants(pool: asyncpg.Pool) -> TenantOf:
    """Keys checked against the ``api_keys`` table through ``pool``."""

    async def tenant_of(presented: str) -> str | None:
        async with pool.acquire() as conn:
            return await apikeys.authenticate(conn, presented)

    return tenant_of


class ApiKeyAuth:
    """The dependency that answers the request's tenant, or refuses it as the module says."""

    def __init__(self, tenant_of: TenantOf) -> None:
        self.tenant_of = tenant_of

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> str:
        if credentials is None:
            raise HTTPException(401, MISSING, headers={"WWW-Authenticate": "Bearer"})
        presented = credentials.credentials
        try:
            tenant = await self.tenant_of(presented)
        except _UNAVAILABLE as exc:
            log.warning("api key check failed", error_type=type(exc).__name__)
            raise HTTPException(
                503,
                "the API key could not be checked; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        if tenant is None:
            log.info("api key refused", key_id=apikeys.key_id_of(presented))
            raise HTTPException(
                401, INVALID, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return tenant
