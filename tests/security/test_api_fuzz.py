"""Property-based fuzzing of the ingest HTTP API from its own OpenAPI description.

Schemathesis turns ``/openapi.json`` into Hypothesis strategies: valid requests (positive) and
requests that break the schema (negative), for every operation. Each case is sent through
httpx's ASGI transport to the app, lifespan entered, on the session stack's PostgreSQL; the
queue side is a recording fake (the transport seam). Most cases carry a valid API key, the
rest none, a string that is no key, a well-formed key of no one, or the right key id with a
wrong secret.

Every answer must be:

- no 5xx;
- a status code the operation documents, with a JSON body where one is documented that
  matches its declared schema (schemathesis' ``status_code_conformance``,
  ``content_type_conformance``, ``response_schema_conformance``,
  ``response_headers_conformance``);
- for any error a JSON object with an ``"error"`` string; no answer holds the key presented;
- without a valid key, a refusal (401; or 400/413/422 for a body refused before the key is
  checked), and no job recorded or sent;
- an accepted job (202) recorded once, its message in the outbox; a replayed Idempotency-Key
  records nothing new.

Bounded: ``max_examples`` per operation (operations without parameters run out of distinct
examples sooner), no deadline, derandomized, no example database. Schemathesis builds its
strategies by iterating sets, so the exact examples also depend on ``PYTHONHASHSEED``: fix it
to replay a run. The cases per operation, by auth/generation mode and status, are printed in
the "API fuzz cases" section of the summary. A failing case is reported by Hypothesis as
its draws (auth mode, generation mode, the schemathesis case), shrunk.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import asyncpg
import httpx
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from emulator import Stack
from services.ingest.api import create_app
from services.ingest.idempotency import REPLAYED_HEADER
from shared.apikeys import create_key
from shared.config import IngestSettings
from shared.messages import Envelope
from tests.security.conftest import Tally

pytestmark = pytest.mark.timeout(300)

MODEL: Final = "all-minilm-l6-v2"
MAX_EXAMPLES: Final = 100
BASE_URL: Final = "http://testserver"
# Small limits, so that generated data reaches them; a short ?wait= so a queued job's
# status read holds briefly.
LIMITS: Final[dict[str, Any]] = {
    "max_inputs": 4,
    "max_input_chars": 50,
    "max_body_bytes": 4096,
    "max_wait_s": 0.2,
}

OPERATIONS: Final = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("DELETE", "/v1/jobs/{job_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
"""What is fuzzed; ``test_every_operation_is_fuzzed`` holds it to the live schema."""

CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# How a case authenticates: mostly with the tenant's key, sometimes not at all or wrongly.
# Shrinking moves towards the first, so a minimal failing example uses the valid key.
AUTH_MODES: Final = ("valid",) * 7 + ("none", "malformed", "unknown", "tampered")
UNKNOWN_KEY: Final = "cvk_0123456789abcdef_" + "A" * 43
MALFORMED_KEY: Final = "not-a-key-but-secret-looking-Zm9vYmFy"


@dataclass
class Fuzzed:
    app: FastAPI
    client: httpx.AsyncClient
    schema: Any
    spec: dict[str, Any]
    database_url: str
    key: str
    tenant: str
    sent: list[Envelope] = field(default_factory=list)
    known_job: uuid.UUID | None = None
    portal: BlockingPortal | None = None

    def request(self, kwargs: dict[str, Any]) -> httpx.Response:
        assert self.portal is not None

        async def send() -> httpx.Response:
            with anyio.fail_after(10):
                return await self.client.request(**kwargs)

        return self.portal.call(send)

    def presented(self, mode: str) -> str | None:
        """The key a case presents in ``mode`` (None: no Authorization header)."""
        if mode == "valid":
            return self.key
        if mode == "malformed":
            return MALFORMED_KEY
        if mode == "unknown":
            return UNKNOWN_KEY
        if mode == "tampered":  # the right id, a wrong secret
            return self.key[:-4] + ("AAAA" if not self.key.endswith("AAAA") else "BBBB")
        return None


@asynccontextmanager
async def _running(database_url: str) -> AsyncIterator[Fuzzed]:
    """The app, lifespan entered, on a pool of its own, with a key of a tenant of its own."""
    settings_ = IngestSettings(database_url=database_url, conveyor_models=(MODEL,), **LIMITS)
    tenant = f"fuzz-{uuid.uuid4().hex[:12]}"
    sent: list[Envelope] = []

    async def record(envelope: Envelope) -> None:
        sent.append(envelope)

    async def queues_ok() -> None:
        return None

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            key, _record = await create_key(conn, tenant, "test_api_fuzz")
        app = create_app(settings_, pool=pool, enqueue=record, check_queues=queues_ok)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client,
        ):
            spec = (await client.get("/openapi.json")).json()
            schema = schemathesis.openapi.from_dict(spec)
            # The Authorization header is this test's to set (a valid, missing or wrong key).
            schema.config.generation.update(with_security_parameters=False)
            yield Fuzzed(app, client, schema, spec, database_url, key, tenant, sent)
    finally:
        with anyio.fail_after(10):
            await pool.close()


@pytest.fixture(scope="module")
def fuzzed(stack: Stack, anyio_backend: str) -> Iterator[Fuzzed]:
    """The app on an event loop of its own, in a thread, reached through a blocking portal.

    Hypothesis drives the test synchronously: drawing data inside an async test can end an
    example with Hypothesis' ``StopTest`` (a BaseException), which tears down anyio's test
    runner. So the examples are drawn here, in the test's thread, and every request is
    handed to the app's loop through the portal.
    """
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(_running(stack.database_url)) as running,
    ):
        running.portal = portal
        yield running


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Schemathesis' requests-style arguments as httpx's."""
    kwargs = dict(kwargs)
    out: dict[str, Any] = {
        "method": kwargs.pop("method"),
        "url": kwargs.pop("url"),
        "headers": dict(kwargs.pop("headers", None) or {}),
        "params": kwargs.pop("params", None),
    }
    cookies = kwargs.pop("cookies", None)
    if cookies:  # httpx deprecates per-request cookies: send them as the header
        out["headers"]["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    if "json" in kwargs:
        out["json"] = kwargs.pop("json")
    if "data" in kwargs:
        data = kwargs.pop("data")
        out["content" if isinstance(data, bytes | str) else "data"] = data
    kwargs.pop("files", None)  # no multipart operation here
    assert not kwargs, f"unexpected transport arguments: {sorted(kwargs)}"
    return out


def _fuzz_one(fuzzed: Fuzzed, operation: Any, data: st.DataObject, tally: Tally) -> None:
    mode = data.draw(st.sampled_from(AUTH_MODES), label="auth")
    generation = data.draw(
        st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]), label="generation"
    )
    case = data.draw(operation.as_strategy(generation_mode=generation), label="case")
    negative = _negative_components(case)
    if (
        "job_id" in (case.path_parameters or {})
        and "path" not in negative
        and fuzzed.known_job is not None
        and data.draw(st.booleans(), label="known job")
    ):
        case.path_parameters["job_id"] = str(fuzzed.known_job)
    presented = fuzzed.presented(mode)
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = headers
    extra = {} if presented is None else {"Authorization": f"Bearer {presented}"}
    request = _httpx_kwargs(case.as_transport_kwargs(base_url=BASE_URL, headers=extra))
    before = len(fuzzed.sent)

    response = fuzzed.request(request)
    tally[(operation.label, f"{mode}/{generation.value}", str(response.status_code))] += 1
    try:
        case.validate_response(response, checks=CHECKS)
    except BaseExceptionGroup as failures:
        # Schemathesis raises a BaseExceptionGroup, which Hypothesis does not shrink.
        shown = {**request, "headers": {**request["headers"], "Authorization": mode}}
        raise AssertionError(f"{shown}\n{failures}") from failures
    if negative & {"body", "path"}:
        # An invalid body or path is refused; only unknown query parameters and headers
        # (which negative query/header cases add) may be ignored.
        assert 400 <= response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
    if presented is not None:
        assert presented not in response.text
        assert presented not in str(response.headers)
    secured = bool(case.operation.definition.raw.get("security"))
    if secured and mode != "valid":
        assert response.status_code in (400, 401, 413, 422), response.text
        assert len(fuzzed.sent) == before
    if response.status_code == 202 and response.headers.get(REPLAYED_HEADER) != "true":
        [envelope] = fuzzed.sent[before:]
        assert str(envelope.job_id) == response.json()["id"]
        assert envelope.tenant == fuzzed.tenant
        fuzzed.known_job = envelope.job_id
    else:  # refused, or the first answer again (a repeated Idempotency-Key)
        assert len(fuzzed.sent) == before
        if response.status_code == 202:
            replayed = uuid.UUID(response.json()["id"])
            assert replayed in {envelope.job_id for envelope in fuzzed.sent}


