"""The SQS runtime every service stands on: a batching consumer and a batching publisher."""

from shared.sqs.consumer import ConsumerStats, Handler, ReceivedMessage, SqsConsumer
from shared.sqs.publisher import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, Publisher
from shared.sqs.retry import RetryLater, RetryPolicy

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "ConsumerStats",
    "Handler",
    "Publisher",
    "ReceivedMessage",
    "RetryLater",
    "RetryPolicy",
    "SqsConsumer",
]
