"""``conveyor webhooks``: register a tenant's webhook endpoints and rotate their secrets.

Runs as the operator against ADMIN_DATABASE_URL (or DATABASE_URL). A job whose callback_url is
registered for its tenant is signed with the endpoint's own secret; any other callback with
the stack's NOTIFY_WEBHOOK_SECRET. A secret is printed once, by ``add`` or ``rotate``, alone on
stdout; ``list`` never shows one.
"""

from __future__ import annotations

from typing import Annotated

import typer

from conveyor.cli.support import admin_database, run, when
from services.notify import endpoints

__all__ = ["webhooks_app"]

webhooks_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

_SHOWN_ONCE = (
    "store it now: it is shown only this once; give it to the receiver to verify signatures with"
)


@webhooks_app.command()
def add(
    tenant: Annotated[str, typer.Option(help="The tenant whose jobs call this URL back.")],
    url: Annotated[str, typer.Option(help="The callback URL, as the tenant's jobs give it.")],
) -> None:
    """Register URL for TENANT with a new signing secret, and print the secret (once)."""

    async def go() -> None:
        async with admin_database() as conn:
            try:
                endpoint, secret = await endpoints.add_endpoint(conn, tenant, url)
            except ValueError as exc:  # a tenant or URL it refuses, or one already registered
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
        # The secret alone on stdout (SECRET=$(conveyor webhooks add ...)); the rest on stderr.
        typer.echo(
            f"registered endpoint {endpoint.id} for tenant {endpoint.tenant}: {endpoint.url}",
            err=True,
        )
        typer.echo(secret)
        typer.echo(_SHOWN_ONCE, err=True)

    run(go)


@webhooks_app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's endpoints.")] = None,
) -> None:
    """List endpoints (never their secrets)."""

    async def go() -> None:
        async with admin_database() as conn:
            found = await endpoints.list_endpoints(conn, tenant)
        if not found:
            typer.echo("no webhook endpoints" + (f" for tenant {tenant}" if tenant else ""))
            return
        rows = [("ID", "TENANT", "URL", "CREATED", "ROTATED")]
        rows += [
            (str(e.id), e.tenant, e.url, when(e.created_at), when(e.rotated_at, "never"))
            for e in found
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))

    run(go)


@webhooks_app.command()
def rotate(
    endpoint_id: Annotated[int, typer.Argument(help="The endpoint's id, as `list` shows it.")],
    overlap_hours: Annotated[
        float,
        typer.Option(min=0, help="Hours the old secret keeps signing next to the new one."),
    ] = 24,
) -> None:
    """Give an endpoint a new secret and print it (once); the old one signs too until the
    overlap ends, so the receiver can switch in the meantime."""

    async def go() -> None:
        async with admin_database() as conn:
            try:
                secret = await endpoints.rotate(conn, endpoint_id, overlap_hours * 3600)
            except endpoints.UnknownEndpoint as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
        overlap = f"the old secret keeps signing for {overlap_hours:g} h"
        typer.echo(f"rotated endpoint {endpoint_id}: {overlap}", err=True)
        typer.echo(secret)
        typer.echo(_SHOWN_ONCE, err=True)

    run(go)


@webhooks_app.command()
def remove(
    endpoint_id: Annotated[int, typer.Argument(help="The endpoint's id, as `list` shows it.")],
) -> None:
    """Remove an endpoint and its secrets: its callbacks are signed with the stack's secret."""

    async def go() -> None:
        async with admin_database() as conn:
            removed = await endpoints.remove_endpoint(conn, endpoint_id)
        if not removed:
            typer.echo(f"error: no webhook endpoint {endpoint_id}", err=True)
            raise typer.Exit(1)
        typer.echo(f"removed endpoint {endpoint_id}")

    run(go)


if __name__ == "__main__":
    webhooks_app()
