"""ingest's HTTP API: accept jobs, hand them to the queue, answer status reads.

    POST /v1/jobs              202 + Location: the job is recorded as queued, with its message
                               in the outbox (one statement); the relay sends it to SQS.
                               ?wait=N holds the answer until the job is final (200 + the job
                               as GET reads it), at most N s (then 202 + the job as it stands)
                               ``Idempotency-Key`` makes retries safe (services.ingest.idempotency);
                               429 + Retry-After while the model's backlog is over the limit;
                               409 while the model has no deployed version (naming the push)
    GET  /v1/jobs/{job_id}     the job (tenant-scoped); ?wait=N holds the answer up to N s
                               until the job is final; ?encoding_format=base64 writes each
                               vector as the base64 of its float32 values
    DELETE /v1/jobs/{job_id}   cancel a queued or running job: 200 + the job; 409 if final
    GET  /healthz              liveness, no dependencies
    GET  /readyz               PostgreSQL and the queues answer, 2 s each; ``models`` says
                               which models have no deployed version (not a failure)
    GET  /docs, /openapi.json  the OpenAPI description

Every /v1 route needs an API key, ``Authorization: Bearer <key>``, which names the tenant the
request acts for (:mod:`services.ingest.auth`); health and docs are public. Browsers may call
the API from the origins of ``INGEST_CORS_ORIGINS`` only (none by default: no CORS headers).

Publishing is not the API's: a job and the message announcing it are written to PostgreSQL
in one statement (the transactional outbox, :mod:`services.ingest.outbox`), and the relay
(:mod:`services.ingest.relay`, run by the service) sends it. ``enqueue(envelope)`` is told of
each message once it is committed: the service wakes its relay with it, tests record it. The
queues' readiness is injected (``check_queues``); this module knows nothing of SQS. Every
answer is JSON, errors included (:mod:`services.ingest.errors`); an over-long body is refused
before it is parsed (:mod:`services.ingest.body_limit`). A status read that waits is woken by
the ``job_finished`` notification: its contract is in :mod:`services.ingest.waiting`.
A submission is a span, the root of its job's trace, timed and its refusals counted by reason
(:mod:`services.ingest.telemetry`); the job's envelope carries the span's context.
"""

import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Annotated, Any, Final

import anyio
import asyncpg
import structlog
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response as StarletteResponse

from services.ingest import idempotency, jobs
from services.ingest.auth import ApiKeyAuth, TenantOf, key_tenants
from services.ingest.backpressure import Backpressure, QueueDepth
from services.ingest.body_limit import BodySizeLimit
from services.ingest.deployed import DeployedModels, ModelDeployed, push_hint
from services.ingest.errors import ErrorBody, ValidationErrorBody, add_error_handlers
from services.ingest.jobs import JobView
from services.ingest.metrics import JOBS_ACCEPTED
from services.ingest.schemas import JobAccepted, JobSettled, Submission, submission_body
from services.ingest.telemetry import SubmissionTelemetry, accepted_now, refuse
from services.ingest.waiting import RECHECK_S, JobWaiters, Watch
from shared.activity import Activity
from shared.config import IngestSettings
from shared.db import Connection, transaction, with_connection
from shared.messages import Envelope, JobRequest, MessageType
from shared.telemetry import get_logger
from shared.tracing import traceparent

__all__ = ["CheckQueues", "Enqueue", "JobWaiters", "TenantOf", "create_app"]

READY_TIMEOUT_S: Final = 2.0
RETRY_AFTER_S: Final = 5
BACKLOG_RETRY_AFTER_S: Final = 5
DB_TIMEOUT_S: Final = 10.0
CORS_METHODS: Final = ("GET", "POST", "DELETE", "OPTIONS")
CORS_HEADERS: Final = ("Authorization", "Content-Type", "Idempotency-Key")
CORS_EXPOSED: Final = ("Location", "Retry-After", "Idempotent-Replayed")

Enqueue = Callable[[Envelope], Awaitable[None]]
"""Told of each job's message once it is committed to the outbox; it must not publish it."""
CheckQueues = Callable[[], Awaitable[None]]

# The database failing to answer (after the bounded retries), as opposed to a bug (a 500).
_DB_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

log = get_logger("ingest")


