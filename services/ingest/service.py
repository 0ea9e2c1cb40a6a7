"""ingest: the HTTP API that accepts jobs, and the outbox relay that enqueues them, one queue
per model.

The API itself is :mod:`services.ingest.api`; this module gives it what it stands on: the
database pool, the outbox relay (:mod:`services.ingest.relay`) with a publisher per model
queue (payloads over the claim-check threshold travel through the payloads bucket), the
readiness probe of the queues, whether a model has a deployed version (its ``LATEST`` pointer
in the models bucket, the one object there ingest may read), the activity line, and a uvicorn
server whose shutdown follows the service's (SIGTERM: stop accepting, finish requests, one last
relay pass, exit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import anyio
import uvicorn

from services.infer.manifest import latest_key
from services.ingest import idempotency
from services.ingest.api import create_app
from services.ingest.relay import Relay, RelayPolicy, sqs_send
from shared.activity import Activity
from shared.aws import AwsClients, aws_errors, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import IngestSettings
from shared.db import Connection, open_pool
from shared.errors import AccessDenied, AwsError
from shared.messages import Envelope
from shared.sqs import Publisher
from shared.telemetry import get_logger

__all__ = ["run"]

log = get_logger("ingest")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def run(settings: IngestSettings, stopping: anyio.Event) -> None:
    topology = settings.topology()
    aws = settings.aws()
    async with AwsClients(aws) as clients, open_pool(settings.database_url) as pool:
        sqs = await clients.sqs()
        urls = {
            model: await resolve_queue_url(sqs, aws, topology.infer_queue(model).name)
            for model in topology.models
        }
        claims = ClaimCheck(clients, topology.payloads_bucket.name, settings.claim_check_bytes)
        publishers = {
            topology.infer_queue(model).name: Publisher(sqs, aws, url)
            for model, url in urls.items()
        }

        async def prune_keys(conn: Connection) -> int:
            return await idempotency.prune(conn, settings.idempotency_ttl_s)

        relay = Relay(
            pool,
            list(publishers),
            sqs_send(publishers, claims, settings.claim_check_bytes),
            RelayPolicy(poll_s=settings.outbox_poll_s, retention_s=settings.outbox_retention_s),
            maintenance=[prune_keys],
        )

        async def check_queues() -> None:
            for url in urls.values():
                with aws_errors(aws, resource=url):
                    await sqs.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                    )

        async def queue_depth(model: str) -> int:
            url = urls[model]
            with aws_errors(aws, resource=url):
                response = await sqs.get_queue_attributes(
                    QueueUrl=url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                    ],
                )
            attributes = response.get("Attributes", {})
            return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
                attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
            )

        models_bucket = topology.models_bucket.name

        async def model_deployed(model: str) -> bool:
            """Whether ``<model>/LATEST`` is in the models bucket (ingest may read only that)."""
            s3 = await clients.s3()
            try:
                with aws_errors(aws, resource=models_bucket):
                    await s3.head_object(Bucket=models_bucket, Key=latest_key(model))
            except AccessDenied:
                # S3 answers a missing key with 403, not 404, to a caller without
                # s3:ListBucket, which ingest is not granted (it would list every model file).
                return False
            except AwsError as exc:
                if exc.code in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        activity = Activity(log, interval_s=settings.log_summary_s)
        activity.watch(lambda: {"relayed": relay.sent, "relay_failures": relay.failed})

        async def wake_relay(_envelope: Envelope) -> None:
            relay.wake()

        app = create_app(
            settings,
            pool=pool,
            enqueue=wake_relay,
            check_queues=check_queues,
            queue_depth=queue_depth,
            model_deployed=model_deployed,
            activity=activity,
        )
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_s),
                # uvicorn's 5 s default equals httpx's: a client reusing a connection just as
                # the server drops it gets a ReadError on a request it cannot safely retry.
                timeout_keep_alive=settings.keep_alive_s,
            )
        )
        async with anyio.create_task_group() as tg:
            for publisher in publishers.values():
                publisher.start(tg)
            await tg.start(relay.run)
            await tg.start(activity.run)

            async def serve() -> None:
                await server.serve()
                # Requests are done: one last relay pass sends what they wrote, then stop.
                relay.shutdown()
                with anyio.move_on_after(settings.shutdown_grace_s):
                    await relay.stopped.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(serve)
            with anyio.fail_after(30):
                while not server.started:
                    if server.should_exit:  # it could not bind, say
                        return
                    await anyio.sleep(0.05)
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            log.info("ready", url=f"http://{host}:{port}", models=list(urls))
            await stopping.wait()
            server.should_exit = True
