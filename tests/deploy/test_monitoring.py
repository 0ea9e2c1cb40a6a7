"""The Grafana dashboard and the Prometheus alert rules: what they query exists, and they are
valid for the tools that load them.

- deploy/grafana/conveyor.json and deploy/prometheus/conveyor-rules.yaml are what `conveyor
  render dashboard` and `conveyor render alerts` make now;
- the renderers' list of metric families (shared.render.series.CONVEYOR) is the code's
  registry, both ways, and the dashboard has a panel on every family;
- every expression parses (promql-parser), and selects only series the code or a documented
  exporter (CloudWatch's SQS figures, Prometheus's ``up``) gives;
- the rule file follows Prometheus's rule-file format and our policy (a ``for:``, a severity,
  summary, description and runbook on every alert); the dashboard follows Grafana's model
  (schemaVersion >= 39, unique ids, a grid without overlaps, the datasource variable);
- with promtool (Debian's `prometheus` package; .ci/run unpacks it into .venv/prometheus):
  `promtool check rules` accepts the files and refuses a broken one, and `promtool test rules`
  shows each alert firing on the series that should fire it, and not on those that should not.

Each check is also shown failing on a document broken on purpose.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from typer.testing import CliRunner

from conveyor.cli.render import render_app
from shared.errors import ConfigError
from shared.render import alerts as alerts_module
from shared.render import dashboards as dashboards_module
from shared.render.alerts import render_rules
from shared.render.dashboards import render_dashboard
from shared.render.panels import Panel, Query, Row
from shared.render.series import CONVEYOR, MonitoringOptions, sample_names, unknown_names
from shared.topology import Topology
from tests.deploy.monitoring import (
    catalogue_problems,
    dashboard_problems,
    dashboard_queries,
    metric_names,
    rule_problems,
)
from tests.deploy.support import DEPLOY, TWO_MODELS

DASHBOARD = DEPLOY / "grafana" / "conveyor.json"
RULES = DEPLOY / "prometheus" / "conveyor-rules.yaml"
# Another shape: two models (one with a dot in its name), another prefix, YACE's queue label.
YACE = MonitoringOptions(queue_label="dimension_QueueName", queue_age_slo_s=120)


def default_rules() -> dict[str, Any]:
    return render_rules(Topology(), MonitoringOptions())


def default_dashboard() -> dict[str, Any]:
    return render_dashboard(Topology(), MonitoringOptions())


def first_rule(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for g in document["groups"] for r in g["rules"] if r.get("alert") == name)


# -- committed files ------------------------------------------------------------------------


def test_committed_rules_are_what_the_renderer_makes() -> None:
    result = CliRunner().invoke(render_app, ["alerts"])
    assert result.exit_code == 0, result.output
    assert result.stdout == RULES.read_text(), (
        "deploy/prometheus/conveyor-rules.yaml is stale: run "
        "`conveyor render alerts -o deploy/prometheus/conveyor-rules.yaml`"
    )
    assert yaml.safe_load(result.stdout) == default_rules()


def test_committed_dashboard_is_what_the_renderer_makes() -> None:
    result = CliRunner().invoke(render_app, ["dashboard"])
    assert result.exit_code == 0, result.output
    assert result.stdout == DASHBOARD.read_text(), (
        "deploy/grafana/conveyor.json is stale: run "
        "`conveyor render dashboard -o deploy/grafana/conveyor.json`"
    )
    assert json.loads(result.stdout) == default_dashboard()


def test_the_cli_refuses_bad_options() -> None:
    result = CliRunner().invoke(render_app, ["alerts", "--queue-label", "queue-name"])
    assert result.exit_code == 2
    assert "not a Prometheus label name" in result.output


# -- the metric catalogue -------------------------------------------------------------------


def test_the_catalogue_is_the_code_registry() -> None:
    assert catalogue_problems(CONVEYOR) == []


def test_a_wrong_catalogue_is_found() -> None:
    broken = dict(CONVEYOR)
    del broken["conveyor_dlq_moves"]
    broken["conveyor_webhook_attempt"] = "counter"
    broken["conveyor_jobs_accepted"] = "gauge"
    assert sorted(catalogue_problems(broken)) == [
        "conveyor_dlq_moves is defined by the code but not listed",
        "conveyor_jobs_accepted (gauge) is listed but the code defines it as a counter",
        "conveyor_webhook_attempt (counter) is listed but the code defines no such metric",
    ]


def test_the_dashboard_shows_every_metric_family() -> None:
    queried = {
        name
        for _, expr in dashboard_queries(default_dashboard())
        for name in metric_names(promql_parser.parse(expr))
    }
    missing = [f for f in CONVEYOR if not sample_names({f: CONVEYOR[f]}) & queried]
    assert missing == [], f"no panel queries {missing}"


def test_the_renderers_refuse_an_unknown_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    assert unknown_names(["rate(conveyor_dlq_move_total[5m]) > 0 and up == 0"]) == [
        "conveyor_dlq_move_total"
    ]
    rule = alerts_module.alerts(Topology(), MonitoringOptions())[0]
    misspelt = dataclasses.replace(rule, expr="conveyor_dlq_move_total > 0")
    monkeypatch.setattr(alerts_module, "alerts", lambda *_: (misspelt,))
    with pytest.raises(ConfigError, match="conveyor_dlq_move_total"):
        render_rules(Topology(), MonitoringOptions())
    row = Row("r", (Panel("p", "d", (Query("sum(conveyor_jobs_acepted_total)", "x"),)),))
    monkeypatch.setattr(dashboards_module, "rows", lambda *_: (row,))
    with pytest.raises(ConfigError, match="conveyor_jobs_acepted_total"):
        render_dashboard(Topology(), MonitoringOptions())


# -- alert rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topology", "options"),
    [(Topology(), MonitoringOptions()), (TWO_MODELS, YACE)],
    ids=["default", "two-models-yace"],
)
def test_rules_are_valid(topology: Topology, options: MonitoringOptions) -> None:
    assert rule_problems(render_rules(topology, options)) == []


def test_committed_rules_are_valid() -> None:
    assert rule_problems(yaml.safe_load(RULES.read_text())) == []


def test_rules_cover_what_operators_are_paged_for() -> None:
    names = {r["alert"] for g in default_rules()["groups"] for r in g["rules"]}
    assert names >= {
        "ConveyorDeadLetterQueueNotEmpty",
        "ConveyorDeadLetterMoves",
        "ConveyorQueueMessageTooOld",
        "ConveyorInferNotConsuming",
        "ConveyorPersistNotConsuming",
        "ConveyorNotifyNotConsuming",
        "ConveyorTargetDown",
        "ConveyorEndToEndLatencyHigh",
        "ConveyorWebhookFailureRate",
        "ConveyorAwsRequestErrors",
    }


def test_slos_are_parameters() -> None:
    rule = first_rule(render_rules(TWO_MODELS, YACE), "ConveyorQueueMessageTooOld")
    assert rule["expr"].rstrip().endswith("> 120")
    assert (
        'dimension_QueueName=~"acme-infer-all-minilm-l6-v2|acme-infer-e5-small\\\\.v2|'
        in (rule["expr"])
    )


def broken_rules() -> dict[str, Any]:
    rules = default_rules()
    first_rule(rules, "ConveyorWebhookFailureRate")["expr"] = (
        'sum(rate(conveyor_webhook_attempt_total{outcome!="succeeded"}[15m])) > 0'
    )
    first_rule(rules, "ConveyorAwsRequestErrors")["expr"] = (
        "sum by (api (rate(conveyor_aws_request_errors_total[10m])) > 0"
    )
    first_rule(rules, "ConveyorTargetDown")["expr"] = "up[5m]"
    dlq = first_rule(rules, "ConveyorDeadLetterMoves")
    del dlq["labels"]
    del dlq["annotations"]["runbook"]
    return rules


def test_broken_rules_are_found() -> None:
    problems = rule_problems(broken_rules())
    assert "ConveyorWebhookFailureRate: unknown metric conveyor_webhook_attempt_total" in problems
    assert any(p.startswith("ConveyorAwsRequestErrors: does not parse") for p in problems)
    assert any(p.startswith("ConveyorTargetDown: an alert's expression") for p in problems)
    assert "ConveyorDeadLetterMoves: severity None is not one of ('critical', 'warning')" in (
        problems
    )
    assert "ConveyorDeadLetterMoves: no runbook annotation" in problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["groups"][0]["rules"][0].update({"for": "5 minutes"}), "schema: groups/0"),
        (lambda r: r["groups"][0]["rules"][0].pop("for"), "no `for:`"),
        (lambda r: r["groups"][0]["rules"][0].update({"fro": "5m"}), "schema: groups/0"),
        (lambda r: r["groups"][1].update({"name": "conveyor-queues"}), "group conveyor-queues"),
    ],
    ids=["duration", "no-for", "unknown-key", "group-repeats"],
)
def test_a_malformed_rule_file_is_found(change: Any, expected: str) -> None:
    rules = copy.deepcopy(default_rules())
    change(rules)
    assert any(expected in p for p in rule_problems(rules)), rule_problems(rules)


# -- the dashboard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topology", "options"),
    [(Topology(), MonitoringOptions()), (TWO_MODELS, YACE)],
    ids=["default", "two-models-yace"],
)
def test_dashboard_is_valid(topology: Topology, options: MonitoringOptions) -> None:
    dashboard = render_dashboard(topology, options)
    assert dashboard_problems(dashboard) == []
    assert dashboard["schemaVersion"] >= 39
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model"}


def test_committed_dashboard_is_valid() -> None:
    assert dashboard_problems(json.loads(DASHBOARD.read_text())) == []


def test_dashboard_draws_the_slos() -> None:
    dashboard = render_dashboard(Topology(), YACE)
    age = next(p for p in dashboard["panels"] if p["title"] == "Oldest message age per queue")
    steps = age["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 120
    assert "dimension_QueueName" in age["targets"][0]["expr"]


def broken_dashboard() -> dict[str, Any]:
    dashboard = default_dashboard()
    panels = dashboard["panels"]
    panels[1]["targets"][0]["expr"] = "sum(rate(conveyor_jobs_acepted_total[$__rate_interval]))"
    panels[2]["targets"][0]["expr"] = "sum by (reason (rate(conveyor_jobs_refused_total[5m]))"
    panels[3]["targets"][0]["expr"] = 'sum(rate(conveyor_infer_jobs_total{model=~"$modle"}[5m]))'
    panels[4]["id"] = panels[5]["id"]
    panels[6]["gridPos"] = dict(panels[7]["gridPos"])
    panels[8]["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    return dashboard


def test_a_broken_dashboard_is_found() -> None:
    dashboard = broken_dashboard()
    problems = dashboard_problems(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert any("unknown metric conveyor_jobs_acepted_total" in p for p in problems)
    assert any("does not parse" in p and "conveyor_jobs_refused_total" in p for p in problems)
    assert f"panel {ids[3]}: undefined variables ['modle']" in problems
    assert f"panel id {ids[5]} repeats" in problems
    assert f"panels {ids[6]} and {ids[7]} overlap" in problems
    assert f"panel {ids[8]}: datasource is not the $datasource variable" in problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update({"schemaVersion": 30}), "schema: schemaVersion"),
        (lambda d: d["panels"][1]["gridPos"].update({"x": 20, "w": 8}), "past the grid"),
        (lambda d: d["templating"]["list"].pop(0), "no `datasource` variable"),
        (lambda d: d["panels"][0].update({"collapsed": True}), "is collapsed"),
    ],
    ids=["schema-version", "grid", "datasource-variable", "collapsed-row"],
)
def test_a_malformed_dashboard_is_found(change: Any, expected: str) -> None:
    dashboard = copy.deepcopy(default_dashboard())
    change(dashboard)
    assert any(expected in p for p in dashboard_problems(dashboard)), dashboard_problems(dashboard)


# -- promtool -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    """Debian's `prometheus` package carries promtool; .ci/run unpacks it (without installing
    the service) into .venv/prometheus."""
    for candidate in (
        os.environ.get("PROMTOOL"),
        str(Path(sys.prefix) / "prometheus" / "usr" / "bin" / "promtool"),
        shutil.which("promtool"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    message = (
        "promtool is not installed: `apt-get download prometheus && dpkg-deb -x "
        "prometheus_*.deb .venv/prometheus` (.ci/run does it), or set PROMTOOL"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_the_rules(promtool: str, tmp_path: Path) -> None:
    other = tmp_path / "acme.yaml"
    other.write_text(yaml.safe_dump(render_rules(TWO_MODELS, YACE)))
    result = _promtool(promtool, "check", "rules", str(RULES), str(other), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2, result.stdout


def test_promtool_refuses_broken_rules(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(broken_rules()))
    result = _promtool(promtool, "check", "rules", str(broken), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # promtool stops at a file's first error; it cannot know a misspelt metric (ours does).
    assert '"ConveyorAwsRequestErrors": could not parse expression' in output, output


TARGETS = 'app_kubernetes_io_part_of="conveyor", app_kubernetes_io_instance="conveyor"'
VISIBLE = "aws_sqs_approximate_number_of_messages_visible_average"
AGE = "aws_sqs_approximate_age_of_oldest_message_maximum"
MODEL = "all-minilm-l6-v2"
INFER_QUEUE = f"conveyor-infer-{MODEL}"


def _alert_case(
    series: dict[str, str], checks: list[tuple[str, str, list[dict[str, str]]]]
) -> dict[str, Any]:
    """A promtool unit test: input series (1-minute samples) and (time, alert, expected
    alerts' labels) to check; labels include the rule's severity."""
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in exp]}
            for at, name, exp in checks
        ],
    }


# (series -> values, [(eval time, alert, [labels of each alert expected])]). "_" is no sample.
ALERT_CASES: dict[str, dict[str, Any]] = {
    "dlq-not-empty": _alert_case(
        {
            f'{VISIBLE}{{queue_name="conveyor-results-dlq"}}': "0x5 2x30",
            f'{VISIBLE}{{queue_name="conveyor-results"}}': "50x35",
        },
        [
            ("10m", "ConveyorDeadLetterQueueNotEmpty", []),
            (
                "25m",
                "ConveyorDeadLetterQueueNotEmpty",
                [{"severity": "warning", "queue_name": "conveyor-results-dlq"}],
            ),
        ],
    ),
    "dlq-moves": _alert_case(
        {
            # The first move makes the series (at 1); then it stays.
            'conveyor_dlq_moves_total{queue="conveyor-results", reason="poison", instance="p"}': (
                "_x5 1x40"
            ),
            # Another process: counted from 0, a move at 10m.
            f'conveyor_dlq_moves_total{{queue="{INFER_QUEUE}", reason="retries_exhausted", '
            'instance="i"}': "0x10 1x30",
        },
        [
            ("3m", "ConveyorDeadLetterMoves", []),
            (
                "8m",
                "ConveyorDeadLetterMoves",
                [{"severity": "warning", "queue": "conveyor-results", "reason": "poison"}],
            ),
            (
                "13m",
                "ConveyorDeadLetterMoves",
                [
                    {"severity": "warning", "queue": "conveyor-results", "reason": "poison"},
                    {"severity": "warning", "queue": INFER_QUEUE, "reason": "retries_exhausted"},
                ],
            ),
            ("35m", "ConveyorDeadLetterMoves", []),
        ],
    ),
    "queue-age": _alert_case(
        {
            f'{AGE}{{queue_name="{INFER_QUEUE}"}}': "0+60x30",
            # notify's messages wait out webhook retries: no SLO there.
            f'{AGE}{{queue_name="conveyor-notify"}}': "3600x30",
        },
        [
            ("8m", "ConveyorQueueMessageTooOld", []),
            (
                "15m",
                "ConveyorQueueMessageTooOld",
                [{"severity": "critical", "queue_name": INFER_QUEUE}],
            ),
        ],
    ),
    "infer-not-consuming": _alert_case(
        {
            f'{VISIBLE}{{queue_name="{INFER_QUEUE}"}}': "5x30",
            # another model's queue waits too, and its worker calls the model
            f'{VISIBLE}{{queue_name="conveyor-infer-other"}}': "5x30",
            'conveyor_infer_model_calls_total{model="other", instance="i"}': "0+3x30",
        },
        [
            ("10m", "ConveyorInferNotConsuming", []),
            (
                "20m",
                "ConveyorInferNotConsuming",
                [{"severity": "critical", "queue_name": INFER_QUEUE, "model": MODEL}],
            ),
        ],
    ),
    "persist-stuck": _alert_case(
        {
            f'{VISIBLE}{{queue_name="conveyor-results"}}': "5x40",
            'conveyor_hop_duration_seconds_count{hop="persist", outcome="succeeded"}': "7x40",
            # notify works: its queue waits but it handles messages
            f'{VISIBLE}{{queue_name="conveyor-notify"}}': "5x40",
            'conveyor_hop_duration_seconds_count{hop="notify", outcome="succeeded"}': "0+2x40",
        },
        [
            (
                "30m",
                "ConveyorPersistNotConsuming",
                [{"severity": "critical", "queue_name": "conveyor-results"}],
            ),
            ("30m", "ConveyorNotifyNotConsuming", []),
        ],
    ),
    "target-down": _alert_case(
        {
            f'up{{{TARGETS}, app_kubernetes_io_name="persist", instance="p:9090"}}': "1x2 0x10",
            f'up{{{TARGETS}, app_kubernetes_io_name="ingest", instance="i:9090"}}': "1x12",
            'up{app_kubernetes_io_part_of="other", instance="o:9090"}': "0x12",
        },
        [
            (
                "9m",
                "ConveyorTargetDown",
                [
                    {
                        "severity": "warning",
                        "app_kubernetes_io_part_of": "conveyor",
                        "app_kubernetes_io_instance": "conveyor",
                        "app_kubernetes_io_name": "persist",
                        "instance": "p:9090",
                    }
                ],
            )
        ],
    ),
    "end-to-end-slow": _alert_case(
        {
            # Every job takes between 30 s and 60 s: p95 about 58 s, over the 30 s SLO.
            **{
                f"conveyor_job_end_to_end_duration_seconds_bucket"
                f'{{model="{MODEL}", outcome="succeeded", le="{le}"}}': values
                for le, values in (("10", "0x40"), ("30", "0x40"), ("60", "0+5x40"))
            },
            "conveyor_job_end_to_end_duration_seconds_bucket"
            f'{{model="{MODEL}", outcome="succeeded", le="+Inf"}}': "0+5x40",
        },
        [
            ("10m", "ConveyorEndToEndLatencyHigh", []),
            (
                "35m",
                "ConveyorEndToEndLatencyHigh",
                [{"severity": "critical", "model": MODEL}],
            ),
        ],
    ),
    "webhooks-failing": _alert_case(
        {
            'conveyor_webhook_attempts_total{outcome="succeeded"}': "0+2x40",
            'conveyor_webhook_attempts_total{outcome="retry"}': "0+2x40",
        },
        [("35m", "ConveyorWebhookFailureRate", [{"severity": "warning"}])],
    ),
    "webhooks-fine": _alert_case(
        {
            'conveyor_webhook_attempts_total{outcome="succeeded"}': "0+20x40",
            'conveyor_webhook_attempts_total{outcome="retry"}': "0+1x40",
        },
        [("35m", "ConveyorWebhookFailureRate", [])],
    ),
    "aws-errors": _alert_case(
        {
            'conveyor_aws_request_errors_total{api="sqs", operation="SendMessageBatch", '
            'reason="throttled"}': "0+1x40",
            'conveyor_aws_request_duration_seconds_count{api="sqs", '
            'operation="SendMessageBatch"}': "0+10x40",
            'conveyor_aws_request_duration_seconds_count{api="s3", operation="GetObject"}': (
                "0+10x40"
            ),
        },
        [
            (
                "30m",
                "ConveyorAwsRequestErrors",
                [{"severity": "warning", "api": "sqs", "operation": "SendMessageBatch"}],
            )
        ],
    ),
    "db-pool": _alert_case(
        {
            'conveyor_db_pool_connections{instance="persist"}': "10x20",
            'conveyor_db_pool_idle_connections{instance="persist"}': "0x20",
            'conveyor_db_pool_max_connections{instance="persist"}': "10x20",
            'conveyor_db_pool_connections{instance="infer"}': "0x20",
            'conveyor_db_pool_idle_connections{instance="infer"}': "0x20",
            'conveyor_db_pool_max_connections{instance="infer"}': "0x20",
        },
        [
            (
                "15m",
                "ConveyorDatabasePoolSaturated",
                [{"severity": "warning", "instance": "persist"}],
            )
        ],
    ),
}


def _without_annotations(rules: dict[str, Any]) -> dict[str, Any]:
    """promtool compares annotations too; their wording is checked by `check rules`, and the
    unit tests are about when each alert fires."""
    rules = copy.deepcopy(rules)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return rules


def test_promtool_fires_each_alert_when_it_should(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_without_annotations(default_rules())))
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"name": name, **case} for name, case in ALERT_CASES.items()],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    every = {r["alert"] for g in default_rules()["groups"] for r in g["rules"]}
    tested = {t["alertname"] for c in ALERT_CASES.values() for t in c["alert_rule_test"]}
    assert every <= tested, f"alerts without a promtool case: {sorted(every - tested)}"


def test_promtool_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    rules = _without_annotations(default_rules())
    # A rule that never fires: its threshold raised out of reach.
    first_rule(rules, "ConveyorQueueMessageTooOld")["expr"] = first_rule(
        rules, "ConveyorQueueMessageTooOld"
    )["expr"].replace("> 300", "> 1e9")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"name": "queue-age", **ALERT_CASES["queue-age"]}],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "ConveyorQueueMessageTooOld" in result.stdout + result.stderr