def _negative_components(case: Any) -> set[str]:
    """Where a negative case breaks the schema: some of path, query, header, body."""
    components = case.meta.components if case.meta is not None else {}
    return {
        location.value
        for location, info in components.items()
        if info.mode is GenerationMode.NEGATIVE
    }


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_operation_conforms_to_its_schema(
    fuzzed: Fuzzed,
    fuzz_tally: Tally,
    method: str,
    path: str,
    data: st.DataObject,
) -> None:
    _fuzz_one(fuzzed, fuzzed.schema[path][method], data, fuzz_tally)


def test_every_operation_is_fuzzed(fuzzed: Fuzzed) -> None:
    """A route added to the API (say DELETE /v1/jobs/{job_id}) must join OPERATIONS."""
    spec = fuzzed.spec
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    assert documented == set(OPERATIONS)


UNTYPED_ERRORS: Final = {("GET", "/readyz", "503")}
"""Documented error answers without a JSON schema: readiness' 503 names its checks in a body
the description does not declare (``{"status", "checks"}``), so only its status is checked."""


def test_error_answers_declare_the_error_body(fuzzed: Fuzzed) -> None:
    """Every documented 4xx/5xx but those of UNTYPED_ERRORS is ``ErrorBody`` or a subclass."""
    untyped = set()
    for path, item in fuzzed.spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is None:
                    untyped.add((method.upper(), path, status))
                    continue
                name = schema["$ref"].rsplit("/", 1)[-1]
                declared = fuzzed.spec["components"]["schemas"][name]
                assert "error" in declared["required"], (method, path, status, name)
                assert declared["properties"]["error"]["type"] == "string"
    assert untyped == UNTYPED_ERRORS


