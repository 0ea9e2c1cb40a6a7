"""``conveyor render``: the topology as what a platform team deploys to AWS and EKS.

    conveyor render cloudformation [--prefix P] [--models M,...] > stack.yaml
    conveyor render kubernetes --account-id 123456789012 --image-registry REGISTRY \\
        [--image-tag T] [--prefix P] [--models M,...] -o conveyor.yaml
    conveyor render dashboard [--prefix P] [--models M,...] -o conveyor.json
    conveyor render alerts [--prefix P] [--models M,...] -o conveyor-rules.yaml

Both are made from the same :class:`~shared.topology.Topology` the emulator provisions (the
renderers are :mod:`shared.render`); none reads the environment nor calls AWS. Render them
with the same ``--prefix``, ``--models`` and ``--namespace``. The Grafana dashboard and the
Prometheus alert rules watch that stack (:mod:`shared.render.dashboards`,
:mod:`shared.render.alerts`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from shared.errors import ConfigError, TopologyError
from shared.render.nodes import NodeOptions
from shared.render.series import MonitoringOptions
from shared.topology import DEFAULT_MODEL, Topology

__all__ = ["render_app", "to_yaml"]

render_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

Prefix = Annotated[str, typer.Option(help="The stack's name prefix (CONVEYOR_PREFIX).")]
Models = Annotated[
    list[str],
    typer.Option(help="Model names served (CONVEYOR_MODELS); repeat or comma-separate."),
]
Namespace = Annotated[str, typer.Option(help="The Kubernetes namespace of the services.")]
Output = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write here instead of to stdout.")
]


def _version() -> str:
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0.1.0"


def _topology(prefix: str, models: Iterable[str]) -> Topology:
    names = tuple(m.strip() for item in models for m in item.split(",") if m.strip())
    return Topology(prefix=prefix, models=names or (DEFAULT_MODEL,))


def to_yaml(documents: list[dict[str, Any]], header: str = "") -> str:
    """YAML documents, ``---``-separated, keys in the renderers' order, no anchors/aliases
    (CloudFormation refuses them), after ``header`` as comment lines."""
    import yaml  # only this command needs it; the service images do not carry it

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    body = yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, width=100, explicit_start=len(documents) > 1
    )
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comments + body


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


def _header(command: str) -> str:
    return (
        f"Rendered by `conveyor render {command}`\n"
        "from shared.topology: do not edit, render again (deploy/README.md)."
    )


def _fail(exc: TopologyError | ConfigError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@render_app.command()
def cloudformation(
    prefix: Prefix = "conveyor",
    models: Models = [DEFAULT_MODEL],  # noqa: B006 - typer reads the default, never mutates it
    namespace: Namespace = "conveyor",
    keda_namespace: Annotated[str, typer.Option(help="The KEDA operator's namespace.")] = "keda",
    irsa_oidc_provider: Annotated[
        str | None,
        typer.Option(
            help="Trust IRSA through this OIDC provider (oidc.eks.REGION.amazonaws.com/id/ID) "
            "instead of EKS Pod Identity."
        ),
    ] = None,
    output: Output = None,
) -> None:
    """A CloudFormation template: queues, DLQs, buckets, one IAM role per service, and the
    KEDA operator's read-only queue-depth policy. Deploy with CAPABILITY_NAMED_IAM."""
    from shared.render import CloudFormationOptions, render_cloudformation

    try:
        template = render_cloudformation(
            _topology(prefix, models),
            CloudFormationOptions(
                namespace=namespace,
                keda_namespace=keda_namespace,
                irsa_oidc_provider=irsa_oidc_provider,
            ),
        )
    except TopologyError as exc:
        _fail(exc)
    _emit(to_yaml([template], _header("cloudformation")), output)


@render_app.command()
def kubernetes(
    account_id: Annotated[
        str, typer.Option(help="The AWS account of the stack's queues (12 digits).")
    ],
    image_registry: Annotated[
        str,
        typer.Option(help="Where the images are: <registry>/conveyor-<service>:<tag>."),
    ],
    image_tag: Annotated[
        str | None, typer.Option(help="The images' tag (default: this version).")
    ] = None,
    prefix: Prefix = "conveyor",
    models: Models = [DEFAULT_MODEL],  # noqa: B006 - typer reads the default, never mutates it
    namespace: Namespace = "conveyor",
    region: Annotated[str, typer.Option(help="The AWS region of the stack.")] = "us-east-1",
    cluster_name: Annotated[
        str, typer.Option(help="The EKS cluster (Karpenter's discovery tag and node role).")
    ] = "conveyor",
    irsa: Annotated[
        bool, typer.Option(help="Annotate ServiceAccounts with role ARNs (IRSA).")
    ] = False,
    max_gpus: Annotated[
        int,
        typer.Option(
            help="The GPU NodePool's limit, and each infer ScaledObject's maximum replicas "
            "(one GPU each): `conveyor plan` says how many a load needs.",
            min=1,
        ),
    ] = 8,
    ami_alias: Annotated[
        str,
        typer.Option(help="The EC2NodeClasses' AMI alias; pin it in production (al2023@vDATE)."),
    ] = NodeOptions.ami_alias,
    output: Output = None,
) -> None:
    """Kubernetes manifests: Deployments, ServiceAccounts, Service, PDBs, HPA, ConfigMap,
    KEDA ScaledObjects, Karpenter NodePools and EC2NodeClasses, in one stream."""
    from shared.render import KubernetesOptions, render_kubernetes
    from shared.render.autoscaling import AutoscalingOptions

    try:
        documents = render_kubernetes(
            _topology(prefix, models),
            KubernetesOptions(
                account_id=account_id,
                image_registry=image_registry,
                image_tag=image_tag or _version(),
                region=region,
                namespace=namespace,
                cluster_name=cluster_name,
                irsa=irsa,
                nodes=NodeOptions(max_gpus=max_gpus, ami_alias=ami_alias),
                autoscaling=AutoscalingOptions(infer_max_replicas=max_gpus),
            ),
        )
    except TopologyError as exc:
        _fail(exc)
    _emit(to_yaml(documents, _header("kubernetes")), output)


