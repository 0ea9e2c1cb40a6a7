"""Resolving queue URLs from the topology, with errors that explain a missing queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.aws.errors import aws_errors
from shared.config import AwsSettings

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

__all__ = ["resolve_queue_url"]


async def resolve_queue_url(sqs: SQSClient, aws: AwsSettings, name: str) -> str:
    """The URL of queue ``name``; raises QueueNotFound naming the queue and the fix."""
    with aws_errors(aws, resource=name):
        response = await sqs.get_queue_url(QueueName=name)
    return response["QueueUrl"]
