"""API keys and tenants, and CORS, on the ingest API against a real PostgreSQL.

Keys are made with :func:`shared.apikeys.create_key` on the test database, exactly as
``conveyor keys create`` makes them; the app checks them in the ``api_keys`` table.
"""

import datetime
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from fastapi.routing import APIRoute
from structlog.testing import capture_logs

from emulator import Stack
from services.ingest.api import create_app
from shared.apikeys import KEY_PREFIX, authenticate, create_key, key_id_of, list_keys, revoke_key
from shared.config import IngestSettings
from tests.integration.test_ingest_api import MODEL, Api, bearer, running

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example.com"
JOB = {"model": MODEL, "inputs": ["hello"]}


@pytest.fixture
async def api(stack: Stack, clean_env: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with running(stack) as running_api:
        yield running_api


def off_by_one(key: str, index: int = -1) -> str:
    """``key`` with the character at ``index`` replaced by another of the same alphabet."""
    index %= len(key)
    replacement = "0" if key[index] != "0" else "1"
    return key[:index] + replacement + key[index + 1 :]


def secret_of(key: str) -> str:
    return key.removeprefix(KEY_PREFIX).split("_", 1)[1]


async def send(api: Api, method: str, url: str, authorization: str | None, **kw: Any) -> Any:
    """A request with exactly this Authorization header (None: none at all)."""
    request = api.client.build_request(method, url, **kw)
    del request.headers["Authorization"]
    if authorization is not None:
        request.headers["Authorization"] = authorization
    return await api.client.send(request)


async def job_count(api: Api) -> int:
    async with api.pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM jobs")
    return count


# -- refusals -----------------------------------------------------------------------------------

MISSING = "required"
INVALID = "not valid"

REFUSED: list[Any] = [
    pytest.param(lambda key: None, MISSING, id="no-header"),
    pytest.param(lambda key: "Bearer", MISSING, id="scheme-only"),
    pytest.param(lambda key: key, MISSING, id="no-scheme"),
    pytest.param(lambda key: "Basic dXNlcjpwYXNzd29yZA==", MISSING, id="basic"),
    pytest.param(lambda key: f"Token {key}", MISSING, id="other-scheme"),
    pytest.param(lambda key: f"Bearer {off_by_one(key)}", INVALID, id="secret-one-char-off"),
    pytest.param(lambda key: f"Bearer {off_by_one(key, 5)}", INVALID, id="id-one-char-off"),
    pytest.param(lambda key: f"Bearer {key[:-1]}", INVALID, id="truncated"),
    pytest.param(lambda key: f"Bearer {key} {key}", INVALID, id="two-keys"),
    pytest.param(lambda key: f"Bearer {secret_of(key)}", INVALID, id="secret-alone"),
    pytest.param(lambda key: "Bearer cvk_", INVALID, id="prefix-alone"),
    pytest.param(lambda key: f"Bearer {'x' * 5000}", INVALID, id="huge"),
]


@pytest.mark.parametrize(("authorization", "message"), REFUSED)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_refused_key_is_401_and_nothing_is_written(
    api: Api, method: str, authorization: Any, message: str
) -> None:
    job_id = await api.submit(inputs=["mine"]) if method == "GET" else None
    api.sent.clear()
    before = await job_count(api)
    header = authorization(api.key)

    if method == "POST":
        response = await send(api, "POST", "/v1/jobs", header, json=JOB)
    else:
        response = await send(api, "GET", f"/v1/jobs/{job_id}", header)

    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert set(response.json()) == {"error"}
    challenge = response.headers["www-authenticate"]
    assert challenge == "Bearer" if message == MISSING else challenge.startswith("Bearer ")
    assert secret_of(api.key) not in response.text
    assert await job_count(api) == before
    assert api.sent == []


async def test_scheme_is_case_insensitive(api: Api) -> None:
    response = await send(api, "POST", "/v1/jobs", f"bearer {api.key}", json=JOB)
    assert response.status_code == 202, response.text


async def test_a_request_without_a_key_is_refused_before_its_body_is_checked(api: Api) -> None:
    """An anonymous caller learns nothing about what the API would accept."""
    response = await send(api, "POST", "/v1/jobs", None, json={"model": "nope", "inputs": []})
    assert response.status_code == 401


async def test_revoked_key_is_refused_at_once(api: Api) -> None:
    key = await api.new_key(api.tenant, "to revoke")
    assert (await send(api, "POST", "/v1/jobs", f"Bearer {key}", json=JOB)).status_code == 202
    before = await job_count(api)

    async with api.pool.acquire() as conn:
        key_id = key_id_of(key)
        assert key_id is not None
        assert await revoke_key(conn, key_id)
        assert not await revoke_key(conn, key_id)  # already revoked
        assert not await revoke_key(conn, "0123456789abcdef")  # no such key

    response = await send(api, "POST", "/v1/jobs", f"Bearer {key}", json=JOB)
    assert response.status_code == 401
    assert INVALID in response.json()["error"]
    assert await job_count(api) == before
    # The client's own key still works: revocation is per key, not per tenant.
    assert (await api.client.post("/v1/jobs", json=JOB)).status_code == 202


async def test_key_store_unreachable_is_503_not_401(
    stack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    nowhere = f"postgresql://postgres@/conveyor?host=/nonexistent-{uuid.uuid4().hex[:8]}"
    settings = IngestSettings(database_url=nowhere, conveyor_models=(MODEL,))

    async def nothing(*_args: Any) -> None:
        return None

    key = f"{KEY_PREFIX}{'a' * 16}_{'b' * 43}"  # well-formed, so it has to be looked up
    pool = await asyncpg.create_pool(nowhere, min_size=0, max_size=2)
    try:
        app = create_app(settings, pool=pool, enqueue=nothing, check_queues=nothing)
        transport = httpx.ASGITransport(app=app)
        with anyio.fail_after(10):
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            ):
                unavailable = await client.get(f"/v1/jobs/{uuid.uuid4()}", headers=bearer(key))
                anonymous = await client.get(f"/v1/jobs/{uuid.uuid4()}")
    finally:
        await pool.close()

    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "5"
    assert "retry" in unavailable.json()["error"]
    assert "nonexistent" not in unavailable.text
    assert anonymous.status_code == 401


# -- tenants ------------------------------------------------------------------------------------


async def test_another_tenants_job_is_404_exactly_like_an_unknown_id(api: Api) -> None:
    job_id = await api.submit(inputs=["tenant a's"])
    other = bearer(await api.new_key(f"b-{api.tenant}"))
    unknown = uuid.uuid4()

    theirs = await api.client.get(f"/v1/jobs/{job_id}", headers=other)
    waited = await api.client.get(f"/v1/jobs/{job_id}", headers=other, params={"wait": 2})
    missing = await api.client.get(f"/v1/jobs/{unknown}", headers=other)

    assert theirs.status_code == waited.status_code == missing.status_code == 404
    assert theirs.json() == waited.json() == {"error": f"no job {job_id}"}
    assert missing.json() == {"error": f"no job {unknown}"}
    hide = ("date", "content-length")
    assert {k: v for k, v in theirs.headers.items() if k not in hide} == {
        k: v for k, v in missing.headers.items() if k not in hide
    }
    assert (await api.client.get(f"/v1/jobs/{job_id}")).status_code == 200


async def test_two_tenants_jobs_are_isolated(api: Api) -> None:
    tenant_b = f"b-{api.tenant}"
    key_b = bearer(await api.new_key(tenant_b))
    job_a = await api.submit(inputs=["from a"])
    response = await api.client.post("/v1/jobs", json=JOB, headers=key_b)
    assert response.status_code == 202
    job_b = uuid.UUID(response.json()["id"])

    assert [row["id"] for row in await api.rows(api.tenant)] == [job_a]
    assert [row["id"] for row in await api.rows(tenant_b)] == [job_b]
    assert [(e.job_id, e.tenant) for e in api.sent] == [(job_a, api.tenant), (job_b, tenant_b)]
    assert (await api.client.get(f"/v1/jobs/{job_a}")).status_code == 200
    assert (await api.client.get(f"/v1/jobs/{job_b}")).status_code == 404
    assert (await api.client.get(f"/v1/jobs/{job_b}", headers=key_b)).status_code == 200
    assert (await api.client.get(f"/v1/jobs/{job_a}", headers=key_b)).status_code == 404


# -- what is kept and logged --------------------------------------------------------------------


async def test_keys_are_stored_hashed(api: Api) -> None:
    key = await api.new_key(api.tenant, "hashed")
    secret = secret_of(key)
    assert key.startswith(KEY_PREFIX)
    assert re.fullmatch(r"cvk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", key)

    async with api.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT k::text AS text, encode(key_hash, 'hex') AS h FROM api_keys k"
        )
        records = await list_keys(conn, api.tenant)
    everything = "\n".join(f"{row['text']} {row['h']}" for row in rows)
    assert key not in everything
    assert secret not in everything
    assert secret[:16] not in everything
    assert secret not in repr(records)
    assert [r.name for r in records if r.id == key_id_of(key)] == ["hashed"]


