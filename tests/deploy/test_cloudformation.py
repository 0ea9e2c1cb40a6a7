"""The CloudFormation template: rendered from the topology, lint-free, and saying the same thing.

- deploy/cloudformation/conveyor.yaml is what `conveyor render cloudformation` renders now;
- cfn-lint finds nothing (errors, warnings and informational rules) in two shapes of it (Pod
  Identity with one model; IRSA, two models, another prefix), and does find a broken one;
- checkov fails no check, skips only the checks named below with the reason on the resource,
  and does fail a template with encryption and the public access block taken away;
- every IAM policy in it is the topology's own document (the one the emulator enforces), and
  roles trust exactly one ServiceAccount each.

cfn-lint and checkov run once per module (checkov takes a few seconds): over every template at
once, the deliberately broken one included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint
from typer.testing import CliRunner

from conveyor.cli.render import render_app
from shared.render.names import PSEUDO_ARNS, scaler_role_name
from shared.topology import OBSERVER, SERVICES, Arns, Topology
from tests.deploy.support import (
    IRSA_CFN,
    OIDC,
    TEMPLATE,
    TWO_MODELS,
    default_template,
    dump_template,
    irsa_template,
    load_yaml_stream,
)

# checkov checks skipped on purpose: check id -> the resource types it is skipped on. Each
# skip carries its reason on the resource (Metadata.checkov.skip[].comment); see
# shared/render/cloudformation.py and deploy/README.md.
SUPPRESSED = {
    "CKV_AWS_27": {"AWS::SQS::Queue"},  # SQS-managed SSE, which the check does not recognise
    "CKV_AWS_18": {"AWS::S3::Bucket"},  # access logging needs the platform's log bucket
    "CKV_AWS_21": {"AWS::S3::Bucket"},  # no versioning on transient claim-check payloads
}
CHECKOV_TIMEOUT_S = 120


def broken_template() -> dict[str, Any]:
    """The default template with a mistake cfn-lint must see, and three checkov must see."""
    template = default_template()
    resources = template["Resources"]
    resources["PayloadsBucket"]["Properties"]["PublicAccessBlockConfiguration"][
        "BlockPublicAcls"
    ] = False
    del resources["ModelsBucket"]["Properties"]["VersioningConfiguration"]
    del resources["ResultsQueue"]["Metadata"]  # the suppression, with its reason
    template["Outputs"]["Broken"] = {"Value": {"Ref": "NoSuchResource"}}
    return template


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("cloudformation")
    files = {
        "default": default_template(),
        "irsa": irsa_template(),
        "broken": broken_template(),
    }
    paths = {}
    for name, template in files.items():
        paths[name] = directory / f"{name}.yaml"
        paths[name].write_text(dump_template(template))
    return paths


def test_committed_template_is_what_the_renderer_makes() -> None:
    result = CliRunner().invoke(render_app, ["cloudformation"])
    assert result.exit_code == 0, result.output
    assert result.stdout == TEMPLATE.read_text(), (
        "deploy/cloudformation/conveyor.yaml is stale: run "
        "`conveyor render cloudformation -o deploy/cloudformation/conveyor.yaml`"
    )


# -- cfn-lint -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfn_lint(templates: dict[str, Path]) -> dict[str, list[str]]:
    config = ManualArgs(include_checks=["I"], regions=["us-east-1", "eu-west-1"])
    return {
        name: [
            f"{m.rule.id} {m.message} (line {m.linenumber})"
            for m in lint(path.read_text(), config=config)
        ]
        for name, path in templates.items()
    }


@pytest.mark.parametrize("name", ["default", "irsa"])
def test_cfn_lint_finds_nothing(cfn_lint: dict[str, list[str]], name: str) -> None:
    assert cfn_lint[name] == []


def test_cfn_lint_sees_a_broken_template(cfn_lint: dict[str, list[str]]) -> None:
    assert any("NoSuchResource" in match for match in cfn_lint["broken"]), cfn_lint["broken"]


# -- checkov -------------------------------------------------------------------------------------


def _checkov() -> str:
    """checkov lives in a virtualenv of its own (.venv/checkov, made by `make install` and
    .ci/run): it pins boto3/botocore versions that aiobotocore cannot run with."""
    for candidate in (
        os.environ.get("CHECKOV"),
        str(Path(sys.prefix) / "checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    message = (
        "checkov is not installed: `python3 -m venv .venv/checkov && "
        ".venv/checkov/bin/pip install checkov==3.3.30` (make install does it)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def checkov(templates: dict[str, Path]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """file stem -> {"failed": [...], "skipped": [...]} from one checkov run over all."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(templates["default"].parent),
        # Offline: no update check, no guideline download, and a proxy on a closed loopback
        # port catches whatever would still try.
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
        "BC_SKIP_MAPPING": "TRUE",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    directory = templates["default"].parent
    result = subprocess.run(
        [
            _checkov(),
            "--directory",
            str(directory),
            "--framework",
            "cloudformation",
            "--output",
            "json",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=CHECKOV_TIMEOUT_S,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: some check failed (the broken one)
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    by_file: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"failed": [], "skipped": []} for name in templates
    }
    for outcome in ("failed", "skipped"):
        for check in report["results"].get(f"{outcome}_checks", []):
            by_file[Path(check["file_path"]).stem][outcome].append(check)
    return by_file


