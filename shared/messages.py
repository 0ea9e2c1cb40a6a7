"""Message contracts: one versioned envelope for every hop, and the payload of each hop.

    {"schema_version": 1, "type": "job.requested", "message_id": ..., "job_id": ...,
     "tenant": ..., "traceparent": ..., "created_at": ..., "payload": {...}}

A payload larger than the claim-check threshold travels in the payloads bucket instead, and the
envelope carries ``payload_ref`` (bucket, key, size, sha256). Models are frozen; unknown fields
are refused, so a message from a newer writer is noticed, not half-read. A body that does not
decode, or has a schema version this code does not know, is *poison*: :func:`decode_envelope`
raises :class:`PoisonMessage`, and the consumer lets the redrive policy move it to the DLQ.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_validator,
)

from shared import vectors
from shared.errors import ConveyorError

__all__ = [
    "SCHEMA_VERSION",
    "Envelope",
    "JobRequest",
    "JobResult",
    "JobStarted",
    "JobStatus",
    "MessageType",
    "Notification",
    "PayloadRef",
    "PoisonMessage",
    "Vectors",
    "decode_envelope",
]

SCHEMA_VERSION: Final = 1


class PoisonMessage(ConveyorError):
    """A message that can never be processed (undecodable, unknown version or type)."""


class MessageType(StrEnum):
    JOB_REQUESTED = "job.requested"
    JOB_STARTED = "job.started"
    JOB_RESULT = "job.result"
    JOB_NOTIFICATION = "job.notification"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PayloadRef(_Frozen):
    """Where a claim-checked payload lies."""

    bucket: str
    key: str
    size: int
    sha256: str


class Envelope(_Frozen):
    schema_version: Literal[1] = SCHEMA_VERSION
    type: MessageType
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    job_id: uuid.UUID
    tenant: str
    traceparent: str | None = None
    """W3C trace context of the span that sent this message."""
    created_at: datetime.datetime = Field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )
    payload: dict[str, Any] | None = None
    payload_ref: PayloadRef | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> Envelope:
        if (self.payload is None) == (self.payload_ref is None):
            raise ValueError("an envelope carries exactly one of payload and payload_ref")
        return self


# -- payloads of each hop -------------------------------------------------------------------

TextInput = Annotated[str, Field(min_length=1)]


class JobRequest(_Frozen):
    """ingest -> infer: what to run."""

    model: str
    inputs: list[TextInput] = Field(min_length=1)
    callback_url: str | None = None
    submitted_at: datetime.datetime


class JobStarted(_Frozen):
    """infer -> persist: a worker took the job (queued -> running)."""

    model: str
    model_version: str | None = None
    started_at: datetime.datetime


def _from_base64(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not base64: {exc}") from None
    raise ValueError("expected base64 text")


def _to_base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


Base64Data = Annotated[
    bytes,
    PlainValidator(_from_base64),
    PlainSerializer(_to_base64, return_type=str, when_used="json"),
]
"""Bytes, base64 in JSON (standard alphabet, padded, no line breaks). Not pydantic's
``Base64Bytes``: it skips characters outside the alphabet when decoding ("AAAA*AAAA" passes),
and it reads raw bytes given in Python as base64 text, so infer could not hand it the packed
bytes."""


class Vectors(_Frozen):
    """One float32 vector per input, packed (:mod:`shared.vectors`)."""

    dim: int = Field(ge=1)
    data: Base64Data

    @model_validator(mode="after")
    def _whole_vectors(self) -> Vectors:
        vectors.check(self.data, self.dim)
        return self

    @classmethod
    def of(cls, rows: Sequence[Sequence[float]]) -> Vectors:
        data, dim = vectors.pack(rows)
        return cls(dim=dim, data=data)

    @property
    def count(self) -> int:
        return len(self.data) // (self.dim * vectors.ITEM_BYTES)

    def rows(self) -> list[list[float]]:
        return vectors.unpack(self.data, self.dim)


class JobResult(_Frozen):
    """infer -> persist: the outcome of one job."""

    status: Literal[JobStatus.SUCCEEDED, JobStatus.FAILED]
    model: str
    model_version: str | None = None
    vectors: Vectors | None = None
    """The outputs of a succeeded job, one vector per input."""
    outputs: list[list[float]] | None = None
    """The outputs as numbers, from an infer older than packed vectors: a rolling upgrade can
    leave such messages in the results queue, and persist packs them (:meth:`packed`)."""
    error: str | None = None
    started_at: datetime.datetime
    finished_at: datetime.datetime
    batch_size: int = 0
    """How many jobs shared the model call that produced this result."""
    callback_url: str | None = None

    def packed(self) -> Vectors | None:
        """The outputs, packed, whichever way they came."""
        if self.vectors is not None or not self.outputs:
            return self.vectors
        return Vectors.of(self.outputs)


class Notification(_Frozen):
    """persist -> notify: tell the job's callback URL that the job ended."""

    event: Literal["job.succeeded", "job.failed"]
    callback_url: str


def decode_envelope(body: str) -> Envelope:
    """Parse a message body; anything that cannot be processed raises PoisonMessage."""
    try:
        return Envelope.model_validate_json(body)
    except ValidationError as exc:
        version = _schema_version(body)
        if version is not None and version != SCHEMA_VERSION:
            raise PoisonMessage(f"unknown schema_version {version!r}") from exc
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise PoisonMessage(f"undecodable message: {where}: {first['msg']}") from exc


def _schema_version(body: str) -> object:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("schema_version") if isinstance(data, dict) else None
