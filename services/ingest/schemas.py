"""The bodies of ``POST /v1/jobs``: the job submitted, and the answer that it was accepted
(or, when the submission waits for its job, the job itself).

A submission's models and limits come from the settings, so the model that validates it is
made per app, inside the dependency :func:`submission_body`; the route reads it as a
:class:`Submission`.
"""

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    UrlConstraints,
    field_validator,
)
from pydantic import StringConstraints as Chars
from pydantic_core import PydanticCustomError

from services.ingest.jobs import JobView
from shared.config import IngestSettings
from shared.messages import JobStatus
from shared.netguard import check_url

__all__ = [
    "MAX_CALLBACK_URL_CHARS",
    "JobAccepted",
    "JobSettled",
    "Submission",
    "submission_body",
]

MAX_CALLBACK_URL_CHARS: Final = 2048


class Submission(BaseModel):
    """What a job submission holds, whatever the settings (the type the route reads)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    inputs: list[str]
    callback_url: AnyUrl | None = None


class JobAccepted(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    status: JobStatus = JobStatus.QUEUED
    status_url: str = Field(description="where to read the job's status (absolute)")


class JobSettled(JobView):
    """The answer to a submission that waited (``POST /v1/jobs?wait=N``): the job as
    ``GET /v1/jobs/{job_id}`` reads it, and where to read it again."""

    status_url: str = Field(description="where to read the job's status (absolute)")


def submission_body(settings: IngestSettings) -> Callable[..., Awaitable[Submission]]:
    """The dependency that reads the body of ``POST /v1/jobs``, held to the models and the
    limits of ``settings``. Its one parameter is the body, so FastAPI validates and documents
    it as if the route declared it."""
    served = tuple(settings.conveyor_models)

    class JobSubmission(Submission):  # its name and docstring are its OpenAPI schema's
        """A job: texts to run through one of the served models."""

        model: str = Field(
            description="one of the served models", json_schema_extra={"enum": list(served)}
        )
        inputs: list[
            Annotated[
                str,
                Chars(min_length=1, max_length=settings.max_input_chars),
                AfterValidator(_not_blank),
            ]
        ] = Field(min_length=1, max_length=settings.max_inputs)
        callback_url: (
            Annotated[
                AnyUrl,
                UrlConstraints(
                    max_length=MAX_CALLBACK_URL_CHARS,
                    allowed_schemes=["http", "https"],
                    host_required=True,
                ),
            ]
            | None
        ) = Field(default=None, description="an absolute http(s) URL told when the job ends")

        @field_validator("callback_url")
        @classmethod
        def _deliverable(cls, url: AnyUrl | None) -> AnyUrl | None:
            # The static half of the SSRF guard, so an obviously bad callback is a 422 now
            # rather than a failed delivery later; notify resolves and checks again.
            if url is not None:
                reason = check_url(str(url), allow_loopback=settings.allow_loopback_callbacks)
                if reason is not None:
                    raise PydanticCustomError(
                        "callback_refused", "callback_url is refused: {reason}", {"reason": reason}
                    )
            return url

        @field_validator("model")
        @classmethod
        def _served(cls, model: str) -> str:
            if model not in served:
                raise PydanticCustomError(
                    "unknown_model",
                    "model '{model}' is not served here; choose one of: {served}",
                    {"model": model, "served": ", ".join(served)},
                )
            return model

    async def body(body: JobSubmission) -> Submission:
        return body

    return body


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank_input", "an input must not be blank")
    return text