@pytest.mark.parametrize("name", ["default", "irsa"])
def test_checkov_fails_no_check(checkov: dict[str, Any], name: str) -> None:
    failed = [(c["check_id"], c["resource"]) for c in checkov[name]["failed"]]
    assert failed == []


@pytest.mark.parametrize("name", ["default", "irsa"])
def test_checkov_skips_only_the_named_checks_each_with_its_reason(
    checkov: dict[str, Any], name: str
) -> None:
    skipped = checkov[name]["skipped"]
    assert skipped
    for check in skipped:
        kind = check["resource"].split(".")[0]
        assert kind in SUPPRESSED.get(check["check_id"], set()), check["check_id"]
        assert len(check["check_result"].get("suppress_comment", "")) > 40


def test_checkov_sees_a_broken_template(checkov: dict[str, Any]) -> None:
    failed = {(c["check_id"], c["resource"]) for c in checkov["broken"]["failed"]}
    assert failed == {
        ("CKV_AWS_53", "AWS::S3::Bucket.PayloadsBucket"),  # public ACLs allowed
        ("CKV_AWS_21", "AWS::S3::Bucket.ModelsBucket"),  # model versions not kept
        ("CKV_AWS_27", "AWS::SQS::Queue.ResultsQueue"),  # what the skip was for
    }


# -- what the template says ----------------------------------------------------------------------


