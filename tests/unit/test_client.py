"""The client library at its transport seam: retries, 429s, connection errors, error mapping,
long waits split, backpressure in map; its public names and how light its import is.

What the API really answers is tested against the real ingest app in
``tests/integration/test_client_api.py``; here an ``httpx.MockTransport`` plays answers the
real API gives only under load or faults.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import conveyor
import conveyor.client
from conveyor import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConveyorError,
    JobFailed,
    JobStatus,
    ModelNotDeployed,
    NotFound,
    RetryPolicy,
    TransportError,
    WaitTimeout,
)
from shared.messages import JobStatus as ServiceJobStatus
from tests.conftest import run_python

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
URL = "http://conveyor.test"

PUBLIC = [
    "Accepted",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConveyorError",
    "InvalidWebhook",
    "Job",
    "JobFailed",
    "JobInput",
    "JobStatus",
    "ModelNotDeployed",
    "NotFound",
    "RetryPolicy",
    "TransportError",
    "Vector",
    "WaitTimeout",
    "WebhookEvent",
    "verify_webhook",
]


def job_body(job_id: str, status: str = "succeeded", outputs: Any = None) -> dict[str, Any]:
    final = status in ("succeeded", "failed", "cancelled")
    return {
        "id": job_id,
        "status": status,
        "model": "m",
        "model_version": "1" if final else None,
        "inputs_count": 1,
        "created_at": "2026-11-03T20:26:10.123456Z",
        "started_at": None,
        "finished_at": "2026-11-03T20:26:11Z" if final else None,
        "error": "boom" if status == "failed" else None,
        "result": {"outputs": outputs} if outputs is not None else None,
    }


def accepted(job_id: str) -> httpx.Response:
    return httpx.Response(
        202, json={"id": job_id, "status": "queued", "status_url": f"{URL}/v1/jobs/{job_id}"}
    )


class Api:
    """A scripted API: ``answers`` are popped per request (a Response, an exception to raise,
    or a callable of the request); every request is recorded."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            result: httpx.Response = answer(request)
            return result
        assert isinstance(answer, httpx.Response)
        return answer

    def client(self, **options: Any) -> Client:
        options.setdefault("retry", FAST)
        return Client(URL, "cvk_test", transport=httpx.MockTransport(self), **options)

    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]


# -- the public face ----------------------------------------------------------------------------


def test_public_names_are_pinned() -> None:
    assert conveyor.__all__ == PUBLIC
    assert conveyor.client.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(conveyor, name) is getattr(conveyor.client, name)


def test_every_error_derives_from_conveyor_error_and_is_in_the_tree() -> None:
    from conveyor.client import _errors

    errors = [getattr(conveyor, n) for n in PUBLIC]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) == 9
    for error in errors:
        assert issubclass(error, ConveyorError)
        assert error.__name__ in (_errors.__doc__ or "")
    assert issubclass(WaitTimeout, TimeoutError)


def test_statuses_are_the_services_statuses() -> None:
    assert [s.value for s in JobStatus] == [s.value for s in ServiceJobStatus]
    assert {s for s in JobStatus if s.final} == {
        JobStatus(s.value) for s in ServiceJobStatus if s.final
    }