def create_app(
    settings: IngestSettings,
    *,
    pool: asyncpg.Pool,
    check_queues: CheckQueues,
    enqueue: Enqueue | None = None,
    tenant_of: TenantOf | None = None,
    queue_depth: QueueDepth | None = None,
    model_deployed: ModelDeployed | None = None,
    activity: Activity | None = None,
) -> FastAPI:
    """The API. ``pool`` belongs to the caller, which closes it after the app's lifespan has
    ended. ``tenant_of`` turns a presented API key into its tenant; by default the key is
    looked up in the ``api_keys`` table through ``pool``.

    ``enqueue`` no longer publishes: a job's message leaves through the outbox, sent by the
    relay. It is awaited with each message after its job is committed (the service wakes its
    relay with it; tests record what would be sent); if it fails, the failure is logged and
    the job stays accepted, its message safe in the outbox.

    ``queue_depth(model)`` reads a model queue's messages for backpressure
    (:mod:`services.ingest.backpressure`); without it only unsent outbox rows count.

    ``model_deployed(model)`` tells whether a model has a deployed version
    (:mod:`services.ingest.deployed`); without it every model counts as deployed.

    ``activity`` counts what the API does (accepted, refused, cancelled jobs); the caller
    reports it (one log line per interval); by default the app's lifespan does."""
    waiters = JobWaiters(pool)
    topology = settings.topology()
    backpressure = Backpressure(
        pool,
        topology,
        queue_depth,
        limit=settings.max_backlog,
        cache_s=settings.backlog_cache_s,
    )
    deployed = DeployedModels(model_deployed)
    own_activity = activity is None
    activity = activity or Activity(log, interval_s=settings.log_summary_s)
    read_submission = submission_body(settings)
    current_tenant = ApiKeyAuth(tenant_of or key_tenants(pool))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(waiters.run)
            if own_activity:
                await tg.start(activity.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    app = FastAPI(
        title="Conveyor",
        version=_version(),
        summary="Queue-driven asynchronous inference: submit jobs, read their status.",
        lifespan=lifespan,
        # The request's server span stays (the root of a job's trace); FastAPI's spans of
        # its dependencies, endpoint and serialization inside it go: three more recorded
        # spans per request, 4% of a submission's CPU, that say nothing about the job.
        telemetry={"operation_spans": False},
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # added last, so outermost: refusals (401, 413) carry it too
        app.add_middleware(
            _JsonCors,
            allow_origins=[origin.rstrip("/") for origin in settings.cors_origins],
            # Keys travel in the Authorization header, which a browser sends when the
            # preflight allows the header; credentials (cookies) are neither used nor allowed.
            allow_credentials=False,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
        )
    app.add_middleware(SubmissionTelemetry)  # outermost: it sees every refusal
    app.state.job_waiters = waiters
    app.state.activity = activity
    add_error_handlers(app)

    def status_url(request: Request, job_id: uuid.UUID) -> str:
        if settings.public_url is not None:
            return f"{str(settings.public_url).rstrip('/')}/v1/jobs/{job_id}"
        # What url_for("get_job") answers (base_url keeps the root path and the forwarded
        # scheme and host), without its walk of the routes: 3% of a submission's CPU.
        return f"{request.base_url}v1/jobs/{job_id}"

    async def read(job_id: uuid.UUID, tenant: str, encoding: jobs.EncodingFormat) -> JobView | None:
        async with pool.acquire() as conn:
            return await jobs.get_job(conn, job_id, tenant, encoding)

    async def read_until_final(
        watch: Watch,
        job_id: uuid.UUID,
        tenant: str,
        encoding: jobs.EncodingFormat,
        wait_s: float,
        *,
        queued: bool = False,
    ) -> JobView | None:
        """The job once final, or as it stands after ``wait_s``; ``watch`` (on this job) was
        registered before the job could have finished, so no notification is lost. A job
        known to be ``queued`` (just inserted) is not read before the first wake-up."""
        deadline = anyio.current_time() + wait_s
        if queued:
            await watch.wait(min(wait_s, RECHECK_S))
        while True:
            job = await read(job_id, tenant, encoding)
            remaining = deadline - anyio.current_time()
            if job is None or job.status.final or remaining <= 0:
                return job
            await watch.wait(min(remaining, RECHECK_S))

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "no API key, or not a valid one"},
        422: {"model": ValidationErrorBody, "description": "the request is invalid"},
        # Every /v1 call checks its key in the database, so any of them can meet its outage.
        503: {"model": ErrorBody, "description": "a dependency did not answer; retry later"},
    }

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        summary="Submit a job",
        responses={
            **errors,
            200: {
                "model": JobSettled,
                "description": "with ?wait: the job finished within the wait (202, with the "
                "same fields, when it did not)",
            },
            400: {"model": ErrorBody, "description": "the body is not JSON"},
            409: {
                "model": ErrorBody,
                "description": (
                    "the model has no deployed version yet (the error names the push that "
                    "deploys one), or a request with the same Idempotency-Key is still in "
                    "progress"
                ),
            },
            413: {"model": ErrorBody, "description": "the body is too large"},
            429: {"model": ErrorBody, "description": "the model's backlog is over its limit"},
            503: {"model": ErrorBody, "description": "the job could not be recorded; retry"},
        },
    )
    async def submit_job(
        body: Annotated[Submission, Depends(read_submission)],
        request: Request,
        response: Response,
        tenant: Annotated[str, Depends(current_tenant)],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias=idempotency.KEY_HEADER,
                pattern=idempotency.KEY_PATTERN,
                description=(
                    "1-255 printable characters naming this submission: a retry with the same "
                    "key and body gets the first answer again (for 24 h at least)"
                ),
            ),
        ] = None,
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=settings.max_wait_s,
                description=(
                    "seconds to hold the answer until the job is final: then 200 and the job "
                    "as GET /v1/jobs/{job_id} reads it (with status_url); if it is not final "
                    "by then, 202 and the job as it stands"
                ),
            ),
        ] = 0,
        encoding_format: Annotated[
            jobs.EncodingFormat,
            Query(description="with wait: how the vectors are written, as in GET /v1/jobs/{id}"),
        ] = jobs.EncodingFormat.FLOAT,
    ) -> JobAccepted | StarletteResponse:
        job_id = uuid.uuid4()
        # On every log line of this request (SubmissionTelemetry clears them afterwards).
        structlog.contextvars.bind_contextvars(job_id=str(job_id), model=body.model)
        trace.get_current_span().set_attributes(
            {"conveyor.job_id": str(job_id), "conveyor.model": body.model}
        )
        callback_url = None if body.callback_url is None else str(body.callback_url)
        job = JobRequest(
            model=body.model,
            inputs=body.inputs,
            callback_url=callback_url,
            submitted_at=datetime.datetime.now(datetime.UTC),
        )
        envelope = Envelope(
            type=MessageType.JOB_REQUESTED,
            job_id=job_id,
            tenant=tenant,
            traceparent=traceparent(),  # this request's span: the job's trace starts here
            payload=job.model_dump(mode="json"),
        )
        message = envelope.model_dump_json()
        accepted = JobAccepted(id=job_id, status_url=status_url(request, job_id))
        key = idempotency_key
        digest = idempotency.request_hash(body.model_dump(mode="json"))
        if not await deployed.deployed(body.model):
            # 409, not 422: the request is valid and the same one succeeds once a version is
            # pushed; it conflicts with the stack's state, which the operator can change.
            activity.count("refused_not_deployed")
            refuse(request, "not_deployed")
            log.debug("job refused: no deployed version", model=body.model)
            raise HTTPException(
                409,
                f"model '{body.model}' has no deployed version, so no worker can run its jobs; "
                f"deploy one with {push_hint(body.model)}, then retry",
            )
        try:
            backlog = await backpressure.over_limit(body.model)
        except _DB_UNAVAILABLE as exc:
            raise _unrecorded(request, "could not read the backlog", exc) from exc
        if backlog is not None:
            activity.count("refused_backlog")
            refuse(request, "backlog")
            log.debug("job refused: backlog", model=body.model, backlog=backlog)
            raise HTTPException(
                429,
                f"model '{body.model}' has {backlog} jobs waiting, over the limit of "
                f"{backpressure.limit}; retry later",
                headers={"Retry-After": str(BACKLOG_RETRY_AFTER_S)},
            )

        async def insert(conn: Connection) -> None:
            # A retry finds its own job already there (the first attempt committed, its
            # answer was lost): the outbox row came with it.
            await jobs.insert_job(
                conn,
                job_id=job_id,
                tenant=tenant,
                model=body.model,
                inputs_count=len(body.inputs),
                callback_url=callback_url,
                queue=topology.infer_queue(body.model).name,
                message=message,
            )

        async def record(conn: Connection) -> idempotency.Saved | None:
            if key is None:
                await insert(conn)
                return None
            saved = await idempotency.claim(conn, tenant, key, digest, settings.idempotency_ttl_s)
            if saved is not None:
                return saved
            await insert(conn)
            await idempotency.complete(conn, tenant, key, 202, accepted.model_dump_json())
            return None

        # With a key, its claim and its answer commit with the job; without one, the insert is
        # a single statement and needs no transaction around it (two round trips fewer).
        unit = with_connection if key is None else transaction
        with contextlib.ExitStack() as watching:
            # Watched before it is inserted, so that not even the fastest job's end slips by.
            watch = watching.enter_context(waiters.watch(job_id)) if wait > 0 else None
            try:
                saved = await unit(pool, record, attempts=3, timeout_s=DB_TIMEOUT_S)
            except asyncpg.LockNotAvailableError as exc:
                refuse(request, "in_progress")
                raise _in_flight() from exc
            except _DB_UNAVAILABLE as exc:
                raise _unrecorded(request, "could not record job", exc) from exc
            if saved is not None:
                refuse(request, "in_progress")  # if _replay finds the first still in flight
                replay = _replay(saved, digest)
                if replay.status_code == 422:
                    refuse(request, "key_reused")
                if replay.status_code != 202 or wait <= 0:
                    return replay
                # The first submission's job, waited for as this one would have been.
                first = JobAccepted.model_validate_json(bytes(replay.body))
                accepted_now(request)
                with waiters.watch(first.id) as replayed:
                    view = await read_until_final(replayed, first.id, tenant, encoding_format, wait)
                return _settled(first, view, replay.headers)
            if enqueue is not None:
                try:
                    await enqueue(envelope)
                except Exception as exc:  # the message is committed; the relay will send it
                    log.warning("enqueue hook failed", job_id=str(job_id), error=str(exc))
            activity.count("accepted")
            JOBS_ACCEPTED.labels(body.model).inc()
            log.debug("job accepted", job_id=str(job_id), model=body.model, inputs=len(body.inputs))
            response.headers["Location"] = accepted.status_url
            if watch is None:
                return accepted
            accepted_now(request)
            view = await read_until_final(watch, job_id, tenant, encoding_format, wait, queued=True)
            return _settled(accepted, view, response.headers)

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobView,
        name="get_job",
        summary="Read a job's status and result",
        responses={**errors, 404: {"model": ErrorBody, "description": "no such job"}},
    )
    async def get_job(
        job_id: Annotated[uuid.UUID, Path(description="the id POST /v1/jobs answered")],
        tenant: Annotated[str, Depends(current_tenant)],
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=settings.max_wait_s,
                description="seconds to hold the answer until the job is final",
            ),
        ] = 0,
        encoding_format: Annotated[
            jobs.EncodingFormat,
            Query(
                description="how the vectors are written: lists of numbers (float), or each "
                "the base64 of its float32 values, little-endian (base64)"
            ),
        ] = jobs.EncodingFormat.FLOAT,
    ) -> JobView:
        if wait > 0:
            with waiters.watch(job_id) as watch:  # before the first read: nothing slips by
                job = await read_until_final(watch, job_id, tenant, encoding_format, wait)
        else:
            job = await read(job_id, tenant, encoding_format)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobView,
        summary="Cancel a queued or running job",
        responses={
            **errors,
            404: {"model": ErrorBody, "description": "no such job"},
            409: {"model": ErrorBody, "description": "the job is already final"},
            503: {"model": ErrorBody, "description": "the database did not answer; retry"},
        },
    )
    async def cancel_job(
        job_id: Annotated[uuid.UUID, Path(description="the id POST /v1/jobs answered")],
        tenant: Annotated[str, Depends(current_tenant)],
    ) -> JobView:
        async def cancel(conn: Connection) -> tuple[bool, JobView | None]:
            cancelled = await jobs.cancel_job(conn, job_id, tenant)
            return cancelled, await jobs.get_job(conn, job_id, tenant)

        try:
            cancelled, job = await transaction(pool, cancel, attempts=3, timeout_s=DB_TIMEOUT_S)
        except _DB_UNAVAILABLE as exc:
            log.warning("could not cancel job", error_type=type(exc).__name__)
            raise HTTPException(
                503,
                "the job could not be cancelled now; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        if not cancelled:
            raise HTTPException(
                409, f"job {job_id} is {job.status.value} and can no longer be cancelled"
            )
        activity.count("cancelled")
        log.debug("job cancelled", job_id=str(job_id), model=job.model)
        return job

    @app.get("/healthz", summary="Liveness", response_model=dict[str, str])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: PostgreSQL and the queues answer",
        responses={503: {"description": "a dependency does not answer; checks names which"}},
    )
    async def readyz() -> JSONResponse:
        """``models`` reports each served model; one without a deployed version does not make
        the stack unready (its jobs are refused with a 409 that names the fix)."""

        async def database() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        checks = {"database": "", "queues": ""}

        async def probe(name: str, check: CheckQueues) -> None:
            try:
                with anyio.fail_after(READY_TIMEOUT_S):
                    await check()
            except TimeoutError:
                checks[name] = f"no answer within {READY_TIMEOUT_S:g} s"
            except Exception as exc:
                # The exception's text can name hosts; it goes to the log, not the answer.
                log.warning("readiness check failed", check=name, error=str(exc))
                checks[name] = f"failed: {type(exc).__name__}"
            else:
                checks[name] = "ok"

        models = dict.fromkeys(topology.models, "")

        async def model(name: str) -> None:
            deployed_now = await deployed.deployed(name)
            models[name] = "deployed" if deployed_now else f"no deployed version: {push_hint(name)}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe, "database", database)
            tg.start_soon(probe, "queues", check_queues)
            for name in topology.models:
                tg.start_soon(model, name)
        if all(result == "ok" for result in checks.values()):
            return JSONResponse({"status": "ok", "checks": checks, "models": models})
        return JSONResponse(
            {"status": "unavailable", "checks": checks, "models": models}, status_code=503
        )

    return app


