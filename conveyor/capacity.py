"""The capacity model behind ``conveyor plan``: from a target load to replicas, nodes and cost.

    plan(Load(jobs_per_s=100, texts_per_job=1), replica=figure, node=Node(...))

infer is what a load costs: its replicas are sized from a *measured* figure of texts per
second one replica's model encodes (conveyor/throughput.json, recorded by
benchmarks/model_throughput.py, or the operator's own), run at a utilisation target below
that peak (the rest is SQS, JSON, the event loop, and bursts). Each infer replica has a node of
its own (the GPU NodePool asks for one-GPU nodes), so nodes = replicas and the monthly cost is
nodes x the node's hourly price x hours. ingest, persist and notify are not modelled: no
per-replica figure has been measured for them; their autoscalers size them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

__all__ = [
    "HOURS_PER_MONTH",
    "Figure",
    "Load",
    "Node",
    "Plan",
    "measured_figure",
    "measured_figures",
    "plan",
]

HOURS_PER_MONTH: Final = 730
Device = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class Figure:
    """One measured throughput: texts/s of one replica's model at one batch size."""

    model: str
    device: str
    texts_per_s: float
    batch_size: int
    source: str
    """Where it came from, to print: the machine and date, or 'given with --...'."""


@dataclass(frozen=True)
class Load:
    jobs_per_s: float
    texts_per_job: int

    @property
    def texts_per_s(self) -> float:
        return self.jobs_per_s * self.texts_per_job


@dataclass(frozen=True)
class Node:
    name: str
    usd_per_hour: float
    price_source: str


@dataclass(frozen=True)
class Plan:
    load: Load
    figure: Figure
    utilisation: float
    infer_replicas: int
    nodes: int
    node: Node
    hours_per_month: float

    @property
    def usd_per_month(self) -> float:
        return self.nodes * self.node.usd_per_hour * self.hours_per_month

    @property
    def texts_per_s_per_replica(self) -> float:
        return self.figure.texts_per_s * self.utilisation


def plan(
    load: Load,
    figure: Figure,
    node: Node,
    *,
    utilisation: float = 0.6,
    hours_per_month: float = HOURS_PER_MONTH,
) -> Plan:
    if load.jobs_per_s <= 0 or load.texts_per_job < 1:
        raise ValueError("the load must be above zero: --rate > 0 and --texts-per-job >= 1")
    if not 0 < utilisation <= 1:
        raise ValueError("the utilisation target must be in (0, 1]")
    if figure.texts_per_s <= 0:
        raise ValueError("a replica's throughput must be above zero")
    replicas = max(1, math.ceil(load.texts_per_s / (figure.texts_per_s * utilisation)))
    return Plan(
        load=load,
        figure=figure,
        utilisation=utilisation,
        infer_replicas=replicas,
        nodes=replicas,
        node=node,
        hours_per_month=hours_per_month,
    )


def measured_figures() -> dict[str, Any]:
    """conveyor/throughput.json: what benchmarks/model_throughput.py measured."""
    text = resources.files("conveyor").joinpath("throughput.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def measured_figure(model: str, device: Device, batch_size: int) -> Figure | None:
    """The recorded figure for ``model`` on ``device`` at the largest batch size not above
    ``batch_size`` (infer's INFER_MAX_BATCH_ITEMS), or None when none was measured."""
    candidates = [
        f
        for f in measured_figures()["figures"]
        if f["model"] == model and f["device"] == device and f["batch_size"] <= batch_size
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda f: f["batch_size"])
    return Figure(
        model=model,
        device=device,
        texts_per_s=float(best["texts_per_s"]),
        batch_size=int(best["batch_size"]),
        source=(
            f"measured on {best['machine']}, {best['threads']} torch thread(s), "
            f"{best['measured']} ({best['command']})"
        ),
    )
