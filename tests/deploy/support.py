"""What the deploy tests share: the example renderings, loading them, and schema validation."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from shared.render import (
    CloudFormationOptions,
    KubernetesOptions,
    render_cloudformation,
    render_kubernetes,
)
from shared.topology import Topology

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCHEMAS = DEPLOY / "schemas"
TEMPLATE = DEPLOY / "cloudformation" / "conveyor.yaml"
MANIFESTS = DEPLOY / "kubernetes" / "conveyor.yaml"

# The committed example renderings were made with these (deploy/README.md says so too).
EXAMPLE_K8S_ARGS = [
    "--account-id",
    "123456789012",
    "--image-registry",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    "--image-tag",
    "0.1.0",
]
EXAMPLE_K8S = KubernetesOptions(
    account_id="123456789012",
    image_registry="123456789012.dkr.ecr.us-east-1.amazonaws.com",
    image_tag="0.1.0",
)
# A second shape: another prefix, two models (one with a dot), IRSA instead of Pod Identity.
TWO_MODELS = Topology(prefix="acme", models=("all-minilm-l6-v2", "e5-small.v2"))
OIDC = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
IRSA_CFN = CloudFormationOptions(namespace="ml", irsa_oidc_provider=OIDC)
IRSA_K8S = KubernetesOptions(
    account_id="111122223333",
    image_registry="registry.example.com/ml",
    image_tag="1.2.3",
    region="eu-west-1",
    namespace="ml",
    irsa=True,
)

# Kubernetes versions the built-in kinds are validated against: EKS's oldest in standard
# support when this was written, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.31", kubernetes_validate.latest_version())

# Custom resources -> the vendored openAPIV3Schema of their CRD (deploy/schemas/README.md).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_ScaledObject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_TriggerAuthentication.json",
    ("karpenter.sh/v1", "NodePool"): "karpenter.sh_v1_NodePool.json",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter.k8s.aws_v1_EC2NodeClass.json",
}


def load_yaml_stream(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def default_template() -> dict[str, Any]:
    return render_cloudformation(Topology())


def irsa_template() -> dict[str, Any]:
    return render_cloudformation(TWO_MODELS, IRSA_CFN)


def default_manifests() -> list[dict[str, Any]]:
    return render_kubernetes(Topology(), EXAMPLE_K8S)


def irsa_manifests() -> list[dict[str, Any]]:
    return render_kubernetes(TWO_MODELS, IRSA_K8S)


def dump_template(template: dict[str, Any]) -> str:
    from conveyor.cli.render import to_yaml

    return to_yaml([template])


# -- Kubernetes schemas ------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server's strict field validation
    does (``kubectl apply --validate=strict``): a misspelt field would otherwise pass here and
    be pruned there, silently."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    strict = _strict(schema)
    # OpenAPI v3.0 schemas (nullable, x-kubernetes-*) read as JSON Schema draft 4 with
    # extensions, which jsonschema ignores; CEL rules (x-kubernetes-validations) are not
    # evaluated here (the policy tests check the ones these manifests depend on).
    jsonschema.Draft4Validator.check_schema(strict)
    return jsonschema.Draft4Validator(strict)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema error of one manifest: built-in kinds against Kubernetes' own schemas
    (strict, each version in K8S_VERSIONS), custom resources against their CRD's schema."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    name = f"{key[1]}/{doc.get('metadata', {}).get('name')}"
    if key in CRD_SCHEMAS:
        validator = crd_validator(*key)
        return [
            f"{name}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(copy.deepcopy(doc))
        ]
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            errors.append(f"{name} (Kubernetes {version}): {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: no schema: {exc.message} (vendor its CRD's schema)")
    return errors


# -- reading manifests -------------------------------------------------------------------------


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployment name -> its pod template's spec."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")
    }


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    (config_map,) = of_kind(docs, "ConfigMap")
    data: dict[str, str] = config_map["data"]
    return data
