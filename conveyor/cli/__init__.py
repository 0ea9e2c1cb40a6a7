"""The ``conveyor`` command line (``conveyor.cli.app:app``; ``python -m conveyor``).

app       the top-level command and its sub-commands
stack     dev, provision, migrate: standing a stack up
jobs      submit, status: using one
bulk      submit --file: many jobs from a JSONL file, with progress, resumable (bulkfile: the
          file formats, the jobs' keys, what a rerun skips)
models    push and list model versions in the models bucket
dlq       dead-letter queues: list, show, redrive
keys      API keys: create, list, revoke
webhooks  webhook endpoints and their signing secrets
render    the topology as CloudFormation and Kubernetes manifests, its Grafana dashboard
          and Prometheus alert rules (deploy/)
plan      infer replicas, GPU nodes and monthly cost for a load, from measured throughput
support   what the sub-commands share: running, the operator's database

Each sub-command module also runs alone (``python -m conveyor.cli.keys``); this package
imports none of them, so that doing so does not import one twice.
"""