def test_outbox_holds_exactly_the_accepted_jobs(fuzzed: Fuzzed) -> None:
    """Of everything the fuzzer sent, only the 202s left a job, and a message to send unless
    the fuzzer's DELETE cancelled it (which drops the unsent message)."""

    async def recorded() -> tuple[dict[uuid.UUID, str], set[uuid.UUID]]:
        async with asyncpg.create_pool(fuzzed.database_url, min_size=1, max_size=1) as pool:
            jobs = await pool.fetch(
                "SELECT id, status FROM jobs WHERE tenant_id = $1", fuzzed.tenant
            )
            outbox = await pool.fetch(
                "SELECT o.job_id FROM outbox o JOIN jobs j ON j.id = o.job_id "
                "WHERE j.tenant_id = $1",
                fuzzed.tenant,
            )
        return {r["id"]: r["status"] for r in jobs}, {r["job_id"] for r in outbox}

    assert fuzzed.portal is not None
    jobs, outbox = fuzzed.portal.call(recorded)
    accepted = {envelope.job_id for envelope in fuzzed.sent}
    assert set(jobs) == accepted
    assert set(jobs.values()) <= {"queued", "cancelled"}
    assert outbox == {job for job, status in jobs.items() if status == "queued"}


@pytest.mark.anyio
async def test_key_store_outage_answer_is_documented(stack: Stack) -> None:
    """Found by reading the schema against auth.py, not by the fuzzer (it needs an outage)."""

    async def key_store_down(presented: str) -> str | None:
        raise OSError("the key store does not answer")

    async def queues_ok() -> None:
        return None

    settings_ = IngestSettings(database_url=stack.database_url, conveyor_models=(MODEL,))
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        app = create_app(settings_, pool=pool, check_queues=queues_ok, tenant_of=key_store_down)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client,
        ):
            spec = (await client.get("/openapi.json")).json()
            response = await client.get(
                f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": f"Bearer {UNKNOWN_KEY}"}
            )
    finally:
        with anyio.fail_after(10):
            await pool.close()
    assert response.status_code == 503
    assert isinstance(response.json()["error"], str)
    # What schemathesis' status_code_conformance checks; asserted plainly here, because its
    # failure is a BaseExceptionGroup, which anyio's test runner does not survive.
    assert "503" in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
