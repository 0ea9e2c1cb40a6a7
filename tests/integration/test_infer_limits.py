"""infer holds each job to the input limits itself (issue 8, item 9).

ingest refuses an oversized submission with a 422, but any producer allowed to send to an
infer queue can bypass it. Here jobs are sent straight to the queue of an infer service run
in-process on its own topology, serving a model that records every text it is shown.
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path
from typing import ClassVar

import anyio
import pytest

from emulator import Stack
from emulator.harness import add_topology
from emulator.seed import push
from services.infer.handlers import register
from services.infer.service import run as run_infer
from shared.aws import AwsClients, resolve_queue_url
from shared.config import InferSettings, load_settings
from shared.messages import (
    Envelope,
    JobRequest,
    JobResult,
    JobStatus,
    MessageType,
    decode_envelope,
)
from shared.topology import Topology
from tests.models import TinyEmbedding, make_tiny_model

pytestmark = pytest.mark.anyio

MODEL = "recorder"
RECORDING_KIND = "test-recording-embedding"
SEEN: list[str] = []
"""Every text the model was shown, to cost() or to predict()."""


@register(RECORDING_KIND)
class RecordingEmbedding(TinyEmbedding):
    kind: ClassVar[str] = RECORDING_KIND

    def cost(self, text: str) -> int:
        SEEN.append(text)
        return super().cost(text)

    def predict(self, inputs: list[str]) -> list[list[float]]:
        SEEN.extend(inputs)
        return super().predict(inputs)


async def test_an_oversized_job_fails_clearly_and_never_reaches_the_model(
    stack: Stack, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = await add_topology(stack, Topology(prefix="limits", models=(MODEL,)), seed=False)
    await push(
        own.admin,
        own.topology,
        make_tiny_model(tmp_path / "model"),
        name=MODEL,
        version="1",
        kind=RECORDING_KIND,
    )
    for name, value in own.service_env("infer").items():
        clean_env.setenv(name, value)
    clean_env.setenv("SQS_WAIT_S", "1")
    clean_env.setenv("SHUTDOWN_GRACE_S", "5")
    clean_env.setenv("INFER_STARTED_AFTER_S", "0")  # every job run is announced, at once
    clean_env.setenv("INFER_CACHE_DIR", str(tmp_path / "cache"))
    settings = load_settings(InferSettings)
    assert (settings.max_inputs, settings.max_input_chars) == (256, 20_000)  # ingest's too

    jobs = {
        "too-many": ["many"] * 257,
        "too-long": ["word " * 180_000],  # 900,000 characters (within SQS's 1 MiB)
        "fine": ["hello world"],
    }
    ids = {uuid.uuid4(): name for name in jobs}
    SEEN.clear()
    async with AwsClients(own.admin) as clients:
        sqs = await clients.sqs()
        queue = await resolve_queue_url(sqs, own.admin, own.topology.infer_queue(MODEL).name)
        results_queue = await resolve_queue_url(sqs, own.admin, own.topology.results_queue.name)
        for job_id, name in ids.items():
            request = JobRequest(
                model=MODEL, inputs=jobs[name], submitted_at=datetime.datetime.now(datetime.UTC)
            )
            envelope = Envelope(
                type=MessageType.JOB_REQUESTED,
                job_id=job_id,
                tenant="limits",
                payload=request.model_dump(mode="json"),
            )
            await sqs.send_message(QueueUrl=queue, MessageBody=envelope.model_dump_json())

        results: dict[str, JobResult] = {}
        started: set[str] = set()
        stopping = anyio.Event()
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_infer, settings, stopping)
                while len(results) < len(ids):
                    answer = await sqs.receive_message(
                        QueueUrl=results_queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
                    )
                    for message in answer.get("Messages", []):
                        got = decode_envelope(message["Body"])
                        assert got.payload is not None  # small: never claim-checked
                        if got.type is MessageType.JOB_RESULT:
                            results[ids[got.job_id]] = JobResult.model_validate(got.payload)
                        else:
                            started.add(ids[got.job_id])
                        await sqs.delete_message(
                            QueueUrl=results_queue, ReceiptHandle=message["ReceiptHandle"]
                        )
                stopping.set()

    too_many, too_long, fine = results["too-many"], results["too-long"], results["fine"]
    assert (too_many.status, too_many.vectors) == (JobStatus.FAILED, None)
    assert too_many.error == (
        "refused: the job has 257 inputs, more than the limit of 256 (MAX_INPUTS)"
    )
    assert (too_long.status, too_long.vectors) == (JobStatus.FAILED, None)
    assert too_long.error == (
        "refused: inputs[0] has 900000 characters, more than the limit of 20000 (MAX_INPUT_CHARS)"
    )
    assert fine.status is JobStatus.SUCCEEDED
    assert fine.vectors is not None
    assert fine.vectors.count == 1
    # The model saw the job within the limits (its cost, then its batch) and nothing else.
    assert SEEN == ["hello world", "hello world"]
    assert started == {"fine"}  # a refused job goes from queued straight to failed
