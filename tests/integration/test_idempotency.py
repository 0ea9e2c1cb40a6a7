"""``Idempotency-Key`` on POST /v1/jobs, against a real PostgreSQL.

Concurrent duplicates: the key is claimed with INSERT ... ON CONFLICT in the job's transaction,
so a duplicate waits for the first request's transaction (up to ``IN_FLIGHT_WAIT_S``) and then
replays its answer. Here every one of 20 concurrent duplicates is expected to be a 202 with the
same id; a 409 ("still in progress") is allowed too, for a first request slower than the wait,
but never a second job.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from emulator import Stack
from services.ingest import idempotency
from tests.integration.test_ingest_api import MODEL, Api, bearer, running

pytestmark = pytest.mark.anyio

BODY = {"model": MODEL, "inputs": ["hello", "world"]}


@pytest.fixture
async def api(stack: Stack, clean_env: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with running(stack) as running_api:
        yield running_api


async def post(api: Api, key: str | None, body: Any = None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Idempotency-Key"] = key
    return await api.client.post("/v1/jobs", json=BODY if body is None else body, headers=headers)


async def outbox_rows(api: Api, tenant: str | None = None) -> int:
    async with api.pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM outbox o JOIN jobs j ON j.id = o.job_id WHERE j.tenant_id = $1",
            tenant or api.tenant,
        )
    return count


async def test_a_retry_gets_the_first_answer_again(api: Api) -> None:
    first = await post(api, "retry-1")
    again = await post(api, "retry-1")

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"] == first.json()["status_url"]
    assert len(await api.rows()) == 1
    assert await outbox_rows(api) == 1
    assert len(api.sent) == 1


async def test_twenty_concurrent_duplicates_make_one_job(api: Api) -> None:
    answers: list[httpx.Response] = []

    async def one() -> None:
        answers.append(await post(api, "burst-key"))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)

    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {202, 409}, [a.text for a in answers]
    accepted = [a for a in answers if a.status_code == 202]
    assert accepted
    assert len({a.json()["id"] for a in accepted}) == 1
    assert sum("idempotent-replayed" not in a.headers for a in accepted) <= 1
    for conflict in (a for a in answers if a.status_code == 409):
        assert "Idempotency-Key" in conflict.json()["error"]
    [row] = await api.rows()
    assert str(row["id"]) == accepted[0].json()["id"]
    assert await outbox_rows(api) == 1
    assert len(api.sent) == 1


async def test_same_key_with_another_body_is_422(api: Api) -> None:
    first = await post(api, "body-key")
    other = await post(api, "body-key", {"model": MODEL, "inputs": ["something else"]})

    assert first.status_code == 202
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["error"]
    assert other.json()["detail"][0]["field"] == "Idempotency-Key"
    assert len(await api.rows()) == 1


async def test_keys_are_scoped_to_the_tenant(api: Api) -> None:
    other_tenant = f"other-{api.tenant}"
    other_key = await api.new_key(other_tenant)

    mine = await post(api, "shared-key")
    theirs = await post(api, "shared-key", **bearer(other_key))

    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
    assert len(await api.rows()) == 1
    assert len(await api.rows(other_tenant)) == 1


async def test_without_a_key_every_post_is_a_new_job(api: Api) -> None:
    first = await post(api, None)
    second = await post(api, None)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert len(await api.rows()) == 2
    assert await outbox_rows(api) == 2


@pytest.mark.parametrize(
    "key", ["", "k" * 256, "tab\there", "é"], ids=["empty", "long", "ctl", "8bit"]
)
async def test_a_malformed_key_is_422_naming_it(api: Api, key: str) -> None:
    response = await api.client.post(
        "/v1/jobs", json=BODY, headers={"Idempotency-Key": key.encode()}
    )

    assert response.status_code == 422, response.text
    assert "Idempotency-Key" in response.json()["error"]
    assert await api.rows() == []


async def test_longest_key_is_accepted(api: Api) -> None:
    response = await post(api, "k" * 255)
    assert response.status_code == 202


async def test_an_expired_key_is_claimed_anew_and_pruned(api: Api) -> None:
    first = await post(api, "old-key")
    async with api.pool.acquire() as conn:
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
            "WHERE tenant_id = $1",
            api.tenant,
        )
    reused = await post(api, "old-key", {"model": MODEL, "inputs": ["a new job"]})

    assert first.status_code == reused.status_code == 202
    assert reused.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in reused.headers
    assert len(await api.rows()) == 2

    async with api.pool.acquire() as conn:
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
            "WHERE tenant_id = $1",
            api.tenant,
        )
        async with conn.transaction():
            pruned = await idempotency.prune(conn, 86_400)
        left = await conn.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1", api.tenant
        )
    assert pruned >= 1
    assert left == 0
    assert uuid.UUID(reused.json()["id"])