def _resolve(value: Any, arns: Arns, parameters: dict[str, str]) -> Any:
    """Fn::Sub and Ref evaluated for one account and region: the document AWS would store."""
    if isinstance(value, list):
        return [_resolve(item, arns, parameters) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Fn::Sub"}:
        names = {
            "AWS::Partition": arns.partition,
            "AWS::Region": arns.region,
            "AWS::AccountId": arns.account_id,
            **parameters,
        }
        return re.sub(r"\$\{([^}]+)\}", lambda m: names[m[1]], value["Fn::Sub"])
    if set(value) == {"Ref"}:
        return parameters.get(value["Ref"], {"AWS::AccountId": arns.account_id}.get(value["Ref"]))
    return {key: _resolve(item, arns, parameters) for key, item in value.items()}


@pytest.mark.parametrize("service", SERVICES)
def test_render_policy_prints_the_role_policy_of_the_template(service: str) -> None:
    """``conveyor render policy``: the document a hand-run container's identity needs."""
    args = ["policy", service, "--account-id", "111122223333", "--region", "eu-west-1"]
    result = CliRunner().invoke(render_app, args)
    assert result.exit_code == 0, result.output
    resources = default_template()["Resources"]
    (policy,) = resources[f"{service.capitalize()}Role"]["Properties"]["Policies"]
    arns = Arns(region="eu-west-1", account_id="111122223333")
    assert json.loads(result.stdout) == _resolve(policy["PolicyDocument"], arns, {})


@pytest.mark.parametrize("args", [["observer"], ["infer", "--account-id", "12"]])
def test_render_policy_refuses_what_it_cannot_render(args: list[str]) -> None:
    if "--account-id" not in args:
        args = [*args, "--account-id", "111122223333"]
    result = CliRunner().invoke(render_app, ["policy", *args])
    assert result.exit_code == 2 and "error:" in result.output


@pytest.mark.parametrize(
    ("topology", "template"),
    [(Topology(), default_template), (TWO_MODELS, irsa_template)],
    ids=["default", "irsa"],
)
def test_role_policies_are_the_documents_the_emulator_enforces(
    topology: Topology, template: Any
) -> None:
    resources = template()["Resources"]
    arns = Arns(region="eu-west-1", account_id="111122223333")
    for service in SERVICES:
        (policy,) = resources[f"{service.capitalize()}Role"]["Properties"]["Policies"]
        assert policy["PolicyName"] == topology.user_name(service)
        assert _resolve(policy["PolicyDocument"], arns, {}) == topology.policy_document(
            service, arns
        )
    scaler = resources["KedaQueueDepthPolicy"]["Properties"]["PolicyDocument"]
    assert _resolve(scaler, arns, {}) == topology.scaler_policy_document(arns)
    observer = resources["ObserverPolicy"]["Properties"]["PolicyDocument"]
    assert _resolve(observer, arns, {}) == topology.policy_document(OBSERVER, arns)
    # Nothing else grants anything: no wildcard action or resource slipped in beside them.
    for resource in resources.values():
        documents = [resource["Properties"].get("PolicyDocument")]
        documents += [p["PolicyDocument"] for p in resource["Properties"].get("Policies", [])]
        for document in filter(None, documents):
            for statement in document["Statement"]:
                if statement["Effect"] == "Deny":
                    continue
                assert not [a for a in statement["Action"] if "*" in a], statement
                assert "*" not in statement["Resource"], statement


def test_the_scaler_may_read_queue_depth_and_nothing_else() -> None:
    (statement,) = Topology(models=("a", "b")).scaler_policy_document(PSEUDO_ARNS)["Statement"]
    assert statement["Action"] == ["sqs:GetQueueAttributes"]
    assert len(statement["Resource"]) == 4  # infer-a, infer-b, results, notify: no DLQ


def test_pod_identity_trust_names_one_service_account_each() -> None:
    resources = default_template()["Resources"]
    for service in SERVICES:
        role = resources[f"{service.capitalize()}Role"]["Properties"]
        (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
        assert statement["Action"] == ["sts:AssumeRole", "sts:TagSession"]
        tags = statement["Condition"]["StringEquals"]
        assert tags["aws:RequestTag/kubernetes-namespace"] == "conveyor"
        assert tags["aws:RequestTag/kubernetes-service-account"] == f"conveyor-{service}"
        assert tags["aws:RequestTag/eks-cluster-name"] == {"Ref": "EksClusterName"}
        association = resources[f"{service.capitalize()}PodIdentity"]["Properties"]
        assert association["ServiceAccount"] == f"conveyor-{service}"
        assert association["RoleArn"] == {"Fn::GetAtt": [f"{service.capitalize()}Role", "Arn"]}
    keda = resources["KedaOperatorPodIdentity"]
    assert keda["Condition"] == "CreateKedaOperatorRole"
    assert keda["Properties"]["Namespace"] == "keda"
    assert keda["Properties"]["ServiceAccount"] == "keda-operator"


def test_irsa_trusts_the_oidc_provider_for_one_service_account() -> None:
    resources = irsa_template()["Resources"]
    assert not [r for r in resources.values() if r["Type"] == "AWS::EKS::PodIdentityAssociation"]
    (statement,) = resources["InferRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"]["StringEquals"] == {
        f"{OIDC}:sub": f"system:serviceaccount:{IRSA_CFN.namespace}:acme-infer",
        f"{OIDC}:aud": "sts.amazonaws.com",
    }
    assert resources["KedaOperatorRole"]["Properties"]["RoleName"] == scaler_role_name(TWO_MODELS)


def test_queues_buckets_and_outputs() -> None:
    template = irsa_template()
    resources, outputs = template["Resources"], template["Outputs"]
    queues = {
        r["Properties"]["QueueName"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::SQS::Queue"
    }
    assert len(queues) == 2 * len(TWO_MODELS.queues)
    for spec in TWO_MODELS.queues:
        queue, dlq = queues[spec.name], queues[spec.dlq_name]
        assert queue["RedrivePolicy"]["maxReceiveCount"] == spec.max_receive_count
        assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
            "Fn::Sub": PSEUDO_ARNS.queue(spec.dlq_name)
        }
        assert dlq["RedriveAllowPolicy"] == {
            "redrivePermission": "byQueue",
            "sourceQueueArns": [{"Fn::Sub": PSEUDO_ARNS.queue(spec.name)}],
        }
        assert queue["SqsManagedSseEnabled"] is dlq["SqsManagedSseEnabled"] is True
        assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]
        assert queue["VisibilityTimeout"] == spec.visibility_timeout_s
    payloads = resources["PayloadsBucket"]["Properties"]
    models = resources["ModelsBucket"]["Properties"]
    assert models["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "VersioningConfiguration" not in payloads
    (rule,) = payloads["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == TWO_MODELS.payload_expiry_days
    for bucket in ("PayloadsBucket", "ModelsBucket"):
        properties = resources[bucket]["Properties"]
        assert all(properties["PublicAccessBlockConfiguration"].values())
        (statement,) = resources[f"{bucket}Policy"]["Properties"]["PolicyDocument"]["Statement"]
        assert statement["Effect"] == "Deny"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {f"{s.capitalize()}RoleArn" for s in SERVICES} <= outputs.keys()
    assert {
        "PayloadsBucketName",
        "ModelsBucketName",
        "KedaQueueDepthPolicyArn",
        "ObserverPolicyArn",
    } <= outputs.keys()
    assert sum(key.endswith("QueueUrl") for key in outputs) == len(TWO_MODELS.queues)
    assert sum(key.endswith("DlqUrl") for key in outputs) == len(TWO_MODELS.queues)


def test_cli_renders_models_and_refuses_bad_input() -> None:
    runner = CliRunner()
    result = runner.invoke(render_app, ["cloudformation", "--prefix", "acme", "--models", "a,b"])
    assert result.exit_code == 0, result.output
    (template,) = load_yaml_stream(result.stdout)
    names = {r["Properties"].get("QueueName") for r in template["Resources"].values()}
    assert {"acme-infer-a", "acme-infer-b-dlq", "acme-notify"} <= names
    result = runner.invoke(render_app, ["cloudformation", "--prefix", "Bad_Prefix"])
    assert result.exit_code == 2
    assert "prefix 'Bad_Prefix' is invalid" in result.output
