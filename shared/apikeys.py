"""API keys: what a client presents to the HTTP API, and the tenant each one belongs to.

A key reads ``cvk_<id>_<secret>`` (64 characters):

    cvk_      a recognisable prefix, so that people and secret scanners can tell what leaked
    <id>      16 lowercase hex characters (8 random bytes): the key's public id, by which it is
              looked up, listed and revoked
    <secret>  ``secrets.token_urlsafe(32)``: 32 random bytes as 43 base64url characters

The whole key is returned once, by :func:`create_key`; the ``api_keys`` table keeps only the
SHA-256 of it. :func:`authenticate` finds the row by the id, compares hashes with
:func:`hmac.compare_digest` and answers the key's tenant, or None for anything else (malformed,
unknown, wrong secret, revoked) without saying which. Nothing here logs a key, and no value
this module returns holds one except the plaintext of :func:`create_key`.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

import asyncpg

from shared.db.pool import Connection

__all__ = [
    "KEY_PREFIX",
    "LAST_USED_RESOLUTION",
    "KeyRecord",
    "authenticate",
    "create_key",
    "key_id_of",
    "list_keys",
    "revoke_key",
]

KEY_PREFIX: Final = "cvk_"
LAST_USED_RESOLUTION: Final = datetime.timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key, not on every request."""

_ID_BYTES: Final = 8
_SECRET_BYTES: Final = 32
_KEY = re.compile(r"cvk_(?P<id>[0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_KEY_CHARS: Final = 64
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_NAME_CHARS: Final = 100


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known of a key besides its secret: safe to print, list and log."""

    id: str
    tenant: str
    name: str
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None
    last_used_at: datetime.datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _hash(key: str) -> bytes:
    # A fast hash is the right one here. bcrypt, scrypt and argon2 are slow on purpose, to make
    # guessing a low-entropy password from its hash expensive; a 256-bit random secret cannot be
    # guessed at any speed, so their cost (tens of milliseconds of CPU on every request, and a
    # lever for denial of service) would buy nothing. For the same reason a server-side pepper
    # (HMAC with a key kept outside the database) adds no protection worth its key management.
    # The hash covers the whole key, id included, so a row's hash only matches its own id.
    return hashlib.sha256(key.encode("ascii")).digest()


def key_id_of(presented: str) -> str | None:
    """The public id of a string shaped like a key, else None (never any part of the secret)."""
    if len(presented) != _KEY_CHARS:
        return None
    match = _KEY.fullmatch(presented)
    return None if match is None else match["id"]


async def create_key(conn: Connection, tenant: str, name: str = "") -> tuple[str, KeyRecord]:
    """A new key for ``tenant``: its plaintext, to be shown once, and its record.

    ``tenant``: 1-64 of letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit;
    ``name``: a label for people, at most 100 printable characters. Raises ValueError otherwise.
    """
    if not _TENANT.fullmatch(tenant):
        raise ValueError(
            "a tenant is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if len(name) > _MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"a key's name is at most {_MAX_NAME_CHARS} printable characters")
    key_id = secrets.token_hex(_ID_BYTES)
    plaintext = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    row = await conn.fetchrow(
        """
        INSERT INTO api_keys (id, tenant_id, name, key_hash) VALUES ($1, $2, $3, $4)
        RETURNING id, tenant_id, name, created_at, revoked_at, last_used_at
        """,
        key_id,
        tenant,
        name,
        _hash(plaintext),
    )
    assert row is not None
    return plaintext, _record(row)


async def list_keys(conn: Connection, tenant: str | None = None) -> list[KeyRecord]:
    """Every key (of ``tenant`` when given), revoked ones included, oldest first."""
    rows = await conn.fetch(
        """
        SELECT id, tenant_id, name, created_at, revoked_at, last_used_at FROM api_keys
        WHERE $1::text IS NULL OR tenant_id = $1
        ORDER BY tenant_id, created_at, id
        """,
        tenant,
    )
    return [_record(row) for row in rows]


async def revoke_key(conn: Connection, key_id: str) -> bool:
    """Revoke the key ``key_id`` at once; False when no such key was still active."""
    revoked = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        key_id,
    )
    return revoked is not None


async def authenticate(conn: Connection, presented: str) -> str | None:
    """The tenant of the active key ``presented``, or None: malformed, unknown, wrong, revoked.

    Marks the key used, writing ``last_used_at`` at most once per :data:`LAST_USED_RESOLUTION`
    rather than once per request.
    """
    key_id = key_id_of(presented)
    if key_id is None:
        return None
    row = await conn.fetchrow(
        """
        SELECT tenant_id, key_hash, revoked_at IS NOT NULL AS revoked,
               last_used_at IS NULL OR last_used_at < now() - $2::interval AS stale
        FROM api_keys WHERE id = $1
        """,
        key_id,
        LAST_USED_RESOLUTION,
    )
    if row is None or not hmac.compare_digest(row["key_hash"], _hash(presented)):
        return None
    if row["revoked"]:
        return None
    if row["stale"]:
        # The condition again: of concurrent requests, one writes and the others match nothing.
        await conn.execute(
            """
            UPDATE api_keys SET last_used_at = now()
            WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)
            """,
            key_id,
            LAST_USED_RESOLUTION,
        )
    tenant: str = row["tenant_id"]
    return tenant


def _record(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )
