"""The services' database logins: each service connects as a role of its own.

Migration 0009 creates one NOLOGIN group per service that has a database, holding exactly the
privileges that service's SQL needs (the grants are listed there); the operator, who runs the
migrations, owns every table. A service connects as a login role that is a member of its group
and of nothing else; infer has no database and no role.

    ingest   -> conveyor_ingest
    persist  -> conveyor_persist
    notify   -> conveyor_notify
    observer -> conveyor_observer   (read-only: ``conveyor top``; migration 0010)

:func:`ensure_login` makes such a login, or brings an existing one back to it (new password,
membership, CONNECT on this database; CONNECT is what keeps it out of any other Conveyor
database of the cluster, since the groups are cluster-wide). The password travels as a
SCRAM-SHA-256 verifier computed here, so neither the server nor its statement log ever sees
the plaintext. :func:`login_url` is the service's ``DATABASE_URL`` for a login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from shared.db.pool import Connection

__all__ = [
    "GROUPS",
    "credentials_of",
    "drop_login",
    "ensure_login",
    "login_url",
    "scram_verifier",
]

GROUPS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "ingest": "conveyor_ingest",
        "persist": "conveyor_persist",
        "notify": "conveyor_notify",
        "observer": "conveyor_observer",
    }
)
"""Each identity with a database, and its group role: the services' from migration 0009, the
read-only observer's (``conveyor top``) from 0010."""

_SCRAM_ITERATIONS: Final = 4096  # PostgreSQL's own default (scram_iterations)


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for ``password`` under SCRAM-SHA-256 (RFC 5802, RFC 7677).

    Given as the PASSWORD of CREATE/ALTER ROLE, the server keeps it as it is. ASCII only:
    the server would SASLprep-normalise other text, which this does not do.
    """
    if not password.isascii() or not password.isprintable():
        raise ValueError("a database password here is printable ASCII")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def login_url(url: str, user: str, password: str) -> str:
    """``url`` (the operator's) with ``user`` and ``password`` in place of its credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    query = [
        (name, value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if name not in ("user", "password")
    ]
    return urllib.parse.urlunsplit(
        parts._replace(netloc=f"{userinfo}@{host}", query=urllib.parse.urlencode(query, safe="/"))
    )


def credentials_of(url: str) -> tuple[str, str | None]:
    """The user and the password (None when it has none) that a database URL names."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    user = urllib.parse.unquote(parts.username) if parts.username else query.get("user", "")
    password = urllib.parse.unquote(parts.password) if parts.password else query.get("password")
    return user, password or None


async def _statement(conn: Connection, template: str, *values: str | None) -> None:
    """Run ``template`` with ``values`` put in by the server's ``format()`` (``%I`` quotes an
    identifier, ``%L`` a literal): names and passwords cannot be parameters of DDL."""
    placeholders = "".join(f", ${i}::text" for i in range(2, len(values) + 2))
    sql = await conn.fetchval(f"SELECT format($1::text{placeholders})", template, *values)
    await conn.execute(sql)


async def ensure_login(conn: Connection, service: str, user: str, password: str | None) -> None:
    """Make ``user`` the login of ``service`` with ``password``; idempotent. A None password
    leaves it none (it can sign in only where the server trusts the connection: a socket).

    ``conn`` is the operator's (it needs CREATEROLE and ADMIN on the group, which the role
    that ran migration 0009 has). ValueError when ``user`` cannot be a service login: the
    operator itself, a group, a role with powers (superuser, CREATEROLE...), or one that is a
    member of another role (say, another service's group).
    """
    if not user:
        raise ValueError(f"the {service} service's login needs a user name")
    if service not in GROUPS:
        raise ValueError(f"{service!r} has no database role; one of {', '.join(GROUPS)}")
    group = GROUPS[service]
    if user in GROUPS.values():
        raise ValueError(f"{user} is a group role; give the {service} service a login of its own")
    async with conn.transaction():
        if user == await conn.fetchval("SELECT current_user"):
            raise ValueError(f"{user} is the operator's role; {service} needs a login of its own")
        existing = await conn.fetchrow(
            """
            SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication
                       OR r.rolbypassrls AS powerful,
                   ARRAY(SELECT g.rolname FROM pg_auth_members m
                         JOIN pg_roles g ON g.oid = m.roleid
                         WHERE m.member = r.oid) AS groups
            FROM pg_roles r WHERE r.rolname = $1
            """,
            user,
        )
        verifier = None if password is None else scram_verifier(password)
        if existing is None:
            await _statement(conn, "CREATE ROLE %I LOGIN PASSWORD %L", user, verifier)
        else:
            if existing["powerful"]:
                raise ValueError(
                    f"{user} may create roles or databases, replicate, bypass row security or "
                    "is a superuser: a service's login may not"
                )
            others = sorted(set(existing["groups"]) - {group})
            if others:
                raise ValueError(
                    f"{user} is already a member of {', '.join(others)}: a service's login is "
                    "a member of its own group only"
                )
            await _statement(conn, "ALTER ROLE %I LOGIN PASSWORD %L", user, verifier)
        if group not in (existing["groups"] if existing else []):
            await _statement(conn, "GRANT %I TO %I", group, user)
        database = await conn.fetchval("SELECT current_database()")
        await _statement(conn, "GRANT CONNECT ON DATABASE %I TO %I", database, user)


async def drop_login(conn: Connection, user: str) -> None:
    """Remove a login :func:`ensure_login` made (its CONNECT here with it); absent is fine."""
    async with conn.transaction():
        if await conn.fetchval("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", user):
            await _statement(conn, "DROP OWNED BY %I", user)
            await _statement(conn, "DROP ROLE %I", user)
