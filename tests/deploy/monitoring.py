"""Checks of the Grafana dashboard and the Prometheus rules that need no Grafana or Prometheus.

Each check returns the problems it finds (an empty list: none), so that the tests can show
it finding them in a document broken on purpose.

- the registry: the metric families the code defines, read from prometheus_client's default
  registry once every metrics module is imported (services included: the tests may);
- PromQL: every expression parsed by promql-parser (the Rust parser of GreptimeTeam, through
  its Python bindings), which also type-checks function arguments; every selector's metric
  name must be a series the registry or a documented exporter gives;
- rule files: Prometheus's rule-file structure (groups, rules, durations) as a JSON schema,
  and our own policy on top (every rule an alert with ``for:``, a severity, annotations);
- dashboards: a JSON schema of the part of Grafana's dashboard model we write, then unique
  ids, a grid without overlaps, Prometheus targets on the ``datasource`` variable, and
  template variables that exist.
"""

from __future__ import annotations

import importlib
import itertools
import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Final

import jsonschema
import promql_parser
from prometheus_client import REGISTRY

from shared.render.series import EXPORTED, Kind, sample_names

METRIC_MODULES: Final = (
    "shared.metrics",
    "shared.db.pool",
    "services.ingest.metrics",
    "services.infer.metrics",
    "services.persist.metrics",
    "services.notify.metrics",
)

# -- the code's registry --------------------------------------------------------------------


@cache
def registry() -> Mapping[str, Kind]:
    """conveyor_* family name -> type, as the services' processes register them."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    found: dict[str, Kind] = {}
    for family in REGISTRY.collect():
        if family.name.startswith("conveyor_"):
            assert family.type in ("counter", "gauge", "histogram"), family
            found[family.name] = family.type  # type: ignore[assignment]
    return found


def known_series() -> frozenset[str]:
    """Every series name a query may use: the code's, and the documented exporters'."""
    return sample_names({**registry(), **EXPORTED})


def catalogue_problems(catalogue: Mapping[str, Kind]) -> list[str]:
    """shared.render.series.CONVEYOR against the registry, both ways."""
    code = registry()
    problems = [
        f"{name} ({kind}) is listed but the code defines "
        + (f"it as a {code[name]}" if name in code else "no such metric")
        for name, kind in catalogue.items()
        if code.get(name) != kind
    ]
    problems += [
        f"{name} is defined by the code but not listed" for name in code.keys() - catalogue
    ]
    return problems


# -- PromQL ---------------------------------------------------------------------------------

GRAFANA_RANGES: Final = re.compile(r"\$__(?:rate_interval|interval|range)\b")
GRAFANA_VARIABLE: Final = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def metric_names(expr: promql_parser.Expr) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name or "<a selector without a metric name>")

    promql_parser.walk(expr, visit)
    return names


def promql_problems(where: str, text: str, *, alert: bool = False) -> list[str]:
    """``text`` parses, selects only known series and (for an alert) is an instant vector."""
    try:
        expr = promql_parser.parse(text)
    except ValueError as exc:
        return [f"{where}: does not parse ({exc}): {text}"]
    problems = [
        f"{where}: unknown metric {name}" for name in sorted(metric_names(expr) - known_series())
    ]
    literal = (
        promql_parser.MatrixSelector,
        promql_parser.NumberLiteral,
        promql_parser.StringLiteral,
    )
    if alert and isinstance(expr, literal):
        problems.append(f"{where}: an alert's expression must be an instant vector: {text}")
    return problems


# -- Prometheus rule files ------------------------------------------------------------------

DURATION: Final = r"^(?:\d+(?:ms|s|m|h|d|w|y))+$"
LABELS: Final = {
    "type": "object",
    "propertyNames": {"pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
    "additionalProperties": {"type": "string"},
}
# Prometheus's rule-file format (prometheus/model/rulefmt): what it accepts, no more.
RULE_FILE_SCHEMA: Final = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": DURATION},
                    "limit": {"type": "integer", "minimum": 0},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": r"^[A-Za-z_]\w*$"},
                                "record": {"type": "string", "pattern": r"^[a-zA-Z_:][\w:]*$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": DURATION},
                                "keep_firing_for": {"type": "string", "pattern": DURATION},
                                "labels": LABELS,
                                "annotations": LABELS,
                            },
                        },
                    },
                },
            },
        }
    },
}
SEVERITIES: Final = ("critical", "warning")
ANNOTATIONS: Final = ("summary", "description", "runbook")


def rule_problems(document: Any) -> list[str]:
    """A rule file: Prometheus's format, then ours (alerts only, each fully described)."""
    errors = sorted(
        jsonschema.Draft202012Validator(RULE_FILE_SCHEMA).iter_errors(document), key=str
    )
    if errors:
        return [f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    problems: list[str] = []
    groups = [g["name"] for g in document["groups"]]
    problems += [f"group {name} repeats" for name in {g for g in groups if groups.count(g) > 1}]
    names: list[str] = []
    for group in document["groups"]:
        for rule in group["rules"]:
            where = rule.get("alert") or rule.get("record")
            names.append(where)
            if "alert" not in rule:
                problems.append(f"{where}: a recording rule; this file holds alerts only")
                continue
            problems += promql_problems(where, rule["expr"], alert=True)
            if "for" not in rule:
                problems.append(f"{where}: no `for:`")
            else:
                try:
                    promql_parser.parse_duration(rule["for"])
                except ValueError as exc:
                    problems.append(f"{where}: for: {exc}")
            severity = rule.get("labels", {}).get("severity")
            if severity not in SEVERITIES:
                problems.append(f"{where}: severity {severity!r} is not one of {SEVERITIES}")
            annotations = rule.get("annotations", {})
            for key in ANNOTATIONS:
                if not annotations.get(key, "").strip():
                    problems.append(f"{where}: no {key} annotation")
            for key, text in annotations.items():
                if text.count("{{") != text.count("}}"):
                    problems.append(f"{where}: annotation {key} has unbalanced {{{{ }}}}")
    problems += [f"alert {n} repeats" for n in sorted({n for n in names if names.count(n) > 1})]
    return problems


# -- Grafana dashboards ---------------------------------------------------------------------

MIN_SCHEMA_VERSION: Final = 39
GRID_COLUMNS: Final = 24
PANEL_TYPES: Final = ("row", "timeseries", "stat", "gauge", "table", "bargauge", "text")
# Grafana's own variables a query may use besides the dashboard's.
BUILTIN_VARIABLES: Final = frozenset(
    {"__interval", "__interval_ms", "__range", "__range_s", "__rate_interval", "__dashboard"}
)
_GRID_POS = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": GRID_COLUMNS},
        "x": {"type": "integer", "minimum": 0, "maximum": GRID_COLUMNS - 1},
        "y": {"type": "integer", "minimum": 0},
    },
}
_DATASOURCE_REF = {
    "type": "object",
    "required": ["uid"],
    "properties": {"type": {"type": "string"}, "uid": {"type": "string"}},
}
# The part of Grafana's dashboard model (kinds/dashboard) this project writes.
DASHBOARD_SCHEMA: Final = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time", "editable"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": MIN_SCHEMA_VERSION},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "refresh": {"type": "string"},
        "graphTooltip": {"enum": [0, 1, 2]},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "name": {"type": "string", "pattern": r"^\w+$"},
                            "type": {
                                "enum": ["query", "datasource", "custom", "constant", "interval"]
                            },
                            "datasource": _DATASOURCE_REF,
                        },
                    },
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": list(PANEL_TYPES)},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": _GRID_POS,
                    "datasource": _DATASOURCE_REF,
                    "collapsed": {"type": "boolean"},
                    "panels": {"type": "array"},
                    "fieldConfig": {
                        "type": "object",
                        "required": ["defaults", "overrides"],
                        "properties": {
                            "defaults": {"type": "object"},
                            "overrides": {"type": "array"},
                        },
                    },
                    "targets": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {
                                "refId": {"type": "string", "minLength": 1},
                                "expr": {"type": "string", "minLength": 1},
                                "legendFormat": {"type": "string"},
                                "datasource": _DATASOURCE_REF,
                            },
                        },
                    },
                },
            },
        },
    },
}


