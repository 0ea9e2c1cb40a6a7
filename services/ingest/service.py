"""ingest: the HTTP API that accepts jobs and enqueues them, one queue per model.

The API itself is :mod:`services.ingest.api`; this module gives it what it stands on: the
database pool, a publisher per model queue (payloads over the claim-check threshold travel
through the payloads bucket), the readiness probe of the queues, and a uvicorn server whose
shutdown follows the service's (SIGTERM: stop accepting, finish requests, exit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import anyio
import uvicorn

from services.ingest.api import create_app
from shared.aws import AwsClients, aws_errors, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import IngestSettings
from shared.db import open_pool
from shared.messages import Envelope, JobRequest
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
        publishers = {model: Publisher(sqs, aws, url) for model, url in urls.items()}

        async def enqueue(envelope: Envelope) -> None:
            request = JobRequest.model_validate(envelope.payload)
            body = envelope.model_dump_json()
            if len(body.encode()) > settings.claim_check_bytes:
                sealed = await claims.seal(
                    envelope.type,
                    job_id=envelope.job_id,
                    tenant=envelope.tenant,
                    traceparent=envelope.traceparent,
                    payload=request,
                )
                body = sealed.model_dump_json()
            await publishers[request.model].publish(body)

        async def check_queues() -> None:
            for url in urls.values():
                with aws_errors(aws, resource=url):
                    await sqs.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                    )

        app = create_app(settings, pool=pool, enqueue=enqueue, check_queues=check_queues)
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_s),
            )
        )
        async with anyio.create_task_group() as tg:
            for publisher in publishers.values():
                publisher.start(tg)

            async def serve() -> None:
                await server.serve()
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