async def test_the_secret_is_never_logged(api: Api) -> None:
    wrong = off_by_one(api.key)
    with capture_logs() as logs:
        await send(api, "POST", "/v1/jobs", f"Bearer {wrong}", json=JOB)
        await send(api, "POST", "/v1/jobs", f"Bearer {secret_of(api.key)}", json=JOB)
        await api.client.post("/v1/jobs", json=JOB)
    text = repr(logs)
    assert secret_of(api.key) not in text
    assert secret_of(wrong) not in text
    refused = [entry for entry in logs if entry["event"] == "api key refused"]
    assert [entry["key_id"] for entry in refused] == [key_id_of(wrong), None]


async def test_last_used_is_written_at_most_once_a_minute(api: Api) -> None:
    key = await api.new_key(api.tenant)
    key_id = key_id_of(key)

    async def last_used(conn: Any) -> datetime.datetime | None:
        value: datetime.datetime | None = await conn.fetchval(
            "SELECT last_used_at FROM api_keys WHERE id = $1", key_id
        )
        return value

    async with api.pool.acquire() as conn:
        assert await last_used(conn) is None
        assert await authenticate(conn, key) == api.tenant
        first = await last_used(conn)
        assert first is not None
        await anyio.sleep(0.01)
        assert await authenticate(conn, key) == api.tenant
        assert await last_used(conn) == first  # within the minute: no write
        await conn.execute(
            "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1", key_id
        )
        assert await authenticate(conn, key) == api.tenant
        latest = await last_used(conn)
        assert latest is not None
        assert latest > first - datetime.timedelta(seconds=1)
        assert await authenticate(conn, off_by_one(key)) is None
        assert await last_used(conn) == latest  # a wrong key does not touch it