QueueLabel = Annotated[
    str,
    typer.Option(
        help="The CloudWatch exporter's queue-name label: queue_name (prometheus/"
        "cloudwatch_exporter) or dimension_QueueName (YACE)."
    ),
]
QueueAgeSlo = Annotated[
    int, typer.Option(help="Seconds the oldest message of an infer or results queue may wait.")
]
EndToEndSlo = Annotated[
    float, typer.Option(help="Seconds from acceptance to final state, p95 per model.")
]
TargetSelector = Annotated[
    str | None,
    typer.Option(
        help="PromQL label matchers of Conveyor's scrape targets in `up` (default: the pod "
        'labels, app_kubernetes_io_part_of="conveyor", app_kubernetes_io_instance="<prefix>").'
    ),
]


def _monitoring(
    queue_label: str, queue_age_slo_s: int, end_to_end_slo_s: float, target_selector: str | None
) -> MonitoringOptions:
    try:
        return MonitoringOptions(
            queue_label=queue_label,
            queue_age_slo_s=queue_age_slo_s,
            end_to_end_p95_slo_s=end_to_end_slo_s,
            target_selector=target_selector,
        )
    except ConfigError as exc:
        _fail(exc)


@render_app.command()
def dashboard(
    prefix: Prefix = "conveyor",
    models: Models = [DEFAULT_MODEL],  # noqa: B006 - typer reads the default, never mutates it
    queue_label: QueueLabel = MonitoringOptions.queue_label,
    queue_age_slo_s: QueueAgeSlo = MonitoringOptions.queue_age_slo_s,
    end_to_end_slo_s: EndToEndSlo = MonitoringOptions.end_to_end_p95_slo_s,
    target_selector: TargetSelector = None,
    output: Output = None,
) -> None:
    """A Grafana dashboard (JSON): throughput, latency per hop, queues, GPU batching, errors
    and DLQs, webhooks, AWS and the database, with `datasource` and `model` variables."""
    import json

    from shared.render.dashboards import render_dashboard

    options = _monitoring(queue_label, queue_age_slo_s, end_to_end_slo_s, target_selector)
    try:
        board = render_dashboard(_topology(prefix, models), options)
    except (TopologyError, ConfigError) as exc:
        _fail(exc)
    _emit(json.dumps(board, indent=2, ensure_ascii=False) + "\n", output)


@render_app.command()
def alerts(
    prefix: Prefix = "conveyor",
    models: Models = [DEFAULT_MODEL],  # noqa: B006 - typer reads the default, never mutates it
    queue_label: QueueLabel = MonitoringOptions.queue_label,
    queue_age_slo_s: QueueAgeSlo = MonitoringOptions.queue_age_slo_s,
    end_to_end_slo_s: EndToEndSlo = MonitoringOptions.end_to_end_p95_slo_s,
    target_selector: TargetSelector = None,
    output: Output = None,
) -> None:
    """Prometheus alert rules (a rule file): DLQs, queue age, queues without consumers, targets
    down, end-to-end p95, webhook failures, AWS errors, database pool saturation."""
    import yaml

    from shared.render.alerts import render_rules

    options = _monitoring(queue_label, queue_age_slo_s, end_to_end_slo_s, target_selector)
    try:
        rules = render_rules(_topology(prefix, models), options)
    except (TopologyError, ConfigError) as exc:
        _fail(exc)

    class _Dumper(yaml.SafeDumper):
        """Multi-line expressions as block scalars, as people write rule files."""

    def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _string)
    body = yaml.dump(rules, Dumper=_Dumper, sort_keys=False, width=100)
    header = (
        "Rendered by `conveyor render alerts` from shared/render/alerts.py: do not edit, "
        "render again\n(deploy/README.md). Queue depth and age come from the CloudWatch "
        'exporter (README, "Metrics,\ntraces and logs").'
    )
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    _emit(comments + body, output)


@render_app.command()
def policy(
    service: Annotated[str, typer.Argument(help="ingest, infer, persist or notify")],
    account_id: Annotated[
        str, typer.Option(help="The AWS account of the stack's queues (12 digits).")
    ],
    region: Annotated[str, typer.Option(help="The stack's region (AWS_REGION).")] = "us-east-1",
    prefix: Prefix = "conveyor",
    models: Models = [DEFAULT_MODEL],  # noqa: B006 - typer reads the default, never mutates it
    output: Output = None,
) -> None:
    """One service's IAM policy (JSON), the same document the emulator enforces: for a
    container run by hand under an instance role or a user of its own."""
    import json

    from shared.topology import SERVICES, Arns

    if service not in SERVICES:
        _fail(ConfigError(f"service must be one of {', '.join(SERVICES)}, not {service!r}"))
    if not (account_id.isdigit() and len(account_id) == 12):
        _fail(ConfigError(f"--account-id must be 12 digits, not {account_id!r}"))
    topology = _topology(prefix, models)
    document = topology.policy_document(service, Arns(region=region, account_id=account_id))
    _emit(json.dumps(document, indent=2) + "\n", output)


if __name__ == "__main__":
    render_app()
