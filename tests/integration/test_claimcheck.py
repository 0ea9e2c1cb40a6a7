"""Large payloads travel through the payloads bucket and come back verified."""

import uuid

import pytest

from emulator import Stack
from shared.aws import AwsClients
from shared.claimcheck import ClaimCheck
from shared.messages import JobRequest, MessageType, PoisonMessage

pytestmark = pytest.mark.anyio


def request(chars: int) -> JobRequest:
    import datetime

    return JobRequest(
        model="m",
        inputs=["x" * chars],
        submitted_at=datetime.datetime.now(datetime.UTC),
    )


async def test_small_payload_stays_inline_large_one_goes_to_s3(stack: Stack) -> None:
    bucket = stack.topology.payloads_bucket.name
    async with AwsClients(stack.admin) as clients:
        claims = ClaimCheck(clients, bucket, threshold_bytes=2048)
        small = await claims.seal(
            MessageType.JOB_REQUESTED, job_id=uuid.uuid4(), tenant="t", payload=request(10)
        )
        assert small.payload is not None
        assert small.payload_ref is None
        big_request = request(50_000)
        big = await claims.seal(
            MessageType.JOB_REQUESTED, job_id=uuid.uuid4(), tenant="t", payload=big_request
        )
        assert big.payload is None
        assert big.payload_ref is not None
        assert big.payload_ref.bucket == bucket
        assert len(big.model_dump_json()) < 2048  # the message itself stays small
        envelope, opened = await claims.read(
            big.model_dump_json(), MessageType.JOB_REQUESTED, JobRequest
        )
        assert opened == big_request
        assert envelope.job_id == big.job_id


async def test_altered_payload_is_poison(stack: Stack) -> None:
    bucket = stack.topology.payloads_bucket.name
    async with AwsClients(stack.admin) as clients:
        claims = ClaimCheck(clients, bucket, threshold_bytes=1024)
        sealed = await claims.seal(
            MessageType.JOB_REQUESTED, job_id=uuid.uuid4(), tenant="t", payload=request(5000)
        )
        assert sealed.payload_ref is not None
        s3 = await clients.s3()
        await s3.put_object(Bucket=bucket, Key=sealed.payload_ref.key, Body=b'{"inputs": []}')
        with pytest.raises(PoisonMessage, match="altered"):
            await claims.read(sealed.model_dump_json(), MessageType.JOB_REQUESTED, JobRequest)


async def test_wrong_type_and_bad_payload_are_poison(stack: Stack) -> None:
    async with AwsClients(stack.admin) as clients:
        claims = ClaimCheck(clients, stack.topology.payloads_bucket.name, threshold_bytes=4096)
        sealed = await claims.seal(
            MessageType.JOB_REQUESTED, job_id=uuid.uuid4(), tenant="t", payload=request(5)
        )
        with pytest.raises(PoisonMessage, match=r"expected a job\.result"):
            await claims.read(sealed.model_dump_json(), MessageType.JOB_RESULT, JobRequest)
        broken = sealed.model_copy(update={"payload": {"model": "m"}})
        with pytest.raises(PoisonMessage, match="inputs"):
            await claims.read(broken.model_dump_json(), MessageType.JOB_REQUESTED, JobRequest)


async def test_a_reference_to_a_huge_or_foreign_payload_is_poison_before_any_read(
    stack: Stack,
) -> None:
    """A producer other than ingest could point a worker at anything: it must not read it."""
    bucket = stack.topology.payloads_bucket.name
    async with AwsClients(stack.admin) as clients:
        claims = ClaimCheck(clients, bucket, threshold_bytes=1024, max_bytes=10_000)
        sealed = await claims.seal(
            MessageType.JOB_REQUESTED, job_id=uuid.uuid4(), tenant="t", payload=request(5000)
        )
        assert sealed.payload_ref is not None
        ref = sealed.payload_ref
        huge = sealed.model_copy(update={"payload_ref": ref.model_copy(update={"size": 10**12})})
        with pytest.raises(PoisonMessage, match="declares 1000000000000 bytes"):
            await claims.read(huge.model_dump_json(), MessageType.JOB_REQUESTED, JobRequest)
        models = stack.topology.models_bucket.name
        foreign = sealed.model_copy(
            update={"payload_ref": ref.model_copy(update={"bucket": models})}
        )
        with pytest.raises(PoisonMessage, match=f"is not in {bucket}"):
            await claims.read(foreign.model_dump_json(), MessageType.JOB_REQUESTED, JobRequest)
        # An object bigger than declared is caught after one byte more than declared.
        s3 = await clients.s3()
        await s3.put_object(Bucket=bucket, Key=ref.key, Body=b"x" * (ref.size + 5000))
        with pytest.raises(PoisonMessage, match="altered"):
            await claims.read(sealed.model_dump_json(), MessageType.JOB_REQUESTED, JobRequest)


async def test_a_payload_of_many_reads_comes_back_whole(stack: Stack) -> None:
    """S3's body arrives in pieces: a multi-megabyte payload is read to its declared size."""
    bucket = stack.topology.payloads_bucket.name
    async with AwsClients(stack.admin) as clients:
        claims = ClaimCheck(clients, bucket, threshold_bytes=1024)
        big = request(4 * 1024 * 1024)
        sealed = await claims.seal(
            MessageType.JOB_REQUESTED, job_id=uuid.uuid4(), tenant="t", payload=big
        )
        assert sealed.payload_ref is not None and sealed.payload_ref.size > 4 * 1024 * 1024
        _, opened = await claims.read(
            sealed.model_dump_json(), MessageType.JOB_REQUESTED, JobRequest
        )
        assert opened == big
