"""No secret reaches a log: the whole stack, run as processes, with secrets handed to it.

The four services run as their containers would (``python -m services.<name>``, each with
only its own environment and IAM key, output captured line by line, at debug level), on a
topology of their own serving only the tiny test model. Jobs go in over HTTP: two with a
callback to a real receiver on 127.0.0.1 (one succeeds; one fails in the model; a delivery
is refused once and retried), requests with a wrong API key, a well-formed key of no one and
a string that is no key, and one with a malformed body. Once the jobs are final and their
webhooks delivered, and the services stopped, no service's output may contain:

- any service's AWS secret access key or access key id, nor the administrator's;
- the webhook signing secret (``whsec_...``, and its base64 body alone);
- the client's API key, or its secret part; the wrong keys presented;
- the database password, where the URL has one;
- what the malformed body held.

And the answers to the wrong keys do not contain the keys presented.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx
import pytest

from emulator import Stack
from emulator.devstack import DevOptions, DevStack
from emulator.harness import add_topology
from emulator.processes import Supervisor
from emulator.seed import push
from shared.db.roles import credentials_of
from shared.topology import Topology
from tests.conftest import free_port
from tests.models import make_tiny_model
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

TINY = "tiny"
FAIL_MARKER = "__FAIL__"
BODY_SECRET = "body-secret-7f3a9c1e5b2d"
"""Sent inside a malformed request body: what a client typed must not end up in a log."""


@dataclass
class Running:
    stack: Stack
    supervisor: Supervisor
    api: httpx.AsyncClient
    receiver: WebhookReceiver
    api_key: str

    def output(self) -> dict[str, str]:
        return {name: service.output for name, service in self.supervisor.processes.items()}


@pytest.fixture(scope="module")
async def running(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    sstack = await add_topology(stack, Topology(prefix="secrets", models=(TINY,)), seed=False)
    tiny_dir = make_tiny_model(tmp_path_factory.mktemp("tiny"), fail_marker=FAIL_MARKER)
    await push(
        sstack.admin, sstack.topology, tiny_dir, name=TINY, version="1", kind="test-tiny-embedding"
    )
    # Debug: the most a service ever prints is what must hold no secret.
    fast = {"SQS_WAIT_S": "1", "SHUTDOWN_GRACE_S": "5", "LOG_LEVEL": "debug"}
    extra = {
        "infer": {
            **fast,
            "INFER_HANDLER_MODULES": "tests.models",
            "INFER_METRICS_PORT": str(free_port()),
        },
        "ingest": fast,
        "persist": fast,
        "notify": {**fast, "NOTIFY_RETRY_SCHEDULE_S": "0.2,0.2,0.2"},
    }
    async with (
        WebhookReceiver(secret=sstack.webhook_secret) as receiver,
        DevStack(sstack, DevOptions(http_port=0, extra=extra, tenant="secrets")) as dev,
        httpx.AsyncClient(
            base_url=dev.api_url,
            timeout=30,
            headers={"Authorization": f"Bearer {dev.api_key}"},
        ) as api,
    ):
        yield Running(sstack, dev.supervisor, api, receiver, dev.api_key)


def secrets_of(running: Running, base: Stack, presented: list[str]) -> dict[str, str]:
    """Every secret the run knows, by a name to report it by (never the value)."""
    found: dict[str, str] = {}
    for label, stack in (("stack", base), ("topology", running.stack)):
        for service, key in stack.provisioned.credentials.items():
            found[f"{label} {service} AWS secret access key"] = key.secret_access_key
            found[f"{label} {service} AWS access key id"] = key.access_key_id
    admin = base.endpoint.admin
    if admin is not None:
        found["admin AWS secret access key"] = admin.secret_access_key
        found["admin AWS access key id"] = admin.access_key_id
    webhook = running.stack.webhook_secret
    assert webhook.startswith("whsec_")
    found["webhook secret"] = webhook
    found["webhook secret, base64 body"] = webhook.removeprefix("whsec_")
    found["API key"] = running.api_key
    found["API key, secret part"] = running.api_key.split("_", 2)[2]
    for i, key in enumerate(presented):
        found[f"wrong key {i}"] = key
        if key.startswith("cvk_"):
            found[f"wrong key {i}, secret part"] = key.split("_", 2)[2]
    found["malformed body content"] = BODY_SECRET
    password = urllib.parse.urlsplit(running.stack.database_url).password
    if password:
        found["database password"] = password
    for service, url in running.stack.database_logins.items():
        login_password = credentials_of(url)[1]
        if login_password:
            found[f"{service} database password"] = login_password
    return found


async def test_no_secret_appears_in_any_service_output(running: Running, stack: Stack) -> None:
    key_id = running.api_key.split("_", 2)[1]
    tampered = f"cvk_{key_id}_" + "Q" * 43  # the client's key id, a wrong secret
    unknown = "cvk_" + "0" * 16 + "_" + "Zz9-" * 10 + "Zz9"  # well-formed, no such key
    malformed = "s3cr3t-" + "x" * 30  # not shaped like a key at all

    # Two jobs with a callback, run to the end and delivered: one succeeds, one fails in the
    # model (an error logged with its exception); the first delivery is answered 500 and
    # retried (a failed attempt logged).
    running.receiver.script(500)
    job_ids = []
    for text in ("hello secrets", f"please {FAIL_MARKER} now"):
        submitted = await running.api.post(
            "/v1/jobs",
            json={"model": TINY, "inputs": [text], "callback_url": running.receiver.url},
        )
        assert submitted.status_code == 202, submitted.text
        job_ids.append(submitted.json()["id"])
    job_id = job_ids[0]

    # Wrong keys: refused, and the answer does not echo what was presented.
    for wrong in (tampered, unknown, malformed):
        for request in (
            running.api.build_request("POST", "/v1/jobs", json={"model": TINY, "inputs": ["x"]}),
            running.api.build_request("GET", f"/v1/jobs/{job_id}"),
        ):
            request.headers["Authorization"] = f"Bearer {wrong}"
            refused = await running.api.send(request)
            assert refused.status_code == 401, refused.text
            assert isinstance(refused.json()["error"], str)
            answer = refused.text + "".join(f"{k}: {v}\n" for k, v in refused.headers.items())
            assert wrong not in answer
            assert wrong.split("_")[-1] not in answer

    # A malformed body, with the valid key; what it holds is neither echoed nor logged.
    broken = await running.api.post(
        "/v1/jobs",
        content=b'{"model": "tiny", "inputs": ["' + BODY_SECRET.encode() + b" unterminated",
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400, broken.text
    assert isinstance(broken.json()["error"], str)
    assert running.api_key not in broken.text
    assert BODY_SECRET not in broken.text

    statuses = []
    with anyio.fail_after(60):
        for one in job_ids:
            while True:
                job = (await running.api.get(f"/v1/jobs/{one}", params={"wait": 5})).json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    statuses.append(job["status"])
                    break
    assert statuses == ["succeeded", "failed"]
    await running.receiver.wait_for_requests(3, timeout=30)
    payloads = running.receiver.verified_requests()
    assert {p["data"]["job_id"] for p in payloads} == set(job_ids)
    # Stop the services, so that their shutdown lines (summaries, errors) are checked too.
    await running.supervisor.stop_all()

    outputs = running.output()
    assert set(outputs) == {"ingest", "infer", "persist", "notify"}
    assert all(outputs.values())
    secrets = secrets_of(running, stack, [tampered, unknown, malformed])
    leaks = [
        f"{label} in {service}'s output"
        for label, value in secrets.items()
        for service, text in outputs.items()
        if value in text
    ]
    assert not leaks, leaks
    # The refusals were logged, by the public key id alone: the search above did read them.
    assert "api key refused" in outputs["ingest"]
    assert key_id in outputs["ingest"]
    # Nor did the webhook carry the signing secret.
    for delivered in running.receiver.requests:
        sent = delivered.body.decode() + str(delivered.headers)
        assert running.stack.webhook_secret.removeprefix("whsec_") not in sent
