"""A :class:`~conveyor.top.snapshot.Snapshot` as rich tables, for ``conveyor top``."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from conveyor.top.snapshot import WINDOW_S, Snapshot

__all__ = ["render"]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min"


def render(snapshot: Snapshot) -> RenderableType:
    title = Text.assemble(
        ("conveyor top", "bold"),
        f"  stack {snapshot.prefix} at {snapshot.where}  ",
        (snapshot.taken_at.strftime("%H:%M:%S UTC"), "dim"),
    )
    queues = Table(title="queues", title_justify="left", expand=False)
    for column in (
        "queue",
        "visible",
        "in flight",
        "delayed",
        "oldest wait",
        "dlq",
        "dlq in flight",
    ):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in snapshot.queues:
        dlq = Text(str(q.dlq_visible), style="bold red" if q.dlq_visible else "")
        queues.add_row(
            q.name,
            str(q.visible),
            str(q.in_flight),
            str(q.delayed),
            _seconds(q.oldest_wait_s),
            dlq,
            str(q.dlq_in_flight),
        )
    parts: list[RenderableType] = [title, queues]
    if not snapshot.database:
        parts.append(Text("no database given (OBSERVER_DATABASE_URL): queues only", "yellow"))
        return Group(*parts)

    jobs = Table(title=f"jobs (final states: last {WINDOW_S} s)", title_justify="left")
    for column in ("model", "unsent", "queued", "running", "succeeded", "failed", "cancelled"):
        jobs.add_column(column, justify="left" if column == "model" else "right")
    for counts in snapshot.jobs:
        jobs.add_row(
            counts.model,
            str(counts.unsent),
            str(counts.queued),
            str(counts.running),
            str(counts.finished.get("succeeded", 0)),
            Text(str(failed := counts.finished.get("failed", 0)), "red" if failed else ""),
            str(counts.finished.get("cancelled", 0)),
        )
    latency = Table(title=f"latency per hop (last {WINDOW_S} s)", title_justify="left")
    for column in ("hop", "jobs", "p50", "p95"):
        latency.add_column(column, justify="left" if column == "hop" else "right")
    for hop in snapshot.latency:
        latency.add_row(hop.hop, str(hop.count), _seconds(hop.p50_s), _seconds(hop.p95_s))
    webhooks = Table(title=f"webhook attempts (last {WINDOW_S} s)", title_justify="left")
    webhooks.add_column("outcome")
    webhooks.add_column("attempts", justify="right")
    for outcome in snapshot.webhooks:
        style = "green" if outcome.outcome == "delivered" else "red"
        webhooks.add_row(Text(outcome.outcome, style), str(outcome.attempts))
    if not snapshot.webhooks:
        webhooks.add_row(Text("none", "dim"), "0")
    parts += [jobs, latency, webhooks]
    return Group(*parts)