def _imported_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    probe = (
        f"{code}\nimport sys, json\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = run_python(probe, env, check=True)
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def test_importing_conveyor_is_light() -> None:
    modules = _imported_after("import conveyor\nfrom conveyor import Client, AsyncClient")
    heavy = {"torch", "numpy", "services", "emulator", "shared", "boto3", "botocore"}
    heavy |= {"aioboto3", "aiobotocore", "asyncpg", "fastapi", "transformers", "moto"}
    assert "httpx" in modules  # the probe sees what was imported
    assert sorted(heavy & set(modules)) == []
    cli = _imported_after("import conveyor\nimport sys\nassert 'conveyor.cli' not in sys.modules")
    assert "conveyor" in cli


def test_without_numpy_outputs_are_lists() -> None:
    code = f"""
import json
import sys
sys.modules["numpy"] = None  # as if it were not installed
import httpx
from conveyor import Client
body = json.loads({json.dumps(json.dumps(job_body(str(uuid.UUID(int=1)), outputs=[[0.5, 0.25]])))})
transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
with Client("http://conveyor.test", "k", transport=transport) as client:
    job = client.get(body["id"])
assert job.outputs == ([0.5, 0.25],), job.outputs
print("lists")
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lists"


def test_with_numpy_outputs_are_float32_arrays() -> None:
    np = pytest.importorskip("numpy")
    job_id = str(uuid.uuid4())
    api = Api(httpx.Response(200, json=job_body(job_id, outputs=[[0.5, 0.25], [1.0, 0.0]])))
    with api.client() as client:
        job = client.get(job_id)
    assert job.outputs is not None
    assert [v.dtype for v in job.outputs] == [np.float32, np.float32]
    assert np.array_equal(np.stack(job.outputs), np.array([[0.5, 0.25], [1, 0]], np.float32))
    assert job.created_at.tzinfo is not None
    assert job.status is JobStatus.SUCCEEDED and job.final and job.succeeded


def b64(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def test_vectors_are_asked_for_in_base64_and_read_from_it() -> None:
    np = pytest.importorskip("numpy")
    job_id = str(uuid.uuid4())
    packed = job_body(job_id, outputs=[b64(0.5, 0.25), b64(1.0, -3.0)])
    api = Api(httpx.Response(200, json=packed), httpx.Response(200, json=packed))
    with api.client() as client:
        job = client.get(job_id)
    with api.client(use_numpy=False) as client:
        as_lists = client.get(job_id)
    assert [r.url.params.get("encoding_format") for r in api.requests] == ["base64", "base64"]
    assert job.outputs is not None
    assert [(v.dtype, v.flags.writeable) for v in job.outputs] == [(np.float32, True)] * 2
    assert np.array_equal(np.stack(job.outputs), np.array([[0.5, 0.25], [1, -3]], np.float32))
    assert as_lists.outputs == ([0.5, 0.25], [1.0, -3.0])


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_URL", "http://from-env.test:9000")
    monkeypatch.setenv("CONVEYOR_API_KEY", "cvk_from_env")
    api = Api(httpx.Response(200, json=job_body(str(uuid.uuid4()), "queued")))
    with Client(transport=httpx.MockTransport(api)) as client:
        client.get("x")
        assert client.base_url == "http://from-env.test:9000"
    [request] = api.requests
    assert request.url.host == "from-env.test"
    assert request.headers["Authorization"] == "Bearer cvk_from_env"
    with Client("http://given.test", "cvk_given", transport=httpx.MockTransport(api)) as given:
        assert given.base_url == "http://given.test"


# -- retries ------------------------------------------------------------------------------------


def test_429_waits_its_retry_after_and_resends_with_the_same_key() -> None:
    job_id = str(uuid.uuid4())
    busy = httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "backlog"})
    api = Api(busy, accepted(job_id))
    began = time.monotonic()
    with api.client() as client:
        submitted = client.submit("m", ["a"])
    assert time.monotonic() - began >= 0.95
    assert submitted.id == job_id and not submitted.replayed
    keys = api.keys()
    assert len(keys) == 2 and keys[0] == keys[1] == submitted.idempotency_key
    assert keys[0] is not None and keys[0].startswith("conveyor-py-")
    assert [json.loads(r.content) for r in api.requests] == [{"model": "m", "inputs": ["a"]}] * 2


def test_a_given_key_is_the_one_sent() -> None:
    api = Api(accepted(str(uuid.uuid4())))
    with api.client() as client:
        client.submit("m", ["a"], idempotency_key="mine-1", callback_url="https://x.test/h")
    assert api.keys() == ["mine-1"]
    assert json.loads(api.requests[0].content)["callback_url"] == "https://x.test/h"


def test_429_past_the_busy_budget_is_an_api_error() -> None:
    busy = httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "backlog of 9"})
    api = Api(busy, busy, busy)
    with (
        api.client(retry=RetryPolicy(busy_wait_s=1.5)) as client,
        pytest.raises(ApiError) as raised,
    ):
        client.submit("m", ["a"])
    assert raised.value.status == 429
    assert raised.value.message == "backlog of 9"
    assert len(api.requests) == 2  # waited 1 s once; a second wait would pass 1.5 s


def test_a_429_holds_back_every_submission_of_the_client() -> None:
    """One thread meets a 429 with Retry-After 1; another, which submits just after, waits
    for the same moment instead of adding to the backlog at once."""
    sent: list[tuple[float, str]] = []
    lock = threading.Lock()
    refused = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        with lock:
            sent.append((time.monotonic(), json.loads(request.content)["inputs"][0]))
            if len(sent) == 1:
                refused.set()
                return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "x"})
        return accepted(str(uuid.uuid4()))

    api = Api(*([answer] * 3))
    with api.client() as client:
        first = threading.Thread(target=client.submit, args=("m", ["first"]))
        first.start()
        assert refused.wait(5)
        time.sleep(0.1)  # the 429 has been read
        client.submit("m", ["second"])
        first.join(5)
    assert len(sent) == 3
    assert sent[0][1] == "first"
    refused_at = sent[0][0]
    [second_at] = [at for at, text in sent if text == "second"]
    assert second_at - refused_at >= 0.95


def test_connection_errors_are_retried_with_backoff_then_raised() -> None:
    job_id = str(uuid.uuid4())
    refused = httpx.ConnectError("connection refused")
    api = Api(refused, refused, accepted(job_id))
    with api.client() as client:
        assert client.submit("m", ["a"]).id == job_id
    assert len(set(api.keys())) == 1 and len(api.requests) == 3

    api = Api(*([refused] * 5))
    with (
        api.client(retry=RetryPolicy(attempts=3, initial_backoff_s=0.01)) as client,
        pytest.raises(TransportError) as raised,
    ):
        client.get("x")
    assert len(api.requests) == 3
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert "after 3 tries" in str(raised.value)


def test_a_lost_answer_is_retried_for_post_and_get_but_not_delete() -> None:
    job_id = str(uuid.uuid4())
    lost = httpx.ReadError("connection reset")
    api = Api(lost, accepted(job_id), lost, httpx.Response(200, json=job_body(job_id)))
    with api.client() as client:
        assert client.submit("m", ["a"]).id == job_id
        assert client.get(job_id).status is JobStatus.SUCCEEDED
    assert api.keys()[0] == api.keys()[1]  # the retried POST is the same submission

    api = Api(lost)
    with api.client() as client, pytest.raises(TransportError):
        client.cancel(job_id)  # the first try may have cancelled it: not repeated
    assert len(api.requests) == 1


def test_503_is_retried() -> None:
    job_id = str(uuid.uuid4())
    down = httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "retry later"})
    api = Api(down, httpx.Response(200, json=job_body(job_id, "queued")))
    with api.client() as client:
        assert client.get(job_id).status is JobStatus.QUEUED
    assert len(api.requests) == 2


def test_409_in_flight_is_retried_and_409_not_deployed_is_model_not_deployed() -> None:
    job_id = str(uuid.uuid4())
    in_flight = httpx.Response(409, headers={"Retry-After": "0"}, json={"error": "in progress"})
    replay = accepted(job_id)
    replay.headers["Idempotent-Replayed"] = "true"
    api = Api(in_flight, replay)
    with api.client() as client:
        submitted = client.submit("m", ["a"], idempotency_key="k")
    assert submitted.replayed and submitted.id == job_id

    push = "model 'm' has no deployed version, so no worker can run its jobs; deploy one"
    api = Api(httpx.Response(409, json={"error": push}))
    with api.client() as client, pytest.raises(ModelNotDeployed) as raised:
        client.submit("m", ["a"])
    assert raised.value.status == 409 and "deploy one" in str(raised.value)
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthenticationError), (404, NotFound), (422, ApiError), (500, ApiError)],
)
def test_error_answers_map_to_the_tree(status: int, error: type[ApiError]) -> None:
    body = {"error": f"it is a {status}", "detail": []}
    api = Api(httpx.Response(status, json=body))
    with api.client() as client, pytest.raises(error) as raised:
        client.get("j")
    assert type(raised.value) is error
    assert raised.value.status == status and raised.value.body == body
    assert f"HTTP {status} (GET {URL}/v1/jobs/j?encoding_format=base64): it is a {status}" == str(
        raised.value
    )
    assert len(api.requests) == 1  # none of these is retried


def test_inputs_must_be_a_list_of_texts() -> None:
    with Api().client() as client, pytest.raises(TypeError, match="not one text"):
        client.submit("m", "a text")


# -- waiting ------------------------------------------------------------------------------------


def holding(job_id: str, status: Callable[[int], str], waits: list[float]) -> Any:
    """An answer that holds the read for its ``wait`` (as the API does), then says ``status``
    of the read's number."""

    def answer(request: httpx.Request) -> httpx.Response:
        wait = float(request.url.params.get("wait", "0"))
        waits.append(wait)
        time.sleep(wait)
        state = status(len(waits))
        outputs = [[1.0]] if state == "succeeded" else None
        return httpx.Response(200, json=job_body(job_id, state, outputs))

    return answer


def test_a_long_wait_is_split_into_server_side_waits() -> None:
    job_id = str(uuid.uuid4())
    waits: list[float] = []
    api = Api(*([holding(job_id, lambda n: "queued" if n < 3 else "succeeded", waits)] * 3))
    with api.client(wait_chunk_s=0.2) as client:
        job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED
    assert waits == [0.2, 0.2, 0.2]


def test_wait_times_out_with_the_job_as_last_seen() -> None:
    job_id = str(uuid.uuid4())
    waits: list[float] = []
    api = Api(*([holding(job_id, lambda n: "running", waits)] * 5))
    began = time.monotonic()
    with api.client(wait_chunk_s=0.2) as client, pytest.raises(WaitTimeout) as raised:
        client.wait(job_id, timeout=0.5)
    assert 0.45 <= time.monotonic() - began < 2
    assert raised.value.job.status is JobStatus.RUNNING
    assert all(0 < w <= 0.2 for w in waits) and 0.45 <= sum(waits) <= 0.55


def test_get_with_a_wait_returns_the_job_whatever_its_state() -> None:
    job_id = str(uuid.uuid4())
    waits: list[float] = []
    api = Api(*([holding(job_id, lambda n: "queued", waits)] * 3))
    with api.client(wait_chunk_s=0.2) as client:
        assert client.get(job_id, wait=0.3).status is JobStatus.QUEUED
        assert client.get(job_id).status is JobStatus.QUEUED
    assert waits == [0.2, pytest.approx(0.1, abs=0.02), 0]
    assert "wait" not in api.requests[-1].url.params


def test_wait_raises_job_failed_with_the_job() -> None:
    job_id = str(uuid.uuid4())
    api = Api(httpx.Response(200, json=job_body(job_id, "failed")))
    with api.client() as client, pytest.raises(JobFailed) as raised:
        client.wait(job_id, timeout=5)
    assert raised.value.job.error == "boom"
    assert str(raised.value) == f"job {job_id} failed: boom"


def test_default_server_side_wait_is_within_the_apis_cap() -> None:
    from conveyor.client import _base

    assert 15 <= _base.WAIT_CHUNK_S <= 25  # INGEST_MAX_WAIT_S is 30 by default


# -- map ----------------------------------------------------------------------------------------


class Jobs:
    """A thread-safe fake API for map: each job succeeds with ``[len(text)]`` per input, or
    fails when a text says "fail"; a 429 first when ``busy``. By default it answers a
    submission with its acceptance, as a server older than ``POST /v1/jobs?wait=`` does;
    with ``settles``, a submission that waits gets the job: final, or still queued for the
    first ``settles_queued`` jobs."""

    def __init__(
        self,
        *,
        busy: int = 0,
        delay_s: float = 0.0,
        settles: bool = False,
        settles_queued: int = 0,
    ) -> None:
        self.lock = threading.Lock()
        self.inputs: dict[str, list[str]] = {}
        self.by_key: dict[str, str] = {}
        self.settles = settles
        self.settles_queued = settles_queued
        self.post_params: list[httpx.QueryParams] = []
        self.gets = 0
        self.posts = 0
        self.busy = busy
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            with self.lock:
                self.posts += 1
                if self.busy:
                    self.busy -= 1
                    return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": "x"})
                key = request.headers["Idempotency-Key"]
                job_id = self.by_key.setdefault(key, str(uuid.uuid4()))
                self.inputs.setdefault(job_id, json.loads(request.content)["inputs"])
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.post_params.append(request.url.params)
                if not (self.settles and "wait" in request.url.params):
                    return accepted(job_id)
                if self.settles_queued:
                    self.settles_queued -= 1
                    body = {**job_body(job_id, "queued"), "status_url": f"{URL}/v1/jobs/{job_id}"}
                    return httpx.Response(202, json=body)
            answer = self.finished(job_id)
            return httpx.Response(200, json={**answer.json(), "status_url": f"x/{job_id}"})
        with self.lock:
            self.gets += 1
        return self.finished(request.url.path.rsplit("/", 1)[-1])

    def finished(self, job_id: str) -> httpx.Response:
        time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
            texts = self.inputs[job_id]
        if any("fail" in t for t in texts):
            return httpx.Response(200, json=job_body(job_id, "failed"))
        return httpx.Response(200, json=job_body(job_id, outputs=[[len(t)] for t in texts]))


def test_map_yields_in_order_with_bounded_concurrency_and_reads_lazily() -> None:
    jobs = Jobs(delay_s=0.02)
    pulled = 0

    def texts() -> Iterator[str]:
        nonlocal pulled
        for i in range(40):
            pulled += 1
            yield "x" * (i + 1)

    taken = 0
    with Client(URL, "k", transport=httpx.MockTransport(jobs), retry=FAST) as client:
        for i, vector in enumerate(client.map("m", texts(), concurrency=4, texts_per_job=3)):
            assert list(vector) == [i + 1]
            taken += 1
            assert pulled <= taken + 4 * 3 + 3  # never more than the window ahead
    assert taken == 40
    assert len(jobs.inputs) == 14  # 13 jobs of 3 texts, one of 1
    assert jobs.max_in_flight <= 4


def test_map_submissions_wait_so_a_quick_job_costs_one_request() -> None:
    jobs = Jobs(settles=True, settles_queued=2)
    submitted: list[int] = []
    with Client(URL, "k", transport=httpx.MockTransport(jobs), retry=FAST) as client:
        results = list(
            client.map_jobs(
                "m",
                [[f"t{i}"] for i in range(10)],
                concurrency=3,
                on_submitted=lambda index, accepted: submitted.append(index),
            )
        )
    assert [job.outputs and list(job.outputs[0]) for job in results] == [[2]] * 10
    assert jobs.posts == 10
    assert jobs.gets == 2  # only the two jobs still queued when their submission answered
    assert sorted(submitted) == list(range(10))
    assert all(
        float(params["wait"]) == conveyor.client._base.WAIT_CHUNK_S
        and params["encoding_format"] == "base64"
        for params in jobs.post_params
    )


def test_a_submissions_wait_is_at_most_the_jobs_timeout() -> None:
    jobs = Jobs(settles=True)
    with Client(URL, "k", transport=httpx.MockTransport(jobs), retry=FAST) as client:
        [job] = client.map_jobs("m", [["a"]], timeout=1.5)
    assert job.status is JobStatus.SUCCEEDED
    assert [float(params["wait"]) for params in jobs.post_params] == [1.5]


def test_map_waits_out_429s_and_never_submits_a_job_twice() -> None:
    jobs = Jobs(busy=3)
    with Client(URL, "k", transport=httpx.MockTransport(jobs), retry=FAST) as client:
        outputs = list(client.map("m", [f"t{i}" for i in range(10)], concurrency=3))
    assert [list(v) for v in outputs] == [[2]] * 10
    assert len(jobs.inputs) == 10 and jobs.posts == 13


def test_map_raises_job_failed_after_the_outputs_before_it() -> None:
    jobs = Jobs()
    seen = []
    with Client(URL, "k", transport=httpx.MockTransport(jobs), retry=FAST) as client:
        vectors = client.map("m", ["a", "bb", "fail", "dddd"], concurrency=2)
        seen.append(list(next(vectors)))
        seen.append(list(next(vectors)))
        with pytest.raises(JobFailed) as raised:
            next(vectors)
    assert seen == [[1], [2]]
    assert raised.value.job.status is JobStatus.FAILED


def test_map_jobs_can_return_errors_in_place() -> None:
    jobs = Jobs()
    finished: list[int] = []
    with Client(URL, "k", transport=httpx.MockTransport(jobs), retry=FAST) as client:
        results = list(
            client.map_jobs(
                "m",
                [["a"], ["fail"], ["ccc"]],
                return_exceptions=True,
                on_finished=lambda index, outcome: finished.append(index),
            )
        )
    statuses = [r.status for r in results if not isinstance(r, ConveyorError)]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED]
    assert sorted(finished) == [0, 1, 2]


