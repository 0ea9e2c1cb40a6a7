"""``conveyor submit`` and ``status``: using a running stack's API.

With ``--wait N`` the exit status says how the job ended, so scripts can rely on it:

    0  succeeded
    1  failed or cancelled (the job's error on stderr), or the API refused the request
    3  not final within N seconds (still queued or running)

Without ``--wait`` the command only reads (or submits) and exits 0. ``--output json`` prints the
whole job as the API answers it, outputs included; the default is a short summary for people.

``conveyor submit --file inputs.jsonl --out results.jsonl`` submits many jobs, resumably:
:mod:`conveyor.cli.bulk` (exit status 0, 1, 2 bad file, 130 interrupted).
"""

from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer

from conveyor.cli import bulk
from shared.config import AdminSettings, load_settings

__all__ = ["EXIT_FAILED", "EXIT_NOT_FINAL", "Output", "status", "submit"]

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FINAL: Final = 3
# A status read holds at most INGEST_MAX_WAIT_S (30 s by default): longer waits are several.
WAIT_CHUNK_S: Final = 20.0
_FINAL: Final = frozenset({"succeeded", "failed", "cancelled"})


class Output(enum.StrEnum):
    HUMAN = "human"
    JSON = "json"


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
OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        help="human: a summary with the outputs shortened; json: the whole job, every vector.",
    ),
]


def submit(
    texts: Annotated[
        list[str] | None, typer.Argument(help="One or more texts to embed (or --file).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Default: the first of CONVEYOR_MODELS.")
    ] = None,
    callback_url: Annotated[str | None, typer.Option(help="Webhook for the outcome.")] = None,
    wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the result (0: return at once). The exit status is then "
            "0 succeeded, 1 failed or cancelled, 3 still queued or running."
        ),
    ] = 0,
    output: OutputOption = Output.HUMAN,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help='Bulk: a JSONL file, one input per line ("text", {"text": ...} or '
            '{"inputs": [...]}, optional "id"); needs --out. Resumable: rerun it.',
            dir_okay=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Bulk: the JSONL results, one line per input line, in order; lines already "
            "there are skipped.",
            dir_okay=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="Bulk: jobs in flight at once.")
    ] = 16,
    texts_per_job: Annotated[
        int, typer.Option(min=1, help="Bulk: pack consecutive lines into jobs of up to K texts.")
    ] = 1,
    api: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Submit a job and print its id (or the job); with --file and --out, many, resumably."""
    if model is None:
        model = load_settings(AdminSettings).conveyor_models[0]
    if file is not None or out is not None:
        if file is None or out is None or texts or wait or output != Output.HUMAN:
            typer.echo(
                "error: bulk submission takes --file and --out together, and no TEXT, "
                "--wait or --output",
                err=True,
            )
            raise typer.Exit(EXIT_USAGE)
        bulk.submit_file(
            file=file,
            out=out,
            model=model,
            callback_url=callback_url,
            concurrency=concurrency,
            texts_per_job=texts_per_job,
            api_url=api,
            api_key=api_key,
        )
        return
    if not texts:
        typer.echo("error: give one or more texts, or --file and --out", err=True)
        raise typer.Exit(EXIT_USAGE)
    body = {"model": model, "inputs": texts, "callback_url": callback_url}
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api, timeout=min(wait, WAIT_CHUNK_S) + 30, headers=auth) as http:
        began = time.monotonic()
        # With --wait, the API holds its answer until the job is final (one request, not two).
        chunk = min(wait, WAIT_CHUNK_S)
        params = {"wait": f"{chunk:.3f}"} if chunk > 0 else None
        response = http.post("/v1/jobs", json=body, params=params)
        _check(response)
        job: dict[str, Any] = response.json()
        if wait <= 0 and output == Output.HUMAN:
            typer.echo(job["id"])
            return
        left = wait - (time.monotonic() - began)
        if "model" not in job or (job.get("status") not in _FINAL and left > 0):
            job = _read_job(http, job["id"], max(left, 0))
        _show(job, output, waited=wait > 0)


def status(
    job_id: str,
    wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for a final state. The exit status is then 0 succeeded, "
            "1 failed or cancelled, 3 still queued or running."
        ),
    ] = 0,
    output: OutputOption = Output.HUMAN,
    api: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Print a job's status and result."""
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api, timeout=min(wait, WAIT_CHUNK_S) + 30, headers=auth) as http:
        _show(_read_job(http, job_id, wait), output, waited=wait > 0)


def _read_job(http: httpx.Client, job_id: str, wait: float) -> dict[str, Any]:
    """The job; with ``wait``, once it is final or ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while True:
        chunk = min(deadline - time.monotonic(), WAIT_CHUNK_S)
        response = http.get(
            f"/v1/jobs/{job_id}", params={"wait": f"{chunk:.3f}"} if chunk > 0 else None
        )
        _check(response)
        job: dict[str, Any] = response.json()
        if job.get("status") in _FINAL or time.monotonic() >= deadline:
            return job


def _show(job: dict[str, Any], output: Output, *, waited: bool) -> None:
    """Print the job; after a wait, exit with the status the module docstring lists."""
    if output == Output.JSON:
        typer.echo(json.dumps(job, indent=2))
    else:
        typer.echo(json.dumps(_summary(job), indent=2))
    if not waited:
        return
    state = job.get("status")
    if state == "succeeded":
        return
    if state in _FINAL:
        typer.echo(
            f"error: job {job['id']} {state}: {job.get('error') or 'no error given'}", err=True
        )
        raise typer.Exit(EXIT_FAILED)
    typer.echo(
        f"job {job['id']} is still {state}; `conveyor status {job['id']} --wait N` waits more",
        err=True,
    )
    raise typer.Exit(EXIT_NOT_FINAL)


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    """The job with each output vector shortened to its size and first values."""
    outputs = (job.get("result") or {}).get("outputs") or []
    summary = {k: v for k, v in job.items() if k != "result"}
    if outputs:
        summary["outputs"] = [
            f"{len(vector)} dims: [{', '.join(f'{x:.4f}' for x in vector[:4])}, ...]"
            for vector in outputs
        ]
    return summary


def _check(response: httpx.Response) -> None:
    if response.is_error:
        typer.echo(f"error: HTTP {response.status_code}: {response.text}", err=True)
        raise typer.Exit(EXIT_FAILED)
