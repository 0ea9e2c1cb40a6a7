"""The topology rendered for the cloud: a CloudFormation template and Kubernetes manifests,
and what watches it: a Grafana dashboard and Prometheus alert rules.

cloudformation  queues, DLQs, buckets; the template as a whole
iam             one IAM role per service, the autoscaler's and the observer's policies, trust
kubernetes      namespace, config, service accounts, deployments, service, PDBs, HPA
pods            what every pod shares: security contexts, probes, resources, drain grace
autoscaling     KEDA ScaledObjects (one per queue) and their TriggerAuthentication
nodes           Karpenter NodePools and EC2NodeClasses: GPU nodes for infer only
names           the names both renderings share (roles, service accounts, images, ARNs)
dashboards      the Grafana dashboard (JSON model): layout, variables
panels          what it shows: rows of panels and their queries, in one list
alerts          Prometheus alert rules (a rule file), with their SLOs as options
series          the metric names both may query (the code's, and the exporters'), the SLOs

Each returns plain data (dicts and lists, ready for JSON or YAML); nothing here reads the
environment or writes files: ``conveyor render`` does that.
"""

from shared.render.alerts import render_rules
from shared.render.cloudformation import CloudFormationOptions, render_cloudformation
from shared.render.dashboards import render_dashboard
from shared.render.kubernetes import KubernetesOptions, render_kubernetes
from shared.render.series import MonitoringOptions

__all__ = [
    "CloudFormationOptions",
    "KubernetesOptions",
    "MonitoringOptions",
    "render_cloudformation",
    "render_dashboard",
    "render_kubernetes",
    "render_rules",
]