@pytest.mark.parametrize("concurrency", [0, 257])
def test_map_refuses_a_concurrency_out_of_bounds(concurrency: int) -> None:
    with (
        Client(URL, "k", transport=httpx.MockTransport(Jobs())) as client,
        pytest.raises(ValueError, match="concurrency"),
    ):
        list(client.map_jobs("m", [["a"]], concurrency=concurrency))


# -- the async client ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_retries_429_and_connection_errors_with_one_key() -> None:
    job_id = str(uuid.uuid4())
    answers: list[Any] = [
        httpx.ConnectError("refused"),
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": "x"}),
        accepted(job_id),
        httpx.Response(200, json=job_body(job_id, outputs=[[0.5]])),
    ]
    requests: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    async with AsyncClient(
        URL, "k", transport=httpx.MockTransport(handler), retry=FAST, use_numpy=False
    ) as client:
        submitted = await client.submit("m", ["a"])
        job = await client.wait(submitted.id, timeout=5)
    assert job.outputs == ([0.5],)
    keys = {r.headers.get("Idempotency-Key") for r in requests if r.method == "POST"}
    assert len(keys) == 1 and len(requests) == 4


@pytest.mark.anyio
async def test_async_map_yields_in_order() -> None:
    jobs = Jobs(delay_s=0.01)

    async def handler(request: httpx.Request) -> httpx.Response:
        return jobs(request)  # blocking, but short: order is what is checked

    async with AsyncClient(URL, "k", transport=httpx.MockTransport(handler), retry=FAST) as c:
        outputs = [list(v) async for v in c.map("m", ["x" * n for n in range(1, 21)])]
    assert outputs == [[n] for n in range(1, 21)]


@pytest.mark.anyio
async def test_async_map_submissions_wait_so_a_quick_job_costs_one_request() -> None:
    jobs = Jobs(settles=True, settles_queued=1)

    async def handler(request: httpx.Request) -> httpx.Response:
        return jobs(request)

    async with AsyncClient(URL, "k", transport=httpx.MockTransport(handler), retry=FAST) as c:
        outputs = [list(v) async for v in c.map("m", ["x" * n for n in range(1, 9)])]
    assert outputs == [[n] for n in range(1, 9)]
    assert (jobs.posts, jobs.gets) == (8, 1)
    assert all("wait" in params for params in jobs.post_params)
