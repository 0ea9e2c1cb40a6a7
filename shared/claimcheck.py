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

__all__ = ["ClaimCheck"]

M = TypeVar("M", bound=BaseModel)


class ClaimCheck:
    def __init__(self, clients: AwsClients, bucket: str, threshold_bytes: int) -> None:
        self._clients = clients
        self.bucket = bucket
        self.threshold_bytes = threshold_bytes

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
        s3 = await self._clients.s3()
        with aws_errors(self._clients.settings, resource=f"s3://{ref.bucket}/{ref.key}"):
            response = await s3.get_object(Bucket=ref.bucket, Key=ref.key)
            async with response["Body"] as stream:
                raw = await stream.read()
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
