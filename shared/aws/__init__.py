"""AWS access: clients, the error seam, queue resolution and topology provisioning."""

from shared.aws.clients import AwsClients, client_config
from shared.aws.errors import PROVISION_HINT, aws_errors, translate
from shared.aws.queues import resolve_queue_url

__all__ = [
    "PROVISION_HINT",
    "AwsClients",
    "aws_errors",
    "client_config",
    "resolve_queue_url",
    "translate",
]
