"""What the client returns: frozen dataclasses read from the API's JSON.

    Accepted    the answer to a submission: ``id``, ``status``, ``status_url``, ``replayed``
    Job         a job as ``GET /v1/jobs/{id}`` shows it; ``outputs`` once it succeeded
    JobInput    one job to submit in :meth:`Client.map_jobs`: its texts and, optionally, the
                Idempotency-Key that makes resubmitting it safe
    JobStatus   queued -> running -> succeeded | failed | cancelled

Outputs are one vector per input, in input order: a float32 ``numpy.ndarray`` each when numpy
can be imported (and the client was not told otherwise), else a list of floats. numpy is
imported the first time outputs are read, never by ``import conveyor``. The client asks for
them in base64 (``encoding_format=base64``: each vector's float32 bytes, little-endian) and
reads numbers as well, from a server older than that parameter.
"""

from __future__ import annotations

import array
import base64
import datetime
import enum
import functools
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vector: TypeAlias = npt.NDArray[np.float32] | list[float]
else:
    Vector: TypeAlias = Any

__all__ = ["Accepted", "Job", "JobInput", "JobStatus", "Vector", "numpy_module", "parse_job"]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Accepted:
    """A submission the API accepted (202). ``replayed``: the Idempotency-Key had been used
    before, so this is the first submission's job, not a new one."""

    id: str
    status: JobStatus
    status_url: str
    idempotency_key: str
    replayed: bool = False


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    model: str
    model_version: str | None
    inputs_count: int
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    error: str | None
    outputs: tuple[Vector, ...] | None
    """One vector per input once the job succeeded; None before, and when it did not."""

    @property
    def final(self) -> bool:
        return self.status.final

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    def raise_for_status(self) -> Job:
        """The job itself if it succeeded or is not final yet; JobFailed if it failed or was
        cancelled."""
        from conveyor.client._errors import JobFailed

        if self.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise JobFailed(self)
        return self


@dataclass(frozen=True)
class JobInput:
    """One job for :meth:`Client.map_jobs`: its texts, and the Idempotency-Key that names it
    (derived by the client when None)."""

    inputs: Sequence[str]
    """Kept as a tuple."""
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str) or not all(isinstance(t, str) for t in self.inputs):
            raise TypeError("JobInput.inputs must be a sequence of texts, not one text")
        object.__setattr__(self, "inputs", tuple(self.inputs))


def parse_accepted(body: Any, key: str, *, replayed: bool) -> Accepted:
    return Accepted(
        id=str(body["id"]),
        status=JobStatus(body.get("status", "queued")),
        status_url=str(body.get("status_url", "")),
        idempotency_key=key,
        replayed=replayed,
    )


def parse_job(body: Any, *, use_numpy: bool | None) -> Job:
    """The job of a ``GET /v1/jobs/{id}`` answer."""
    result = body.get("result") or {}
    raw = result.get("outputs")
    return Job(
        id=str(body["id"]),
        status=JobStatus(body["status"]),
        model=str(body["model"]),
        model_version=body.get("model_version"),
        inputs_count=int(body.get("inputs_count", 0)),
        created_at=_when(body["created_at"]),
        started_at=_optional_when(body.get("started_at")),
        finished_at=_optional_when(body.get("finished_at")),
        error=body.get("error"),
        outputs=None if raw is None else vectors(raw, use_numpy=use_numpy),
    )


def vectors(raw: Sequence[Sequence[float] | str], *, use_numpy: bool | None) -> tuple[Vector, ...]:
    """Each output as a float32 array (numpy wanted and present) or a list of floats; an
    output is numbers, or the base64 of its float32 values (little-endian)."""
    np = numpy_module() if use_numpy is not False else None
    if use_numpy and np is None:
        raise RuntimeError("use_numpy=True, but numpy cannot be imported")
    if np is None:
        return tuple(
            _floats(base64.b64decode(vector))
            if isinstance(vector, str)
            else [float(x) for x in vector]
            for vector in raw
        )
    return tuple(
        np.frombuffer(base64.b64decode(vector), dtype="<f4").astype(np.float32)  # a copy
        if isinstance(vector, str)
        else np.asarray(vector, dtype=np.float32)
        for vector in raw
    )


def _floats(packed: bytes) -> list[float]:
    # shared.vectors.unpack does this too, but the client imports none of the services' code
    # (conveyor/client/__init__.py: httpx and standardwebhooks only).
    values = array.array("f")
    values.frombytes(packed)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


@functools.cache
def numpy_module() -> ModuleType | None:
    """numpy, imported on first use; None where it is not installed."""
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


def _when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def _optional_when(text: str | None) -> datetime.datetime | None:
    return None if text is None else _when(text)
