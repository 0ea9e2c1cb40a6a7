"""``python -m conveyor.cli.keys`` (``conveyor keys``) as the operator runs it."""

import re
import subprocess
import uuid

import anyio
import asyncpg
import pytest

from emulator import Stack
from shared.apikeys import authenticate
from tests.processes import run_module

pytestmark = pytest.mark.anyio

CLI = "conveyor.cli.keys"
KEY = re.compile(r"cvk_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")


async def keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(run_module, [CLI, *args], env)


def cells(line: str) -> list[str]:
    """A line of ``list``'s table: its columns are two or more spaces apart."""
    return re.split(r" {2,}", line.strip())


async def tenant_of(stack: Stack, key: str) -> str | None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await authenticate(conn, key)
    finally:
        await conn.close()


async def test_create_list_revoke(stack: Stack) -> None:
    env = {"DATABASE_URL": stack.database_url}
    tenant = f"cli-{uuid.uuid4().hex[:8]}"

    created = await keys(env, "create", "--tenant", tenant, "--name", "ci robot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    match = KEY.fullmatch(key)
    assert match is not None, created.stdout
    key_id, secret = match["id"], match["secret"]
    assert created.stdout.count(secret) == 1
    assert "shown only this once" in created.stderr
    assert secret not in created.stderr

    listed = await keys(env, "list", "--tenant", tenant)
    assert listed.returncode == 0, listed.stderr
    [header, row] = [cells(line) for line in listed.stdout.splitlines()]
    assert header == ["ID", "TENANT", "NAME", "CREATED", "LAST USED", "REVOKED"]
    assert row[:3] == [key_id, tenant, "ci robot"]
    assert row[3].endswith("UTC")
    assert row[4:] == ["never", "-"]  # not used yet, not revoked
    assert await tenant_of(stack, key) == tenant
    everything = await keys(env, "list")
    assert key_id in everything.stdout
    for output in (listed, everything):
        assert secret not in output.stdout + output.stderr
        assert secret[:8] not in output.stdout

    revoked = await keys(env, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked key {key_id}" in revoked.stdout
    assert await tenant_of(stack, key) is None
    [_, row] = [
        cells(line) for line in (await keys(env, "list", "--tenant", tenant)).stdout.splitlines()
    ]
    assert row[0] == key_id
    assert row[5].endswith("UTC")  # revoked, and when

    again = await keys(env, "revoke", key_id)
    assert again.returncode == 1
    assert "no active key" in again.stderr


async def test_revoke_takes_a_pasted_key_and_never_echoes_its_secret(stack: Stack) -> None:
    env = {"DATABASE_URL": stack.database_url}
    created = await keys(env, "create", "--tenant", "cli-paste")
    key = created.stdout.strip()
    match = KEY.fullmatch(key)
    assert match is not None

    revoked = await keys(env, "revoke", key)
    assert revoked.returncode == 0, revoked.stderr
    assert match["secret"] not in revoked.stdout + revoked.stderr
    assert await tenant_of(stack, key) is None

    # "--": a urlsafe secret may begin with "-", which would read as an option.
    garbage = await keys(env, "revoke", "--", match["secret"])
    assert garbage.returncode == 1
    assert match["secret"] not in garbage.stdout + garbage.stderr
    assert "16 hex characters" in garbage.stderr


async def test_list_of_a_tenant_without_keys(stack: Stack) -> None:
    listed = await keys({"DATABASE_URL": stack.database_url}, "list", "--tenant", "nobody-here")
    assert listed.returncode == 0
    assert listed.stdout.strip() == "no API keys for tenant nobody-here"


async def test_a_bad_tenant_is_refused(stack: Stack) -> None:
    created = await keys({"DATABASE_URL": stack.database_url}, "create", "--tenant", "a b")
    assert created.returncode == 2
    assert "tenant" in created.stderr
    assert "cvk_" not in created.stdout


async def test_the_admin_url_wins_and_a_missing_url_is_named() -> None:
    missing = await keys({}, "list")
    assert missing.returncode == 1
    assert "ADMIN_DATABASE_URL or DATABASE_URL is not set" in missing.stderr

    nowhere = f"postgresql://u:hunter2-secret@/conveyor?host=/nonexistent-{uuid.uuid4().hex[:8]}"
    unreachable = await keys({"ADMIN_DATABASE_URL": nowhere, "DATABASE_URL": "junk"}, "list")
    assert unreachable.returncode == 1
    assert "cannot connect to the database" in unreachable.stderr
    assert "hunter2" not in unreachable.stderr
