"""Claim-check: payloads too large for a message travel through the payloads bucket.

:meth:`ClaimCheck.seal` wraps a payload in an :class:`~shared.messages.Envelope`, putting it
in S3 when its JSON exceeds the threshold (``CLAIM_CHECK_BYTES``); :meth:`ClaimCheck.open`
gives the payload back, fetching and verifying it (size and sha256) when it was offloaded.
The bucket's lifecycle rule expires these objects (see the topology).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.aws.clients import AwsClients
from shared.aws.errors import aws_errors
from shared.messages import Envelope, MessageType, PayloadRef, PoisonMessage, decode_envelope

__all__ = ["MAX_PAYLOAD_BYTES", "ClaimCheck"]

M = TypeVar("M", bound=BaseModel)


MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
"""The largest claim-checked payload opened (a job's inputs are at most ingest's 1 MiB body;
its vectors a few MiB): a reference to anything bigger is refused before a byte is read."""


class ClaimCheck:
    def __init__(
        self,
        clients: AwsClients,
        bucket: str,
        threshold_bytes: int,
        *,
        max_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self._clients = clients
        self.bucket = bucket
        self.threshold_bytes = threshold_bytes
        self.max_bytes = max_bytes

    async def seal(
        self,
        message_type: MessageType,
        *,
        job_id: uuid.UUID,
        tenant: str,
        payload: BaseModel,
        traceparent: str | None = None,
    ) -> Envelope:
        data = payload.model_dump(mode="json")
        raw = json.dumps(data, separators=(",", ":")).encode()
        if len(raw) <= self.threshold_bytes:
            return Envelope(
                type=message_type,
                job_id=job_id,
                tenant=tenant,
                traceparent=traceparent,
                payload=data,
            )
        message_id = uuid.uuid4()
        key = f"{message_type.value}/{job_id}/{message_id}.json"
        s3 = await self._clients.s3()
        with aws_errors(self._clients.settings, resource=self.bucket):
            await s3.put_object(
                Bucket=self.bucket, Key=key, Body=raw, ContentType="application/json"
            )
        ref = PayloadRef(
            bucket=self.bucket, key=key, size=len(raw), sha256=hashlib.sha256(raw).hexdigest()
        )
        return Envelope(
            type=message_type,
            message_id=message_id,
            job_id=job_id,
            tenant=tenant,
            traceparent=traceparent,
            payload_ref=ref,
        )

    async def open(self, envelope: Envelope) -> dict[str, Any]:
        if envelope.payload is not None:
            return envelope.payload
        ref = envelope.payload_ref
        assert ref is not None  # the envelope's validator guarantees one of the two
        # A producer other than ingest can reach the queues: what it points at is checked
        # before it is read, and never read past the size it declares.
        where = f"s3://{ref.bucket}/{ref.key}"
        if ref.bucket != self.bucket:
            raise PoisonMessage(f"claim-checked payload {where} is not in {self.bucket}")
        if not 0 <= ref.size <= self.max_bytes:
            raise PoisonMessage(
                f"claim-checked payload {where} declares {ref.size} bytes, over the "
                f"{self.max_bytes} a payload may have"
            )
        s3 = await self._clients.s3()
        with aws_errors(self._clients.settings, resource=where):
            response = await s3.get_object(Bucket=ref.bucket, Key=ref.key)
            body = response["Body"]
            chunks: list[bytes] = []
            wanted = ref.size + 1  # one more byte than declared tells "bigger"
            try:
                while wanted > 0:  # a read gives what has arrived, perhaps less than asked
                    chunk = await body.read(wanted)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    wanted -= len(chunk)
            finally:
                body.close()  # the rest, if any, is never read
            raw = b"".join(chunks)
        if len(raw) != ref.size or hashlib.sha256(raw).hexdigest() != ref.sha256:
            raise PoisonMessage(f"claim-checked payload s3://{ref.bucket}/{ref.key} was altered")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise PoisonMessage(
                f"claim-checked payload s3://{ref.bucket}/{ref.key} is not an object"
            )
        return data

    async def read(self, body: str, expected: MessageType, model: type[M]) -> tuple[Envelope, M]:
        """Decode a message body of the ``expected`` type; anything unusable is poison."""
        envelope = decode_envelope(body)
        if envelope.type != expected:
            raise PoisonMessage(f"expected a {expected.value} message, got {envelope.type.value}")
        return envelope, await self.payload(envelope, model)

    async def payload(self, envelope: Envelope, model: type[M]) -> M:
        """The envelope's payload as ``model`` (fetched when claim-checked); else poison."""
        data = await self.open(envelope)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            kind = envelope.type.value
            raise PoisonMessage(f"bad {kind} payload: {where}: {first['msg']}") from exc
