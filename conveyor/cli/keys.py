"""``conveyor keys``: create, list and revoke the API keys clients present to the ingest API.

Runs as the operator against ADMIN_DATABASE_URL (or DATABASE_URL). A key is printed once, by
``create``; the database keeps only its hash, and ``list`` never shows a secret.
"""

from __future__ import annotations

from typing import Annotated

import typer

from conveyor.cli.support import admin_database, run, when
from shared import apikeys

__all__ = ["keys_app"]

keys_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@keys_app.command()
def create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    name: Annotated[str, typer.Option(help="A label for people, e.g. who holds the key.")] = "",
) -> None:
    """Create a key for TENANT and print it: it is shown this once only."""

    async def go() -> None:
        async with admin_database() as conn:
            try:
                plaintext, record = await apikeys.create_key(conn, tenant, name)
            except ValueError as exc:  # a tenant or a name it refuses
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
        # The key alone on stdout (KEY=$(conveyor keys create ...)); the rest on stderr.
        typer.echo(f"created key {record.id} for tenant {record.tenant}", err=True)
        typer.echo(plaintext)
        typer.echo(
            "store it now: it is shown only this once, the database keeps only its hash",
            err=True,
        )

    run(go)


@keys_app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """List keys, revoked ones included (never their secrets)."""

    async def go() -> None:
        async with admin_database() as conn:
            records = await apikeys.list_keys(conn, tenant)
        if not records:
            typer.echo("no API keys" + (f" for tenant {tenant}" if tenant else ""))
            return
        rows = [("ID", "TENANT", "NAME", "CREATED", "LAST USED", "REVOKED")]
        rows += [
            (
                r.id,
                r.tenant,
                r.name or "-",
                when(r.created_at),
                when(r.last_used_at, "never"),
                when(r.revoked_at, "-"),
            )
            for r in records
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))

    run(go)


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `list` shows it.")],
) -> None:
    """Revoke a key: requests that present it are refused from now on."""
    # A whole key pasted in works too; the id is all that is kept of it, and all that is shown.
    key_id = apikeys.key_id_of(key_id) or key_id
    if not _is_key_id(key_id):
        typer.echo("error: a key id is 16 hex characters, as `list` shows it", err=True)
        raise typer.Exit(1)

    async def go() -> None:
        async with admin_database() as conn:
            revoked = await apikeys.revoke_key(conn, key_id)
        if not revoked:
            typer.echo(f"error: no active key {key_id} (unknown, or already revoked)", err=True)
            raise typer.Exit(1)
        typer.echo(f"revoked key {key_id}")

    run(go)


def _is_key_id(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


if __name__ == "__main__":
    keys_app()