def _cells(panel: Mapping[str, Any]) -> set[tuple[int, int]]:
    pos = panel["gridPos"]
    return set(
        itertools.product(
            range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        )
    )


def _variables_used(text: str) -> set[str]:
    return {braced or bare for braced, bare in GRAFANA_VARIABLE.findall(text)}


def dashboard_queries(dashboard: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(where, PromQL) for every panel target, Grafana's range variables made plain."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
            yield where, GRAFANA_RANGES.sub("5m", target["expr"])


def dashboard_problems(dashboard: Any) -> list[str]:
    errors = sorted(
        jsonschema.Draft202012Validator(DASHBOARD_SCHEMA).iter_errors(dashboard), key=str
    )
    if errors:
        return [f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    problems: list[str] = []
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    problems += [f"panel id {i} repeats" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for panel in panels:
        pos = panel["gridPos"]
        if pos["x"] + pos["w"] > GRID_COLUMNS:
            problems.append(f"panel {panel['id']} runs past the grid's {GRID_COLUMNS} columns")
    for a, b in itertools.combinations(panels, 2):
        if _cells(a) & _cells(b):
            problems.append(f"panels {a['id']} and {b['id']} overlap")

    variables = [v["name"] for v in dashboard["templating"]["list"]]
    problems += [
        f"variable {v} repeats" for v in sorted({v for v in variables if variables.count(v) > 1})
    ]
    by_name = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = by_name.get("datasource")
    if not source or source["type"] != "datasource" or source.get("query") != "prometheus":
        problems.append("no `datasource` variable of Prometheus data sources")
    defined = set(by_name) | BUILTIN_VARIABLES
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text)
        if not found:
            problems.append(f"variable {variable['name']}: not a label_values(metric, label) query")
        elif found[1] not in known_series():
            problems.append(f"variable {variable['name']}: unknown metric {found[1]}")

    expected_source = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels:
        if panel["type"] == "row":
            if panel.get("panels") or panel.get("collapsed"):
                problems.append(f"row {panel['id']} is collapsed: its panels would not show")
            continue
        if panel.get("datasource") != expected_source:
            problems.append(f"panel {panel['id']}: datasource is not the $datasource variable")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"panel {panel['id']}: no queries")
        refs = [t["refId"] for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"panel {panel['id']}: refIds repeat")
        for target in targets:
            if target.get("datasource", expected_source) != expected_source:
                problems.append(f"panel {panel['id']}: a target's datasource is not $datasource")
            undefined = _variables_used(target["expr"]) - defined
            if undefined:
                problems.append(f"panel {panel['id']}: undefined variables {sorted(undefined)}")
    for where, expr in dashboard_queries(dashboard):
        problems += promql_problems(where, expr)
    return problems
