"""ingest's HTTP API: accept jobs, hand them to the queue, answer status reads.

    POST /v1/jobs              202 + Location: the job is recorded as queued and enqueued
    GET  /v1/jobs/{job_id}     the job (tenant-scoped); ?wait=N holds the answer up to N s
                               until the job is final
    GET  /healthz              liveness, no dependencies
    GET  /readyz               PostgreSQL and the queues answer, 2 s each
    GET  /docs, /openapi.json  the OpenAPI description

Publishing is injected: ``create_app(..., enqueue=..., check_queues=...)``; this module knows
nothing of SQS. Every answer is JSON, errors included: ``{"error": "<one line>"}``, plus
``"detail"`` (one entry per problem) for a 422.

The ``job_finished`` contract
-----------------------------
Whoever moves a job to a final status (succeeded, failed, cancelled) runs, in the same
transaction, ``SELECT pg_notify('job_finished', <job id>::text)`` — the persist service when it
finalises a job, :func:`services.ingest.jobs.mark_enqueue_failed` here. PostgreSQL delivers a
notification only after its transaction commits, so a woken reader sees the final row. The
API holds one connection from the pool (the pool needs ``max_size >= 2``) that LISTENs on the
channel and wakes the requests waiting for that job. A lost notification costs at most
:data:`RECHECK_S`: every waiting request also re-reads its job that often. A dropped listener
connection is re-acquired with bounded backoff, and every waiter is woken when it is back.
"""

import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from importlib import metadata
from typing import Annotated, Any, Final

import anyio
import asyncpg
from anyio.abc import TaskStatus
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    UrlConstraints,
    field_validator,
)
from pydantic import StringConstraints as Chars
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest import jobs
from services.ingest.jobs import JobView
from shared.config import IngestSettings
from shared.errors import ConveyorError
from shared.messages import Envelope, JobRequest, JobStatus, MessageType
from shared.telemetry import get_logger

__all__ = [
    "CHANNEL",
    "RECHECK_S",
    "BodySizeLimit",
    "CheckQueues",
    "Enqueue",
    "JobAccepted",
    "JobWaiters",
    "TenantOf",
    "create_app",
]

CHANNEL: Final = "job_finished"
RECHECK_S: Final = 1.0
"""How often a waiting status read re-reads its job, notification or not."""
READY_TIMEOUT_S: Final = 2.0
MAX_CALLBACK_URL_CHARS: Final = 2048
RETRY_AFTER_S: Final = 5

Enqueue = Callable[[Envelope], Awaitable[None]]
CheckQueues = Callable[[], Awaitable[None]]
TenantOf = Callable[[Request], str]

log = get_logger("ingest")

# Failures of the listener connection that a reconnect may cure.
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


# -- waiting for jobs to finish -----------------------------------------------------------------


class _Watch:
    """One waiting request's wake-up call; re-armed after each wake-up."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, at_most_s: float) -> None:
        """Until woken or ``at_most_s`` seconds pass."""
        with anyio.move_on_after(at_most_s):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()


class JobWaiters:
    """Requests waiting for their job to finish, woken by ``NOTIFY job_finished``.

    Waiters live in memory only while a request waits (:meth:`watch` removes its own on exit),
    so the registry is bounded by the requests in flight. :meth:`run` holds the LISTEN
    connection for the lifespan of the app.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ping_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._pool = pool
        self._ping_s = ping_s
        self._backoff_s = backoff_s
        self._watches: dict[str, set[_Watch]] = {}
        self.listening = False
        """Whether the LISTEN connection is up (else waiters fall back to re-reading)."""

    def __len__(self) -> int:
        return sum(len(watches) for watches in self._watches.values())

    @contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[_Watch]:
        """Register before reading the job, so a notification in between is not lost."""
        key = str(job_id)
        watch = _Watch()
        self._watches.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[key]

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object, /) -> None:
        for watch in self._watches.get(str(payload), ()):
            watch.wake()

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """LISTEN until cancelled, reconnecting with bounded backoff.

        Signals started after the first attempt, connected or not: the API serves without
        the listener (waiters re-read every second) and /readyz reports the database.
        """
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        delay, max_delay = self._backoff_s
        while True:
            try:
                conn = await self._pool.acquire()
            except _DB_ERRORS as exc:
                log.warning("job_finished listener cannot connect", error=type(exc).__name__)
            else:
                try:
                    await self._listen(conn, ready)
                    delay = self._backoff_s[0]
                    log.warning("job_finished listener connection lost; reconnecting")
                except _DB_ERRORS as exc:
                    log.warning("job_finished listener failed", error=type(exc).__name__)
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(READY_TIMEOUT_S):
                        await self._pool.release(conn)
            ready()
            await anyio.sleep(delay)
            delay = min(delay * 2, max_delay)

    async def _listen(self, conn: jobs.Conn, ready: Callable[[], None]) -> None:
        """Hold ``conn`` listening until it closes or stops answering."""
        lost = anyio.Event()

        def on_close(_conn: object, /) -> None:
            lost.set()

        conn.add_termination_listener(on_close)
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            self.listening = True
            log.info("job_finished listener ready")
            self._wake_all()  # whatever finished while nobody listened
            ready()
            while not lost.is_set():
                with anyio.move_on_after(self._ping_s):
                    await lost.wait()
                if not lost.is_set():
                    await self._ping(conn)
        finally:
            self.listening = False
            # A lost connection has been detached from the pool, listeners and all.
            if not lost.is_set():
                conn.remove_termination_listener(on_close)
                with (
                    contextlib.suppress(*_DB_ERRORS),
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(READY_TIMEOUT_S),
                ):
                    await conn.remove_listener(CHANNEL, self._on_notify)

    @staticmethod
    async def _ping(conn: jobs.Conn) -> None:
        """A half-open TCP connection only shows itself when asked something."""
        try:
            with anyio.fail_after(READY_TIMEOUT_S):
                await conn.execute("SELECT 1")
        except _DB_ERRORS:
            conn.terminate()  # give nothing doubtful back to the pool
            raise


