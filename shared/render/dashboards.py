"""The Grafana dashboard of a Conveyor stack, as plain data (Grafana's dashboard JSON model).

:func:`render_dashboard` lays the panels of :func:`shared.render.panels.rows` out on
Grafana's 24-column grid, row by row, left to right, numbers them, and wraps them in the
dashboard with two template variables: ``datasource`` (any Prometheus) and ``model`` (the
models that had jobs; several, or all).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from shared.errors import ConfigError
from shared.render.panels import Panel, Query, Row, rows
from shared.render.series import MonitoringOptions, unknown_names
from shared.topology import Topology

__all__ = ["SCHEMA_VERSION", "render_dashboard"]

SCHEMA_VERSION: Final = 39
"""Grafana 10.4/11's dashboard schema; Grafana migrates older ones on load, never newer."""
GRID_COLUMNS: Final = 24
PANEL_HEIGHT: Final = 8
DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}


def _field_config(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    if panel.threshold is not None:
        steps.append({"color": "red", "value": panel.threshold})
        custom["thresholdsStyle"] = {"mode": "line"}
    if panel.stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "defaults": {
            "unit": panel.unit,
            "min": 0,
            "custom": custom,
            "thresholds": {"mode": "absolute", "steps": steps},
        },
        "overrides": [],
    }


def _targets(queries: Iterable[Query]) -> list[dict[str, Any]]:
    return [
        {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend,
            "range": True,
            "refId": chr(ord("A") + i),
        }
        for i, query in enumerate(queries)
    ]


def _layout(sections: Iterable[Row]) -> list[dict[str, Any]]:
    """Rows and panels on the grid, left to right, top to bottom; ids from 1."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row in sections:
        panels.append(
            {
                "type": "row",
                "id": len(panels) + 1,
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > GRID_COLUMNS:
                x, y = 0, y + PANEL_HEIGHT
            panels.append(
                {
                    "type": "timeseries",
                    "id": len(panels) + 1,
                    "title": panel.title,
                    "description": panel.description,
                    "datasource": DATASOURCE,
                    "gridPos": {"h": PANEL_HEIGHT, "w": panel.width, "x": x, "y": y},
                    "fieldConfig": _field_config(panel),
                    "options": {
                        "legend": {
                            "displayMode": "list",
                            "placement": "bottom",
                            "showLegend": True,
                        },
                        "tooltip": {"mode": "multi", "sort": "desc"},
                    },
                    "targets": _targets(panel.queries),
                }
            )
            x += panel.width
        if row.panels:
            y += PANEL_HEIGHT
    return panels


def _variables() -> list[dict[str, Any]]:
    models = "label_values(conveyor_jobs_accepted_total, model)"
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
        },
        {
            "name": "model",
            "label": "Model",
            "type": "query",
            "datasource": DATASOURCE,
            "definition": models,
            "query": {
                "qryType": 1,
                "query": models,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            },
            "current": {},
            "hide": 0,
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "options": [],
            "refresh": 2,
            "regex": "",
            "sort": 1,
        },
    ]


def render_dashboard(topology: Topology, options: MonitoringOptions) -> dict[str, Any]:
    """The dashboard's JSON model, to import into Grafana or provision from a file."""
    sections = rows(topology, options)
    unknown = unknown_names(q.expr for row in sections for p in row.panels for q in p.queries)
    if unknown:
        raise ConfigError(f"the dashboard queries metrics nobody exports: {', '.join(unknown)}")
    return {
        "title": f"Conveyor ({topology.prefix})",
        "uid": f"conveyor-{topology.prefix}",
        "description": (
            "Conveyor: throughput, latency per hop, queues, GPU batching, errors, webhooks, "
            "AWS and the database. Rendered by `conveyor render dashboard` from "
            "shared/render/dashboards.py: do not edit, render again."
        ),
        "tags": ["conveyor"],
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": _variables()},
        "links": [],
        "panels": _layout(sections),
    }