async def test_create_key_refuses_bad_tenants_and_names(api: Api) -> None:
    async with api.pool.acquire() as conn:
        for tenant in ("", " a", "a b", "x" * 65, "-a", "a\n"):
            with pytest.raises(ValueError, match="tenant"):
                await create_key(conn, tenant)
        with pytest.raises(ValueError, match="name"):
            await create_key(conn, api.tenant, "a\x1b[2Jb")


# -- public routes and the OpenAPI description --------------------------------------------------


async def test_health_and_docs_need_no_key(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        response = await send(api, "GET", path, None)
        assert response.status_code == 200, (path, response.text)


async def test_every_v1_route_needs_a_key(api: Api) -> None:
    """Fail-closed for routes yet to come: each /v1 operation refuses an anonymous call."""
    routes = [r for r in api.app.routes if isinstance(r, APIRoute) and r.path.startswith("/v1")]
    assert len(routes) >= 2
    for route in routes:
        path = route.path.replace("{job_id}", str(uuid.uuid4()))
        for method in route.methods:
            response = await send(api, method, path, None, json=JOB)
            assert response.status_code == 401, (method, route.path)

    spec = (await api.client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            expected = [{"ApiKey": []}] if path.startswith("/v1") else None
            assert operation.get("security") == expected, (method, path)


# -- CORS ---------------------------------------------------------------------------------------


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.mark.parametrize("configured", [ORIGIN, f"{ORIGIN}/"])
async def test_preflight_from_an_allowed_origin(
    stack: Stack, clean_env: pytest.MonkeyPatch, configured: str
) -> None:
    async with running(stack, cors_origins=("https://other.example.org", configured)) as api:
        response = await send(api, "OPTIONS", "/v1/jobs", None, headers=preflight(ORIGIN))
        deleting = await send(
            api, "OPTIONS", f"/v1/jobs/{uuid.uuid4()}", None, headers=preflight(ORIGIN, "DELETE")
        )

    assert response.status_code == 200, response.text
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in headers
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert {"GET", "POST", "DELETE"} <= set(headers["access-control-allow-methods"].split(", "))
    assert deleting.status_code == 200


async def test_preflight_from_another_origin_is_not_allowed(
    stack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    async with running(stack, cors_origins=(ORIGIN,)) as api:
        response = await send(
            api, "OPTIONS", "/v1/jobs", None, headers=preflight("https://evil.example.net")
        )
        sneaky = await send(
            api, "OPTIONS", "/v1/jobs", None, headers=preflight(f"{ORIGIN}.evil.example.net")
        )
        method = await send(api, "OPTIONS", "/v1/jobs", None, headers=preflight(ORIGIN, "PUT"))

    for refused in (response, sneaky):
        assert "access-control-allow-origin" not in refused.headers
        assert "access-control-allow-credentials" not in refused.headers
        assert refused.status_code == 400
        assert "origin" in refused.json()["error"]
    assert method.status_code == 400
    assert "method" in method.json()["error"]


async def test_requests_from_an_allowed_origin_can_read_the_answer(
    stack: Stack, clean_env: pytest.MonkeyPatch
) -> None:
    async with running(stack, cors_origins=(ORIGIN,)) as api:
        accepted = await api.client.post("/v1/jobs", json=JOB, headers={"Origin": ORIGIN})
        refused = await send(api, "POST", "/v1/jobs", None, json=JOB, headers={"Origin": ORIGIN})
        foreign = await api.client.post(
            "/v1/jobs", json=JOB, headers={"Origin": "https://evil.example.net"}
        )

    assert accepted.status_code == 202
    assert accepted.headers["access-control-allow-origin"] == ORIGIN
    assert "location" in accepted.headers["access-control-expose-headers"].lower()
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # the client can read why
    assert foreign.status_code == 202  # CORS binds browsers; the key is what authorises
    assert "access-control-allow-origin" not in foreign.headers
    for response in (accepted, refused, foreign):
        assert "access-control-allow-credentials" not in response.headers


async def test_no_origins_configured_means_no_cors_headers_at_all(api: Api) -> None:
    options = await send(api, "OPTIONS", "/v1/jobs", None, headers=preflight(ORIGIN))
    simple = await api.client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Origin": ORIGIN})
    health = await api.client.get("/healthz", headers={"Origin": ORIGIN})

    for response in (options, simple, health):
        assert cors_headers(response) == {}, response.headers
    assert options.status_code == 405
