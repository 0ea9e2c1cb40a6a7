"""``conveyor submit --file inputs.jsonl --out results.jsonl``: many jobs, with a progress bar,
resumable after Ctrl-C (the file formats and the keys: :mod:`conveyor.cli.bulkfile`).

Jobs go through :meth:`conveyor.AsyncClient.map_jobs`: at most ``--concurrency`` in flight, 429s
waited out, transient errors retried with the same Idempotency-Key. Results are appended in
input order, one flushed line at a time, so Ctrl-C loses nothing that was written; a rerun of
the same command skips those lines and re-attaches the jobs that were in flight.

Exit status: 0 every line succeeded; 1 a job failed or was refused, or the run stopped on an
error the API gave for every job (key, model, unreachable API); 2 a bad input or output file;
130 interrupted (rerun to resume).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from conveyor.cli.bulkfile import BulkFileError, Group, plan, read_done, read_lines, rows
from conveyor.client import (
    Accepted,
    ApiError,
    AsyncClient,
    ConveyorError,
    Job,
    JobStatus,
)

__all__ = ["EXIT_BAD_FILE", "EXIT_FAILED", "EXIT_INTERRUPTED", "Counts", "submit_file"]

EXIT_FAILED: Final = 1
EXIT_BAD_FILE: Final = 2
EXIT_INTERRUPTED: Final = 130
_LINE_ERRORS: Final = frozenset({400, 413, 422})
"""Refusals of one job (its texts): that job's lines fail, the others go on. Any other error
(401, 409 model not deployed, 429 or 503 past the retries) would meet every job: the run stops."""


@dataclass
class Counts:
    lines: int = 0
    already_done: int = 0
    submitted: int = 0
    """Jobs the API recorded in this run."""
    reattached: int = 0
    """Jobs of an earlier run found again by their Idempotency-Key."""
    succeeded: int = 0
    failed: int = 0
    """Lines of the output file, earlier runs' included."""
    written: int = 0
    jobs_finished: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self, out: Path, *, head: str) -> str:
        """One line: ``head`` (done, interrupted, stopped), then the counts."""
        took = time.monotonic() - self.started
        text = (
            f"{head}: {self.lines} lines: {self.already_done} already in {out}, "
            f"{self.written} written in {took:.1f} s; "
            f"jobs: {self.submitted} submitted, {self.reattached} re-attached; "
            f"lines: {self.succeeded} succeeded, {self.failed} failed"
        )
        left = self.lines - self.already_done - self.written
        if head != "done" and left:
            text += f"; {left} to go: run the same command again to resume"
        return text


def submit_file(
    *,
    file: Path,
    out: Path,
    model: str,
    callback_url: str | None,
    concurrency: int,
    texts_per_job: int,
    api_url: str,
    api_key: str | None,
    console: Console | None = None,
) -> None:
    """Run the file through the API; print a summary; exit as the module docstring says."""
    console = console or Console(stderr=True)
    counts = Counts()
    try:
        digest, lines = read_lines(file)
        groups = plan(
            lines,
            digest=digest,
            model=model,
            callback_url=callback_url,
            texts_per_job=texts_per_job,
        )
        done = read_done(out)
    except BulkFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_FILE) from None
    counts.lines = len(lines)
    earlier = [done[line.number] for line in lines if line.number in done]
    counts.already_done = len(earlier)
    counts.succeeded = earlier.count(JobStatus.SUCCEEDED.value)
    counts.failed = len(earlier) - counts.succeeded
    todo = [group for group in groups if any(ln.number not in done for ln in group.lines)]
    client = AsyncClient(api_url, api_key, use_numpy=False)
    run = _Run(client, model, callback_url, concurrency, counts, done, console)
    stopped: ConveyorError | None = None
    interrupted = False
    try:
        with out.open("a", encoding="utf-8") as sink:
            asyncio.run(run.run(todo, sink))
    except KeyboardInterrupt:
        interrupted = True
    except ConveyorError as exc:
        stopped = exc
    head = "interrupted" if interrupted else "stopped" if stopped else "done"
    console.print(counts.summary(out, head=head), highlight=False, soft_wrap=True)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if stopped is not None:
        typer.echo(f"error: {stopped}", err=True)
        raise typer.Exit(EXIT_FAILED)
    if counts.failed:
        raise typer.Exit(EXIT_FAILED)


class _Run:
    def __init__(
        self,
        client: AsyncClient,
        model: str,
        callback_url: str | None,
        concurrency: int,
        counts: Counts,
        done: Mapping[int, str],
        console: Console,
    ) -> None:
        self.client = client
        self.model = model
        self.callback_url = callback_url
        self.concurrency = concurrency
        self.counts = counts
        self.done = done
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "submitted {task.fields[submitted]} · done {task.fields[done]} · "
                "failed {task.fields[failed]}"
            ),
            _Rate(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task(
            "lines",
            total=counts.lines,
            completed=counts.already_done,
            submitted=0,
            done=0,
            failed=counts.failed,
        )

    async def run(self, groups: list[Group], sink: IO[str]) -> None:
        async with self.client:
            with self.progress:
                jobs = self.client.map_jobs(
                    self.model,
                    (group.job for group in groups),
                    concurrency=self.concurrency,
                    callback_url=self.callback_url,
                    return_exceptions=True,
                    on_submitted=self._submitted,
                    on_finished=self._finished,
                )
                async with aclosing(jobs):
                    index = 0
                    async for outcome in jobs:
                        group = groups[index]
                        index += 1
                        if isinstance(outcome, ConveyorError) and not _line_error(outcome):
                            raise outcome
                        for line in rows(group, outcome, self.done):
                            sink.write(json.dumps(line, separators=(",", ":")) + "\n")
                            sink.flush()  # a line written is a line kept, whatever comes next
                            self._written(line["status"] == JobStatus.SUCCEEDED.value)

    def _submitted(self, _index: int, accepted: Accepted) -> None:
        if accepted.replayed:
            self.counts.reattached += 1
        else:
            self.counts.submitted += 1
        self.progress.update(self.task, submitted=self.counts.submitted + self.counts.reattached)

    def _finished(self, _index: int, outcome: Job | ConveyorError) -> None:
        if isinstance(outcome, Job):  # final, whether it succeeded or not
            self.counts.jobs_finished += 1
            self.progress.update(self.task, done=self.counts.jobs_finished)

    def _written(self, succeeded: bool) -> None:
        self.counts.written += 1
        if succeeded:
            self.counts.succeeded += 1
        else:
            self.counts.failed += 1
        self.progress.update(self.task, advance=1, failed=self.counts.failed)


def _line_error(exc: ConveyorError) -> bool:
    return isinstance(exc, ApiError) and exc.status in _LINE_ERRORS


class _Rate(ProgressColumn):
    """Lines per second, over rich's recent window."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("-- lines/s" if speed is None else f"{speed:.1f} lines/s")
