"""``conveyor plan``: the infer replicas, GPU nodes and monthly cost a target load needs.

    conveyor plan --rate 100 --texts-per-job 1 --replica-texts-per-s 2000   # your GPU figure
    conveyor plan --rate 100 --texts-per-job 1 --device cpu   # this repo's measured CPU figure

Sized from measured throughput only (:mod:`conveyor.capacity`): the CPU figures recorded in
conveyor/throughput.json, or the figure you measured on your own node type and pass with
``--replica-texts-per-s``. No GPU figure has been measured yet, so for GPUs it is required.
Every assumption is printed with the result.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from conveyor.capacity import Figure, Load, Node, measured_figure
from conveyor.capacity import plan as size
from shared.config import InferSettings
from shared.render.kubernetes import INGEST_REPLICAS
from shared.render.nodes import NodeOptions
from shared.topology import DEFAULT_MODEL

__all__ = ["plan"]

# AWS on-demand list prices, us-east-1, Linux (as published by AWS; prices change: check yours
# and pass --node-usd-per-hour). Each is the smallest instance of the NodePool's kind that
# holds one replica: one NVIDIA A10G GPU (g5, the first GPU family the NodePool allows); two
# vCPUs like the machine the CPU figures come from.
_NODES: dict[str, Node] = {
    "gpu": Node("g5.xlarge", 1.006, "AWS on-demand list price, us-east-1, Linux"),
    "cpu": Node("c7i.large", 0.08925, "AWS on-demand list price, us-east-1, Linux"),
}


def plan(
    rate: Annotated[float, typer.Option(help="Target jobs per second.", min=0.0)],
    texts_per_job: Annotated[int, typer.Option(help="Texts (inputs) per job.", min=1)] = 1,
    device: Annotated[
        str, typer.Option(help="gpu (production) or cpu (this repo's measured figures).")
    ] = "gpu",
    replica_texts_per_s: Annotated[
        float | None,
        typer.Option(
            help="Texts/s one infer replica's model encodes, measured on your node type "
            "(python -m benchmarks.model_throughput --device cuda). Required for gpu."
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="The model the figure is for.")] = DEFAULT_MODEL,
    utilisation: Annotated[
        float,
        typer.Option(help="Share of that peak a replica is sized to run at.", min=0.05, max=1.0),
    ] = 0.6,
    node_usd_per_hour: Annotated[
        float | None, typer.Option(help="Price of one replica's node per hour (USD).")
    ] = None,
    hours_per_month: Annotated[
        float, typer.Option(help="Hours the nodes run per month (less when scaled to zero).")
    ] = 730.0,
) -> None:
    """Print the infer replicas, GPU nodes and monthly cost for --rate jobs/s of
    --texts-per-job texts each, and every assumption behind them."""
    if device not in ("gpu", "cpu"):
        raise typer.BadParameter("expected gpu or cpu", param_hint="--device")
    kind: Literal["gpu", "cpu"] = "gpu" if device == "gpu" else "cpu"
    batch = InferSettings.model_fields["max_batch_items"].default
    figure: Figure | None
    if replica_texts_per_s is not None:
        figure = Figure(model, kind, replica_texts_per_s, batch, "given with --replica-texts-per-s")
    else:
        figure = measured_figure(model, kind, batch)
    if figure is None:
        typer.echo(
            f"error: no {kind.upper()} throughput has been measured for {model} yet "
            "(conveyor/throughput.json holds CPU figures from a 2-core development machine "
            "only). Measure one replica on your node type: python -m "
            f"benchmarks.model_throughput --device {'cuda' if kind == 'gpu' else 'cpu'} "
            "--json, and pass its texts_per_s at batch 32 with --replica-texts-per-s "
            "(or use --device cpu for the measured CPU figures).",
            err=True,
        )
        raise typer.Exit(2)
    node = _NODES[kind]
    if node_usd_per_hour is not None:
        node = Node(node.name, node_usd_per_hour, "given with --node-usd-per-hour")
    try:
        result = size(
            Load(rate, texts_per_job),
            figure,
            node,
            utilisation=utilisation,
            hours_per_month=hours_per_month,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    nodes_word = "GPU nodes" if kind == "gpu" else "CPU nodes"
    limit = NodeOptions().max_gpus
    lines = [
        f"Conveyor capacity plan: {rate:g} jobs/s x {texts_per_job} text(s) = "
        f"{result.load.texts_per_s:g} texts/s of {model} on {kind.upper()}",
        "",
        f"  infer replicas   {result.infer_replicas:>6}",
        f"  {nodes_word:<16} {result.nodes:>6}   ({node.name}, one replica each)",
        f"  monthly cost     {_usd(result.usd_per_month):>6}   "
        f"({result.nodes} x {_usd(node.usd_per_hour, cents=True)}/h x "
        f"{hours_per_month:g} h; infer nodes only)",
        f"  ingest           >= {INGEST_REPLICAS[0]}     HPA on CPU "
        "(not modelled: no measured figure)",
        "  persist, notify  >= 1     KEDA on queue depth (not modelled: no measured figure)",
        "",
        "Assumptions:",
        f"  - one infer replica's model encodes {figure.texts_per_s:g} texts/s at batch "
        f"{figure.batch_size}: {figure.source}",
        f"  - replicas are sized to run at {utilisation:.0%} of that "
        f"({result.texts_per_s_per_replica:g} texts/s each): the rest covers SQS, JSON, "
        "the event loop and bursts (--utilisation)",
        "  - batches fill: the load arrives faster than INFER_MAX_BATCH_WAIT_S lets a batch "
        "wait; a trickle runs at smaller batches and lower throughput",
        f"  - one replica per node ({node.name}: {_usd(node.usd_per_hour, cents=True)}/h, "
        f"{node.price_source})",
        f"  - nodes run {hours_per_month:g} h a month; KEDA scales infer to zero when no job "
        "waits, so an idle night costs nothing (--hours-per-month)",
        "  - not included: the general NodePool (ingest, persist, notify), RDS, SQS and S3 "
        "requests, data transfer, the EKS control plane",
    ]
    if kind == "gpu" and result.nodes > limit:
        lines.append(
            f"  ! {result.nodes} GPUs is more than the rendered limit ({limit}): render with "
            f"`conveyor render kubernetes --max-gpus {result.nodes}`"
        )
    typer.echo("\n".join(lines))


def _usd(amount: float, *, cents: bool = False) -> str:
    """Dollars: whole for a month, as given for an hourly price ($0.08925)."""
    return f"${amount:g}" if cents else f"${amount:,.0f}"


if __name__ == "__main__":
    typer.run(plan)
