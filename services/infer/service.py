"""infer: pulls jobs of one model in batches, runs the model, publishes results.

Start-up: resolve the model version (INFER_MODEL_VERSION or the latest pushed; until one is
pushed, wait for it, saying once what to run), fetch and verify its artifacts from the models
bucket, load the handler on the chosen device (CUDA when present, else CPU), then receive.
Each message is one job; concurrent handlers feed the dynamic batcher
(:mod:`services.infer.runner`); each job's result (succeeded with outputs, or failed with the
model's error) is published to the results queue, claim-checked when large, before the job's
message is deleted. A job still running after INFER_STARTED_AFTER_S is first announced as
running (``job.started``); a quicker one goes from queued to its final state. A job over the
input limits (:mod:`services.infer.limits`) fails without reaching the model.

Each job's trace continues here (:func:`shared.observe.handling`): ``infer job.requested``,
with a ``batch`` child for its wait in the batcher and its ``model call``; the messages it
sends carry that span's context. Metrics: :mod:`services.infer.metrics`.
"""

from __future__ import annotations

import contextlib
import datetime
import tempfile
from pathlib import Path

import anyio
from opentelemetry import trace

from services.infer.announce import announced
from services.infer.handlers import (
    choose_device,
    compile_handler,
    import_handler_modules,
    load_handler,
)
from services.infer.limits import over_limits
from services.infer.metrics import JOBS, MODEL_INFO, MODEL_LOAD
from services.infer.registry import fetch_model, wait_for_version
from services.infer.runner import Matrix, ModelFailure, ModelRunner, packed
from services.infer.threads import ThreadShare, configure_torch_threads
from shared.activity import Activity
from shared.aws import AwsClients, resolve_queue_url
from shared.claimcheck import ClaimCheck
from shared.config import InferSettings
from shared.messages import (
    Envelope,
    JobRequest,
    JobResult,
    JobStarted,
    JobStatus,
    MessageType,
    PoisonMessage,
)
from shared.observe import handling
from shared.sqs import Publisher, ReceivedMessage, SqsConsumer
from shared.telemetry import get_logger
from shared.tracing import leaf_tracer, traceparent

__all__ = ["run"]