def _replay(saved: idempotency.Saved, digest: bytes) -> JSONResponse:
    """The answer to a request whose Idempotency-Key was used before."""
    if saved.request_hash != digest:
        problem = {
            "field": idempotency.KEY_HEADER,
            "loc": ["header", idempotency.KEY_HEADER],
            "type": "idempotency_key_reused",
            "msg": "this key was used with a different request body",
        }
        return JSONResponse(
            {
                "error": f"invalid request: {idempotency.KEY_HEADER}: {problem['msg']}",
                "detail": [problem],
            },
            status_code=422,
        )
    if saved.status is None or saved.body is None:
        raise _in_flight()
    content = json.loads(saved.body)
    headers = {idempotency.REPLAYED_HEADER: "true"}
    if isinstance(content, dict) and isinstance(content.get("status_url"), str):
        headers["Location"] = content["status_url"]
    return JSONResponse(content, status_code=saved.status, headers=headers)


def _settled(accepted: JobAccepted, job: JobView | None, headers: Mapping[str, str]) -> Response:
    """The answer to a submission that waited: 200 and the job once final, else 202 and the
    job as it stands (``job`` is None only if it was deleted meanwhile: the acceptance)."""
    body: JobAccepted | JobSettled = accepted
    status = 202
    if job is not None:
        body = JobSettled.model_construct(**dict(job), status_url=accepted.status_url)
        status = 200 if job.status.final else 202
    kept = {name: value for name, value in headers.items() if name.lower() != "content-length"}
    return Response(
        body.model_dump_json(), status_code=status, media_type="application/json", headers=kept
    )


def _unrecorded(request: Request, failed: str, exc: BaseException) -> HTTPException:
    """The 503 of a submission whose database did not answer: ``failed`` is logged, with the
    error's type only (its text may quote the job)."""
    refuse(request, "unavailable")
    log.warning(failed, error_type=type(exc).__name__)
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    return HTTPException(503, "the job could not be recorded; retry later", headers=retry)


def _in_flight() -> HTTPException:
    return HTTPException(
        409,
        f"a request with this {idempotency.KEY_HEADER} is still in progress; retry later",
        headers={"Retry-After": "1"},
    )


class _JsonCors(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as JSON like every other error."""

    def preflight_response(self, request_headers: Headers) -> StarletteResponse:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        kept = ("access-control-", "vary")
        headers = {k: v for k, v in response.headers.items() if k.lower().startswith(kept)}
        reason = bytes(response.body).decode()
        return JSONResponse({"error": reason}, status_code=response.status_code, headers=headers)


def _version() -> str:
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "0.0.0"
