"""Webhook endpoints a tenant registers, and their signing secrets (migration 0008).

Registering an endpoint is how a tenant gets its own signing secret: a job whose
``callback_url`` is registered for the job's tenant is signed with that endpoint's secrets;
any other callback is signed with the stack's ``NOTIFY_WEBHOOK_SECRET``.

An endpoint has one current secret and, after :func:`rotate`, old ones that keep signing next
to it until their overlap ends: during the overlap every delivery carries one signature per
secret (space-separated, the current one first, as Standard Webhooks allows), so a receiver
can switch secrets whenever it likes within the overlap.

Secrets are stored as they are, because notify must sign with them. Production would encrypt
them at rest (e.g. KMS envelope encryption); this is not done here. Nothing in this module
logs a secret, and :func:`list_endpoints` never returns one.

URLs are matched exactly, after the same normalisation the ingest API applies to a job's
``callback_url`` (pydantic ``AnyUrl``: lower-case scheme and host, default port dropped, a bare
host gets a ``/`` path), so ``http://example.com`` registered matches a job submitted with
``http://example.com/``.
"""

from __future__ import annotations

import base64
import datetime
import math
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Final

from pydantic import AnyUrl, TypeAdapter, UrlConstraints, ValidationError

from shared.db import Connection

__all__ = [
    "Endpoint",
    "UnknownEndpoint",
    "add_endpoint",
    "list_endpoints",
    "new_secret",
    "normalise_url",
    "remove_endpoint",
    "rotate",
    "signing_secrets",
]

MAX_URL_CHARS: Final = 2048
SECRET_BYTES: Final = 32
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_URL: TypeAdapter[AnyUrl] = TypeAdapter(
    Annotated[
        AnyUrl,
        UrlConstraints(
            max_length=MAX_URL_CHARS, allowed_schemes=["http", "https"], host_required=True
        ),
    ]
)


class UnknownEndpoint(LookupError):
    """No webhook endpoint has this id."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registered endpoint. Holds no secret."""

    id: int
    tenant: str
    url: str
    created_at: datetime.datetime
    rotated_at: datetime.datetime | None = None
    """When its current secret was made, if that was by a rotation."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def normalise_url(url: str) -> str:
    """``url`` as ingest stores a callback_url; ValueError (not quoting it) when it is not one."""
    try:
        return str(_URL.validate_python(url))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ValueError(f"not an absolute http(s) URL: {first['msg']}") from None


async def add_endpoint(conn: Connection, tenant: str, url: str) -> tuple[Endpoint, str]:
    """Register ``url`` for ``tenant`` with a new current secret; the secret is returned once.

    ValueError for a malformed tenant or URL, or a URL already registered for the tenant.
    """
    if not _TENANT.fullmatch(tenant):
        raise ValueError(
            "a tenant is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    normalised = normalise_url(url)
    secret = new_secret()
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO webhook_endpoints (tenant_id, url) VALUES ($1, $2)
            ON CONFLICT (tenant_id, url) DO NOTHING
            RETURNING id, tenant_id, url, created_at
            """,
            tenant,
            normalised,
        )
        if row is None:
            raise ValueError(f"this URL is already registered for tenant {tenant}")
        await conn.execute(
            "INSERT INTO webhook_secrets (endpoint_id, secret) VALUES ($1, $2)", row["id"], secret
        )
    return Endpoint(row["id"], row["tenant_id"], row["url"], row["created_at"]), secret


async def rotate(conn: Connection, endpoint_id: int, overlap_s: float) -> str:
    """Give the endpoint a new current secret and return it (once).

    The old current secret keeps signing for ``overlap_s`` more seconds (0: it stops now);
    older secrets keep their own expiry, and those already expired are deleted.
    UnknownEndpoint when there is no such endpoint.
    """
    if not (math.isfinite(overlap_s) and overlap_s >= 0):
        raise ValueError(f"overlap_s must be a non-negative number of seconds, got {overlap_s}")
    secret = new_secret()
    async with conn.transaction():
        # The row lock serialises two rotations of one endpoint.
        found = await conn.fetchval(
            "SELECT id FROM webhook_endpoints WHERE id = $1 FOR UPDATE", endpoint_id
        )
        if found is None:
            raise UnknownEndpoint(f"no webhook endpoint {endpoint_id}")
        # Secrets whose overlap has ended sign nothing: keep no more of them than needed.
        await conn.execute(
            "DELETE FROM webhook_secrets WHERE endpoint_id = $1 AND expires_at <= now()",
            endpoint_id,
        )
        await conn.execute(
            """
            UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2)
            WHERE endpoint_id = $1 AND expires_at IS NULL
            """,
            endpoint_id,
            float(overlap_s),
        )
        await conn.execute(
            "INSERT INTO webhook_secrets (endpoint_id, secret) VALUES ($1, $2)",
            endpoint_id,
            secret,
        )
    return secret


async def list_endpoints(conn: Connection, tenant: str | None = None) -> list[Endpoint]:
    """Endpoints, oldest first, of one tenant or of all; never their secrets."""
    rows = await conn.fetch(
        """
        SELECT e.id, e.tenant_id, e.url, e.created_at,
               -- A rotation leaves the secret it replaced (see rotate): the newest is current.
               (SELECT CASE WHEN count(*) > 1 THEN max(s.created_at) END
                FROM webhook_secrets AS s WHERE s.endpoint_id = e.id) AS rotated_at
        FROM webhook_endpoints AS e
        WHERE $1::text IS NULL OR e.tenant_id = $1
        ORDER BY e.created_at, e.id
        """,
        tenant,
    )
    return [
        Endpoint(r["id"], r["tenant_id"], r["url"], r["created_at"], r["rotated_at"]) for r in rows
    ]


async def signing_secrets(conn: Connection, tenant: str, url: str) -> list[str]:
    """The secrets to sign a delivery of ``tenant``'s job to ``url`` with: the current one
    first, then old ones not yet expired (newest first). Empty when ``url`` is not registered
    for ``tenant`` (the caller then signs with the stack's secret)."""
    try:
        normalised = normalise_url(url)
    except ValueError:
        return []
    rows = await conn.fetch(
        """
        SELECT s.secret
        FROM webhook_secrets AS s
        JOIN webhook_endpoints AS e ON e.id = s.endpoint_id
        WHERE e.tenant_id = $1 AND e.url = $2
          AND (s.expires_at IS NULL OR s.expires_at > now())
        ORDER BY s.expires_at IS NULL DESC, s.created_at DESC, s.id DESC
        """,
        tenant,
        normalised,
    )
    return [str(r["secret"]) for r in rows]


async def remove_endpoint(conn: Connection, endpoint_id: int) -> bool:
    """Delete the endpoint and its secrets; False when there was no such endpoint. Its jobs'
    callbacks are then signed with the stack's secret."""
    removed = await conn.fetchval(
        "DELETE FROM webhook_endpoints WHERE id = $1 RETURNING true", endpoint_id
    )
    return bool(removed)
