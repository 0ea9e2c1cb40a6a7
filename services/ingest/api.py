"""ingest's HTTP API: accept jobs, hand them to the queue, answer status reads.

    POST /v1/jobs              202 + Location: the job is recorded as queued and enqueued
    GET  /v1/jobs/{job_id}     the job (tenant-scoped); ?wait=N holds the answer up to N s
                               until the job is final
    GET  /healthz              liveness, no dependencies
    GET  /readyz               PostgreSQL and the queues answer, 2 s each
    GET  /docs, /openapi.json  the OpenAPI description

Every /v1 route needs an API key, ``Authorization: Bearer <key>``, which names the tenant the
request acts for (:mod:`services.ingest.auth`); health and docs are public. Browsers may call
the API from the origins of ``INGEST_CORS_ORIGINS`` only (none by default: no CORS headers).

Publishing is injected: ``create_app(..., enqueue=..., check_queues=...)``; this module knows
nothing of SQS. Every answer is JSON, errors included (:mod:`services.ingest.errors`); an
over-long body is refused before it is parsed (:mod:`services.ingest.body_limit`). A status
read that waits is woken by the ``job_finished`` notification: its contract is in
:mod:`services.ingest.waiting`.
"""

import datetime
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Annotated, Any, Final

import anyio
import asyncpg
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response as StarletteResponse

from services.ingest import jobs
from services.ingest.auth import ApiKeyAuth, TenantOf, key_tenants
from services.ingest.body_limit import BodySizeLimit
from services.ingest.errors import ErrorBody, ValidationErrorBody, add_error_handlers
from services.ingest.jobs import JobView
from services.ingest.schemas import JobAccepted, Submission, submission_body
from services.ingest.waiting import RECHECK_S, JobWaiters
from shared.config import IngestSettings
from shared.errors import ConveyorError
from shared.messages import Envelope, JobRequest, MessageType
from shared.telemetry import get_logger

__all__ = ["CheckQueues", "Enqueue", "JobWaiters", "TenantOf", "create_app"]

READY_TIMEOUT_S: Final = 2.0
RETRY_AFTER_S: Final = 5
CORS_METHODS: Final = ("GET", "POST", "DELETE", "OPTIONS")
CORS_HEADERS: Final = ("Authorization", "Content-Type", "Idempotency-Key")
CORS_EXPOSED: Final = ("Location", "Retry-After")

Enqueue = Callable[[Envelope], Awaitable[None]]
CheckQueues = Callable[[], Awaitable[None]]

log = get_logger("ingest")


def create_app(
    settings: IngestSettings,
    *,
    pool: asyncpg.Pool,
    enqueue: Enqueue,
    check_queues: CheckQueues,
    tenant_of: TenantOf | None = None,
) -> FastAPI:
    """The API. ``pool`` and the publishing side belong to the caller, which closes them
    after the app's lifespan has ended. ``tenant_of`` turns a presented API key into its
    tenant; by default the key is looked up in the ``api_keys`` table through ``pool``."""
    waiters = JobWaiters(pool)
    read_submission = submission_body(settings)
    current_tenant = ApiKeyAuth(tenant_of or key_tenants(pool))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(waiters.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    app = FastAPI(
        title="Conveyor",
        version=_version(),
        summary="Queue-driven asynchronous inference: submit jobs, read their status.",
        lifespan=lifespan,
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
    app.state.job_waiters = waiters
    add_error_handlers(app)

    def status_url(request: Request, job_id: uuid.UUID) -> str:
        if settings.public_url is not None:
            return f"{str(settings.public_url).rstrip('/')}/v1/jobs/{job_id}"
        return str(request.url_for("get_job", job_id=str(job_id)))

    async def read(job_id: uuid.UUID, tenant: str) -> JobView | None:
        async with pool.acquire() as conn:
            return await jobs.get_job(conn, job_id, tenant)

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "no API key, or not a valid one"},
        422: {"model": ValidationErrorBody, "description": "the request is invalid"},
    }

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        summary="Submit a job",
        responses={
            **errors,
            400: {"model": ErrorBody, "description": "the body is not JSON"},
            413: {"model": ErrorBody, "description": "the body is too large"},
            503: {"model": ErrorBody, "description": "the job could not be queued; retry"},
        },
    )
    async def submit_job(
        body: Annotated[Submission, Depends(read_submission)],
        request: Request,
        response: Response,
        tenant: Annotated[str, Depends(current_tenant)],
    ) -> JobAccepted:
        job_id = uuid.uuid4()
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
            payload=job.model_dump(mode="json"),
        )
        async with pool.acquire() as conn:
            await jobs.insert_job(
                conn,
                job_id=job_id,
                tenant=tenant,
                model=body.model,
                inputs_count=len(body.inputs),
                callback_url=callback_url,
            )
        try:
            await enqueue(envelope)
        except ConveyorError as exc:
            # Until the transactional outbox lands, a job that cannot be sent is failed at once.
            log.warning("could not enqueue", job_id=str(job_id), error=str(exc))
            async with pool.acquire() as conn:
                await jobs.mark_enqueue_failed(conn, job_id, f"could not enqueue: {exc}")
            raise HTTPException(
                503,
                "the job could not be queued; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        log.info("job accepted", job_id=str(job_id), model=body.model, inputs=len(body.inputs))
        url = status_url(request, job_id)
        response.headers["Location"] = url
        return JobAccepted(id=job_id, status_url=url)

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
    ) -> JobView:
        job = await read(job_id, tenant)
        if job is not None and wait > 0 and not job.status.final:
            deadline = anyio.current_time() + wait
            with waiters.watch(job_id) as watch:
                while True:
                    job = await read(job_id, tenant)
                    remaining = deadline - anyio.current_time()
                    if job is None or job.status.final or remaining <= 0:
                        break
                    await watch.wait(min(remaining, RECHECK_S))
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
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

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe, "database", database)
            tg.start_soon(probe, "queues", check_queues)
        if all(result == "ok" for result in checks.values()):
            return JSONResponse({"status": "ok", "checks": checks})
        return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)

    return app


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
