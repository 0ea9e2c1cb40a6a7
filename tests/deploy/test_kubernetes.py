"""The Kubernetes manifests: valid against real schemas, and holding the rules that keep GPU
money and in-flight work safe.

- deploy/kubernetes/conveyor.yaml is what `conveyor render kubernetes` renders now;
- built-in kinds pass kubernetes-validate (strict) for the oldest and newest versions we
  target; KEDA's and Karpenter's custom resources pass the openAPIV3 schemas of their CRDs,
  vendored from their releases (deploy/schemas), with unknown fields refused;
- policy: only infer tolerates the GPU taint (and asks for a GPU on the GPU pool); every queue
  of the topology has exactly one scaler; grace outlasts the drain; no image without a fixed
  tag; every container non-root with a read-only root filesystem, no privilege escalation and
  no capabilities; secrets only by reference; the ConfigMap is valid configuration for every
  service; the two renderings name the same roles, service accounts and queues.

Each rule is also shown failing on a manifest broken on purpose (the ``broken`` cases).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from conveyor.cli.render import render_app
from shared.config import (
    CommonSettings,
    InferSettings,
    IngestSettings,
    NotifySettings,
    PersistSettings,
    load_settings,
)
from shared.render.autoscaling import queue_url
from shared.render.names import scaler_role_name
from shared.topology import SERVICES, Topology
from tests.deploy.support import (
    CRD_SCHEMAS,
    EXAMPLE_K8S_ARGS,
    IRSA_K8S,
    MANIFESTS,
    TWO_MODELS,
    config,
    default_manifests,
    default_template,
    irsa_manifests,
    load_yaml_stream,
    named,
    of_kind,
    pod_specs,
    schema_errors,
)

Docs = list[dict[str, Any]]
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}

RENDERINGS: dict[str, tuple[Topology, Callable[[], Docs]]] = {
    "default": (Topology(), default_manifests),
    "irsa": (TWO_MODELS, irsa_manifests),
}


@pytest.fixture(params=sorted(RENDERINGS))
def rendering(request: pytest.FixtureRequest) -> tuple[Topology, Docs]:
    topology, render = RENDERINGS[request.param]
    return topology, render()


def test_committed_manifests_are_what_the_renderer_makes() -> None:
    result = CliRunner().invoke(render_app, ["kubernetes", *EXAMPLE_K8S_ARGS])
    assert result.exit_code == 0, result.output
    assert result.stdout == MANIFESTS.read_text(), (
        "deploy/kubernetes/conveyor.yaml is stale: run `conveyor render kubernetes "
        f"{' '.join(EXAMPLE_K8S_ARGS)} -o deploy/kubernetes/conveyor.yaml`"
    )
    assert load_yaml_stream(result.stdout) == default_manifests()


# -- schemas --------------------------------------------------------------------------------------


def test_every_manifest_passes_its_schema(rendering: tuple[Topology, Docs]) -> None:
    _, docs = rendering
    assert [error for doc in docs for error in schema_errors(doc)] == []
    kinds = Counter((d["apiVersion"], d["kind"]) for d in docs)
    assert set(CRD_SCHEMAS) <= kinds.keys()  # each vendored schema is exercised


@pytest.mark.parametrize(
    ("kind", "breakage", "expected"),
    [
        # a misspelt field (minReplicas is the HPA's word): KEDA would prune it, silently
        ("ScaledObject", lambda d: d["spec"].update(minReplicas=0), "minReplicas"),
        ("ScaledObject", lambda d: d["spec"].update(cooldownPeriod="10m"), "'10m' is not of type"),
        (
            "TriggerAuthentication",
            lambda d: d["spec"]["podIdentity"].update(provider="eks"),
            "'eks'",
        ),
        ("NodePool", lambda d: d["spec"]["disruption"].update(consolidateAfter="5 min"), "5 min"),
        (
            "NodePool",
            lambda d: d["spec"]["template"]["spec"]["taints"][0].update(effect="NoScheduleX"),
            "NoScheduleX",
        ),
        ("EC2NodeClass", lambda d: d["spec"].pop("subnetSelectorTerms"), "subnetSelectorTerms"),
        ("Deployment", lambda d: d["spec"].update(replica=2), "replica"),
        (
            "Deployment",
            lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="35"),
            "'35' is not of type",
        ),
        ("PodDisruptionBudget", lambda d: d["spec"].update(maxUnavailable=[1]), "maxUnavailable"),
    ],
)
def test_schema_validation_sees_a_broken_manifest(
    kind: str, breakage: Callable[[dict[str, Any]], object], expected: str
) -> None:
    doc = copy.deepcopy(of_kind(default_manifests(), kind)[0])
    assert schema_errors(doc) == []
    breakage(doc)
    errors = schema_errors(doc)
    assert errors and all(expected in error for error in errors), errors


# -- policy ---------------------------------------------------------------------------------------


def gpu_tolerating(docs: Docs) -> set[str]:
    return {
        name
        for name, spec in pod_specs(docs).items()
        if any(
            t.get("key") in ("nvidia.com/gpu", None) and t.get("effect") in ("NoSchedule", None)
            for t in spec.get("tolerations", [])
        )
    }


def check_gpu_scheduling(topology: Topology, docs: Docs) -> None:
    infer = {f"{topology.prefix}-infer-{model}" for model in topology.models}
    assert gpu_tolerating(docs) == infer, "only infer may tolerate the GPU taint"
    (gpu_pool,) = [p for p in of_kind(docs, "NodePool") if p["metadata"]["name"].endswith("-gpu")]
    assert gpu_pool["spec"]["template"]["spec"]["taints"] == [GPU_TAINT]
    assert gpu_pool["spec"]["limits"]["nvidia.com/gpu"]
    for name, spec in pod_specs(docs).items():
        (container,) = spec["containers"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        if name in infer:
            assert gpus == "1", name
            assert spec["nodeSelector"] == {"karpenter.sh/nodepool": gpu_pool["metadata"]["name"]}
        else:
            assert gpus is None, name
            assert "karpenter.sh/nodepool" not in spec.get("nodeSelector", {}), name
    for pool in of_kind(docs, "NodePool"):
        if pool is not gpu_pool:
            assert GPU_TAINT not in pool["spec"]["template"]["spec"].get("taints", [])


def check_one_scaler_per_queue(topology: Topology, docs: Docs) -> None:
    region, account = config(docs)["AWS_REGION"], _account(docs)
    watched = Counter(
        trigger["metadata"]["queueURL"]
        for scaled in of_kind(docs, "ScaledObject")
        for trigger in scaled["spec"]["triggers"]
        if trigger["type"] == "aws-sqs-queue"
    )
    expected = {queue_url(region, account, q.name) for q in topology.queues}  # DLQs: no consumer
    assert set(watched) == expected
    assert [url for url, n in watched.items() if n != 1] == []
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    for scaled in of_kind(docs, "ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments


def check_grace_outlasts_drain(topology: Topology, docs: Docs) -> None:
    settings = config(docs)
    drain = float(settings["SHUTDOWN_GRACE_S"]) + int(settings["SQS_WAIT_S"])
    for name, spec in pod_specs(docs).items():
        assert spec["terminationGracePeriodSeconds"] > drain, name


def check_images_are_pinned(topology: Topology, docs: Docs) -> None:
    for name, spec in pod_specs(docs).items():
        for container in spec["containers"] + spec.get("initContainers", []):
            image = container["image"]
            tag = re.fullmatch(r"[^@]+?(?::(?P<tag>[^:/@]+))?(?:@sha256:[0-9a-f]{64})?", image)
            assert tag and (tag["tag"] or "@sha256:" in image), f"{name}: {image} has no tag"
            assert tag["tag"] != "latest", f"{name}: {image}"


def check_containers_are_locked_down(topology: Topology, docs: Docs) -> None:
    for name, spec in pod_specs(docs).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context.get("runAsNonRoot", pod["runAsNonRoot"]) is True, name
            assert context.get("runAsUser", pod["runAsUser"]) > 0, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context.get("privileged", False) is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name


def check_secrets_by_reference(topology: Topology, docs: Docs) -> None:
    secretish = re.compile(r"DATABASE_URL|SECRET|PASSWORD|TOKEN|ACCESS_KEY", re.IGNORECASE)
    assert not [key for key in config(docs) if secretish.search(key)]
    assert not of_kind(docs, "Secret"), "Secrets are made by the platform, never rendered"
    for name, spec in pod_specs(docs).items():
        for variable in spec["containers"][0].get("env", []):
            if secretish.search(variable["name"]):
                assert "value" not in variable, f"{name}: {variable['name']} is a literal"
                assert variable["valueFrom"]["secretKeyRef"]["name"], name


POLICIES = {
    "gpu": check_gpu_scheduling,
    "scalers": check_one_scaler_per_queue,
    "grace": check_grace_outlasts_drain,
    "images": check_images_are_pinned,
    "locked-down": check_containers_are_locked_down,
    "secrets": check_secrets_by_reference,
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_holds(policy: str, rendering: tuple[Topology, Docs]) -> None:
    POLICIES[policy](*rendering)


def _pod(docs: Docs, service: str) -> dict[str, Any]:
    return pod_specs(docs)[f"conveyor-{service}"]


def _add_toleration(docs: Docs) -> None:
    _pod(docs, "persist").setdefault("tolerations", []).append({"operator": "Exists"})


def _duplicate_scaler(docs: Docs) -> None:
    docs.append(copy.deepcopy(of_kind(docs, "ScaledObject")[-1]))


def _drop_scaler(docs: Docs) -> None:
    docs.remove(of_kind(docs, "ScaledObject")[0])


def _short_grace(docs: Docs) -> None:
    _pod(docs, "notify")["terminationGracePeriodSeconds"] = 25  # = 20 s grace + 5 s poll


def _latest(docs: Docs) -> None:
    _pod(docs, "ingest")["containers"][0]["image"] = "registry.example.com/conveyor-ingest:latest"


def _untagged(docs: Docs) -> None:
    _pod(docs, "ingest")["containers"][0]["image"] = "registry.example.com:5000/conveyor-ingest"


def _root(docs: Docs) -> None:
    _pod(docs, "persist")["containers"][0]["securityContext"]["runAsUser"] = 0


def _writable(docs: Docs) -> None:
    _pod(docs, "notify")["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False


def _literal_secret(docs: Docs) -> None:
    _pod(docs, "notify")["containers"][0]["env"].append(
        {"name": "NOTIFY_WEBHOOK_SECRET", "value": "whsec_literal"}
    )


@pytest.mark.parametrize(
    ("policy", "breakage"),
    [
        ("gpu", _add_toleration),
        ("scalers", _duplicate_scaler),
        ("scalers", _drop_scaler),
        ("grace", _short_grace),
        ("images", _latest),
        ("images", _untagged),
        ("locked-down", _root),
        ("locked-down", _writable),
        ("secrets", _literal_secret),
    ],
)
def test_policy_sees_a_broken_manifest(policy: str, breakage: Callable[[Docs], None]) -> None:
    docs = default_manifests()
    POLICIES[policy](Topology(), docs)
    breakage(docs)
    with pytest.raises(AssertionError):
        POLICIES[policy](Topology(), docs)


# -- the manifests and the rest of the system agree ------------------------------------------------


SETTINGS: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "infer": InferSettings,
    "persist": PersistSettings,
    "notify": NotifySettings,
}
SECRET_VALUES = {
    "database-url": "postgresql://svc:pw@db.example:5432/conveyor",
    "webhook-secret": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
}


def test_each_service_loads_its_settings_from_what_its_pod_gets(
    clean_env: pytest.MonkeyPatch,
) -> None:
    docs = irsa_manifests()
    for name, spec in pod_specs(docs).items():
        service = next(s for s in SERVICES if name.startswith(f"{TWO_MODELS.prefix}-{s}"))
        env = dict(config(docs))
        for variable in spec["containers"][0]["env"]:
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            else:
                env[variable["name"]] = SECRET_VALUES[variable["valueFrom"]["secretKeyRef"]["key"]]
        with clean_env.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = load_settings(SETTINGS[service])
        assert settings.topology() == TWO_MODELS
        assert settings.aws().endpoint_url is None  # real AWS
        assert settings.aws().access_key_id is None  # credentials from Pod Identity / IRSA
        assert settings.metrics_port == int(config(docs)["METRICS_PORT"])
        if isinstance(settings, InferSettings):
            assert settings.served_model in TWO_MODELS.models
            assert name == f"{TWO_MODELS.prefix}-infer-{settings.served_model}"


def _account(docs: Docs) -> str:
    url = of_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["queueURL"]
    return url.split("/")[3]


def test_service_accounts_are_the_ones_the_roles_trust() -> None:
    docs, template = default_manifests(), default_template()
    associations = {
        (r["Properties"]["Namespace"], r["Properties"]["ServiceAccount"])
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EKS::PodIdentityAssociation" and "Condition" not in r
    }
    accounts = {
        (sa["metadata"]["namespace"], sa["metadata"]["name"])
        for sa in of_kind(docs, "ServiceAccount")
    }
    assert accounts == associations
    used = {
        (d["metadata"]["namespace"], spec["serviceAccountName"])
        for d, spec in zip(of_kind(docs, "Deployment"), pod_specs(docs).values(), strict=True)
    }
    assert used == accounts


def test_irsa_service_accounts_name_their_roles() -> None:
    docs = irsa_manifests()
    for sa in of_kind(docs, "ServiceAccount"):
        arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert arn == f"arn:aws:iam::{IRSA_K8S.account_id}:role/{sa['metadata']['name']}"


def test_keda_reads_queue_depth_as_itself() -> None:
    docs = default_manifests()
    (auth,) = of_kind(docs, "TriggerAuthentication")
    assert auth["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "keda"}
    for scaled in of_kind(docs, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    resources = default_template()["Resources"]
    assert resources["KedaOperatorRole"]["Properties"]["RoleName"] == scaler_role_name(Topology())


def test_infer_scales_to_zero_and_counts_work_in_flight() -> None:
    docs = default_manifests()
    scaled = named(docs, "ScaledObject", "conveyor-infer-all-minilm-l6-v2")["spec"]
    assert scaled["minReplicaCount"] == 0
    assert scaled["cooldownPeriod"] >= 300  # a GPU node takes minutes to come
    metadata = scaled["triggers"][0]["metadata"]
    assert metadata["scaleOnInFlight"] == "true"
    assert metadata["activationQueueLength"] == "0"
    pod = named(docs, "Deployment", "conveyor-infer-all-minilm-l6-v2")["spec"]["template"]
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"


def test_workers_liveness_asks_whether_the_receive_loop_is_alive() -> None:
    """Not a TCP probe: a process can serve its port while its receive loop hangs."""
    docs = default_manifests()
    for name in ("infer-all-minilm-l6-v2", "persist", "notify"):
        deployment = named(docs, "Deployment", f"conveyor-{name}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        assert {"name": "metrics", "containerPort": 9090} in [
            {k: p[k] for k in ("name", "containerPort")} for p in container["ports"]
        ]


def test_ingest_is_served_probed_and_scaled_on_cpu() -> None:
    docs = default_manifests()
    deployment = named(docs, "Deployment", "conveyor-ingest")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = named(docs, "Service", "conveyor-ingest")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    hpa = named(docs, "HorizontalPodAutoscaler", "conveyor-ingest")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "conveyor-ingest"
    assert hpa["minReplicas"] >= 2
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        matched = [
            d
            for d in of_kind(docs, "Deployment")
            if pdb["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, pdb["metadata"]["name"]


def test_karpenter_rules_that_only_cel_would_check() -> None:
    """Rules of the CRDs written in CEL (x-kubernetes-validations), which jsonschema skips."""
    docs = default_manifests()
    for node_class in of_kind(docs, "EC2NodeClass"):
        spec = node_class["spec"]
        assert ("role" in spec) != ("instanceProfile" in spec)
        (term,) = spec["amiSelectorTerms"]
        assert re.fullmatch(r"[a-z0-9]+@(latest|v[0-9]+)", term["alias"])
    for pool in of_kind(docs, "NodePool"):
        for requirement in pool["spec"]["template"]["spec"]["requirements"]:
            assert not requirement["key"].startswith("karpenter.sh/nodepool")
            if requirement["operator"] == "In":
                assert requirement["values"]
        labels = pool["spec"]["template"]["metadata"]["labels"]
        assert not [k for k in labels if k.split("/")[0].endswith(("karpenter.sh", "k8s.aws"))]


def test_cli_refuses_a_latest_tag_and_a_bad_account() -> None:
    runner = CliRunner()
    args = ["kubernetes", "--image-registry", "r.example.com"]
    result = runner.invoke(
        render_app, [*args, "--account-id", "123456789012", "--image-tag", "latest"]
    )
    assert result.exit_code == 2 and "never 'latest'" in result.output
    result = runner.invoke(render_app, [*args, "--account-id", "1234"])
    assert result.exit_code == 2 and "12 digits" in result.output
