"""The ingest service: its HTTP API (:mod:`services.ingest.api`) and what the API is made of.

api          create_app: the routes, their lifespan and readiness probe
schemas      the bodies of POST /v1/jobs, the submission held to the settings
errors       every error answered as JSON
body_limit   the request body size limit (pure ASGI)
waiting      the job_finished listener and the status reads it wakes
jobs         the queries on the jobs and results tables
outbox       the outbox table: a job's message, written with the job, sent by the relay
relay        the outbox relay: unsent rows -> SQS, backoff while SQS is away, pruning
idempotency  the Idempotency-Key header: claim, replay, refuse a reused key
backpressure 429 while a model's backlog (queue + unsent outbox) is over the limit
service      the process: pool, publishers, relay, uvicorn
"""

from services.ingest.api import CheckQueues, Enqueue, TenantOf, create_app
from services.ingest.backpressure import Backpressure, QueueDepth
from services.ingest.body_limit import BodySizeLimit, BodyTooLarge
from services.ingest.errors import ErrorBody, ValidationErrorBody, ValidationProblem
from services.ingest.relay import Relay, RelayPolicy, Send, sqs_send
from services.ingest.schemas import JobAccepted, Submission
from services.ingest.waiting import CHANNEL, RECHECK_S, JobWaiters

__all__ = [
    "CHANNEL",
    "RECHECK_S",
    "Backpressure",
    "BodySizeLimit",
    "BodyTooLarge",
    "CheckQueues",
    "Enqueue",
    "ErrorBody",
    "JobAccepted",
    "JobWaiters",
    "QueueDepth",
    "Relay",
    "RelayPolicy",
    "Send",
    "Submission",
    "TenantOf",
    "ValidationErrorBody",
    "ValidationProblem",
    "create_app",
    "sqs_send",
]
