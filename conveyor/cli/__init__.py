"""The ``conveyor`` command line (``conveyor.cli.app:app``; ``python -m conveyor``).

app       the top-level command and its sub-commands
stack     dev, provision, migrate: standing a stack up
jobs      submit, status: using one
models    push and list model versions in the models bucket
dlq       dead-letter queues: list, show, redrive
keys      API keys: create, list, revoke
webhooks  webhook endpoints and their signing secrets
support   what the sub-commands share: running, the operator's database

Each sub-command module also runs alone (``python -m conveyor.cli.keys``); this package
imports none of them, so that doing so does not import one twice.
"""
