"""``conveyor submit`` and ``status``: using a running stack's API."""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import typer

from shared.config import AdminSettings, load_settings

__all__ = ["status", "submit"]

ApiUrl = Annotated[str, typer.Option(envvar="CONVEYOR_API_URL", help="The ingest API's base URL.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="CONVEYOR_API_KEY",
        help="The API key (cvk_...); `conveyor keys create` makes one.",
        show_default=False,
    ),
]


def submit(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to embed.")],
    model: Annotated[
        str | None, typer.Option(help="Default: the first of CONVEYOR_MODELS.")
    ] = None,
    callback_url: Annotated[str | None, typer.Option(help="Webhook for the outcome.")] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the result (0: return at once).")
    ] = 0,
    api: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Submit a job and print its id (or, with --wait, its result)."""
    if model is None:
        model = load_settings(AdminSettings).conveyor_models[0]
    body = {"model": model, "inputs": texts, "callback_url": callback_url}
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api, timeout=wait + 30, headers=auth) as http:
        response = http.post("/v1/jobs", json=body)
        _check(response)
        job_id = response.json()["id"]
        if wait <= 0:
            typer.echo(job_id)
            return
        _print_job(http, job_id, wait)


def status(
    job_id: str,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a final state.")] = 0,
    api: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Print a job's status and result."""
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api, timeout=wait + 30, headers=auth) as http:
        _print_job(http, job_id, wait)


def _print_job(http: httpx.Client, job_id: str, wait: float) -> None:
    response = http.get(f"/v1/jobs/{job_id}", params={"wait": wait} if wait > 0 else None)
    _check(response)
    job = response.json()
    result = job.get("result") or {}
    outputs = result.get("outputs") or []
    # Whole vectors are long: show their shape and first values; --json style for the rest.
    summary = {k: v for k, v in job.items() if k != "result"}
    if outputs:
        summary["outputs"] = [
            f"{len(vector)} dims: [{', '.join(f'{x:.4f}' for x in vector[:4])}, ...]"
            for vector in outputs
        ]
    typer.echo(json.dumps(summary, indent=2))


def _check(response: httpx.Response) -> None:
    if response.is_error:
        typer.echo(f"error: HTTP {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