# -- the body size limit ------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


class BodySizeLimit:
    """Refuse a request body over ``max_bytes`` with a JSON 413, before anything parses it.

    A declared Content-Length over the limit is refused without reading the body; otherwise
    the bytes are counted as they stream in (a chunked body declares no length).

    Hand-written (pure ASGI, about 30 lines) rather than FastAPI's ``max_body_size``: that
    exists only in recent FastAPI releases, and its Starlette limiter replaces whatever the
    app answers to an over-long Content-Length with a plain-text 413, where every error of
    this API is JSON.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException: FastAPI lets it through to the JSON error handler.
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:  # read outside a route, so no handler answered it
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(self.max_bytes)
        response = JSONResponse({"error": error.detail}, status_code=error.status_code)
        await response(scope, receive, send)


# -- request and response bodies ----------------------------------------------------------------


class JobAccepted(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    status: JobStatus = JobStatus.QUEUED
    status_url: str = Field(description="where to read the job's status (absolute)")


class ErrorBody(BaseModel):
    error: str = Field(description="one line saying what went wrong")


class ValidationProblem(BaseModel):
    field: str = Field(description="the field at fault, e.g. inputs[3] or callback_url")
    loc: list[str | int]
    type: str
    msg: str


class ValidationErrorBody(ErrorBody):
    detail: list[ValidationProblem]


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank_input", "an input must not be blank")
    return text


# -- the app --------------------------------------------------------------------------------------


def create_app(
    settings: IngestSettings,
    *,
    pool: asyncpg.Pool,
    enqueue: Enqueue,
    check_queues: CheckQueues,
    tenant_of: TenantOf = lambda _request: "default",
) -> FastAPI:
    """The API. ``pool`` and the publishing side belong to the caller, which closes them
    after the app's lifespan has ended."""
    served = tuple(settings.conveyor_models)
    waiters = JobWaiters(pool)

    class JobSubmission(BaseModel):
        """A job: texts to run through one of the served models."""

        model_config = ConfigDict(extra="forbid", protected_namespaces=())

        model: str = Field(
            description="one of the served models", json_schema_extra={"enum": list(served)}
        )
        inputs: list[
            Annotated[
                str,
                Chars(min_length=1, max_length=settings.max_input_chars),
                AfterValidator(_not_blank),
            ]
        ] = Field(min_length=1, max_length=settings.max_inputs)
        callback_url: (
            Annotated[
                AnyUrl,
                UrlConstraints(
                    max_length=MAX_CALLBACK_URL_CHARS,
                    allowed_schemes=["http", "https"],
                    host_required=True,
                ),
            ]
            | None
        ) = Field(default=None, description="an absolute http(s) URL told when the job ends")

        @field_validator("model")
        @classmethod
        def _served(cls, model: str) -> str:
            if model not in served:
                raise PydanticCustomError(
                    "unknown_model",
                    "model '{model}' is not served here; choose one of: {served}",
                    {"model": model, "served": ", ".join(served)},
                )
            return model

    async def current_tenant(request: Request) -> str:
        return tenant_of(request)

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
    app.state.job_waiters = waiters
    _add_error_handlers(app)

    def status_url(request: Request, job_id: uuid.UUID) -> str:
        if settings.public_url is not None:
            return f"{str(settings.public_url).rstrip('/')}/v1/jobs/{job_id}"
        return str(request.url_for("get_job", job_id=str(job_id)))

    async def read(job_id: uuid.UUID, tenant: str) -> JobView | None:
        async with pool.acquire() as conn:
            return await jobs.get_job(conn, job_id, tenant)

    errors: dict[int | str, dict[str, Any]] = {
        422: {"model": ValidationErrorBody, "description": "the request is invalid"}
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
        body: JobSubmission,
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


# -- errors as JSON -------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def on_invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [_problem(error) for error in exc.errors()]
        bad_json = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            reason = bad_json.get("ctx", {}).get("error", "JSON decode error")
            where = bad_json["loc"][-1]
            body = {"error": f"the body is not valid JSON: {reason} (at character {where})"}
            return JSONResponse({**body, "detail": problems}, status_code=400)
        summary = "; ".join(f"{p['field']}: {p['msg']}" for p in problems[:5])
        if len(problems) > 5:
            summary += f"; and {len(problems) - 5} more"
        return JSONResponse(
            {"error": f"invalid request: {summary}", "detail": problems}, status_code=422
        )

    async def on_crash(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", error_type=type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(Exception, on_crash)


def _problem(error: Any) -> dict[str, Any]:
    """One validation error, without its ``input`` (which can be the whole, large, body)."""
    loc: Sequence[str | int] = error.get("loc", ())
    return {
        "field": _field(loc),
        "loc": list(loc),
        "type": str(error.get("type", "")),
        "msg": str(error.get("msg", "")).removeprefix("Value error, "),
    }


def _field(loc: Sequence[str | int]) -> str:
    """``("body", "inputs", 3)`` -> ``inputs[3]``; ``("query", "wait")`` -> ``wait``."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"


def _version() -> str:
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "0.0.0"