log = get_logger("infer")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def run(settings: InferSettings, stopping: anyio.Event) -> None:
    topology = settings.topology()
    model = settings.served_model
    aws = settings.aws()
    import_handler_modules(settings.handler_modules)
    device = choose_device(settings.device)
    threads = configure_torch_threads(settings.torch_threads)
    # INFER_CACHE_DIR keeps verified artifacts across restarts; without it, a temporary
    # directory lives as long as the worker.
    scratch = (
        contextlib.nullcontext(settings.cache_dir)
        if settings.cache_dir
        else tempfile.TemporaryDirectory(prefix="conveyor-models-")
    )
    with scratch as where:
        cache_dir = Path(where)
        async with AwsClients(aws) as clients:
            sqs = await clients.sqs()
            jobs_url = await resolve_queue_url(sqs, aws, topology.infer_queue(model).name)
            results_url = await resolve_queue_url(sqs, aws, topology.results_queue.name)
            bucket = topology.models_bucket.name
            # Started before its model was pushed: wait for the push, not crash-loop.
            version = await wait_for_version(
                clients, bucket, model, settings.model_version, stopping
            )
            if version is None:  # stopped while waiting
                return
            manifest, directory = await fetch_model(clients, bucket, model, version, cache_dir)
            began = anyio.current_time()
            handler = await anyio.to_thread.run_sync(load_handler, manifest.kind, directory, device)
            compiled = settings.compile and await anyio.to_thread.run_sync(compile_handler, handler)
            MODEL_LOAD.labels(model).set(anyio.current_time() - began)
            MODEL_INFO.labels(model, version, manifest.kind, str(device)).set(1)
            log.info(
                "model loaded",
                model=model,
                version=version,
                kind=manifest.kind,
                device=str(device),
                torch_threads=threads,
                shared_job_cost=settings.shared_job_cost,
                compiled=compiled,
                seconds=round(anyio.current_time() - began, 2),
            )
            runner = ModelRunner(
                handler,
                max_batch_items=settings.max_batch_items,
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_wait_s=settings.max_batch_wait_s,
                model=model,
                thread_share=(
                    ThreadShare(threads, settings.shared_job_cost)
                    if settings.shared_job_cost > 0 and device.type == "cpu"
                    else None
                ),
            )
            claims = ClaimCheck(clients, topology.payloads_bucket.name, settings.claim_check_bytes)
            results = Publisher(sqs, aws, results_url)
            activity = Activity(
                log, interval_s=settings.log_summary_s, names=("jobs_succeeded", "jobs_failed")
            )

            async def finish(
                envelope: Envelope,
                request: JobRequest,
                started: datetime.datetime,
                outputs: Matrix | None,
                error: str | None,
            ) -> None:
                """Publish the job's result: its outputs, or the error it failed with."""
                result = JobResult(
                    status=JobStatus.SUCCEEDED if error is None else JobStatus.FAILED,
                    model=model,
                    model_version=version,
                    vectors=None if outputs is None else packed(outputs),
                    error=error,
                    started_at=started,
                    finished_at=_now(),
                    callback_url=request.callback_url,
                )
                sealed = await claims.seal(
                    MessageType.JOB_RESULT,
                    job_id=envelope.job_id,
                    tenant=envelope.tenant,
                    traceparent=traceparent(),
                    payload=result,
                )
                await results.publish(sealed.model_dump_json())
                activity.count("jobs_succeeded" if error is None else "jobs_failed")
                log.debug("job done", job_id=str(envelope.job_id), status=result.status.value)

            async def announce_start(envelope: Envelope, started: datetime.datetime) -> None:
                """``job.started``: queued -> running (:mod:`services.infer.announce`)."""
                running = await claims.seal(
                    MessageType.JOB_STARTED,
                    job_id=envelope.job_id,
                    tenant=envelope.tenant,
                    traceparent=traceparent(),
                    payload=JobStarted(model=model, model_version=version, started_at=started),
                )
                await results.publish(running.model_dump_json())

            async def handle(message: ReceivedMessage) -> None:
                envelope, request = await claims.read(
                    message.body, MessageType.JOB_REQUESTED, JobRequest
                )
                if request.model != model:
                    raise PoisonMessage(f"a job for model {request.model!r} in {model!r}'s queue")
                with handling("infer", envelope, message, model=model):
                    await run_job(envelope, request)

            async def run_job(envelope: Envelope, request: JobRequest) -> None:
                started = _now()
                refused = over_limits(
                    request.inputs,
                    max_inputs=settings.max_inputs,
                    max_input_chars=settings.max_input_chars,
                )
                if refused is not None:  # queued -> failed; never tokenised nor run
                    log.warning("job refused", job_id=str(envelope.job_id), reason=refused)
                    await finish(envelope, request, started, None, f"refused: {refused}")
                    JOBS.labels(model, "refused").inc()
                    return

                on_model = anyio.Event()

                async def run_batch() -> tuple[Matrix | None, str | None]:
                    # Waiting for company, then the model call: the batch links to this span.
                    batch = leaf_tracer().start_as_current_span("batch", record_exception=False)
                    with batch as span:
                        try:
                            job = runner.job(envelope.job_id, request.inputs, on_model.set)
                            return await runner.run(job), None
                        except ModelFailure as exc:  # the job fails; the message is done
                            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                            return None, str(exc)

                # Running means on the model: a job waiting for its batch's turn is not
                # announced, so a saturated worker sends no message per job for its backlog.
                outputs, error = await announced(
                    run_batch,
                    lambda: announce_start(envelope, started),
                    settings.started_after_s,
                    running=on_model,
                )
                await finish(envelope, request, started, outputs, error)
                JOBS.labels(model, "succeeded" if error is None else "failed").inc()

            consumer = SqsConsumer.for_service(
                settings, sqs, jobs_url, handle, concurrency=settings.concurrency
            )
            activity.watch(consumer.stats.totals)
            activity.watch(
                lambda: {"model_calls": runner.stats.model_calls, "inputs": runner.stats.items}
            )
            async with anyio.create_task_group() as tg:
                runner.start(tg)
                results.start(tg)
                tg.start_soon(activity.run)
                log.info("ready", model=model, version=version, queue=jobs_url.rsplit("/", 1)[-1])
                await consumer.run(stopping)
                tg.cancel_scope.cancel()
            log.info("batching", model=model, summary=runner.stats.summary())
