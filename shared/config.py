"""Configuration: environment variables only, validated at start-up.

Each service has a settings class over :class:`CommonSettings`. A common variable such as
``DATABASE_URL`` may be given once for every service, or per service behind the service's
prefix (``INGEST_DATABASE_URL``), which wins. Variables that only one service has are read
with that service's prefix alone (``INFER_MODEL``, ``INGEST_HTTP_PORT``). This is how each
service gets its own AWS key pair in the emulator (``INGEST_AWS_ACCESS_KEY_ID`` ...) while
sharing the endpoint and region.

:func:`load_settings` turns a validation failure into a :class:`~shared.errors.ConfigError`
that names each variable, what was expected and (for non-secrets) what was given.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.errors import ConfigError, TopologyError
from shared.topology import DEFAULT_MODEL, Topology

__all__ = [
    "AdminSettings",
    "AwsSettings",
    "CommonSettings",
    "InferSettings",
    "IngestSettings",
    "NotifySettings",
    "ObserverSettings",
    "PersistSettings",
    "load_settings",
]

S = TypeVar("S", bound="CommonSettings")


def _check_database_url(value: SecretStr) -> SecretStr:
    url = urllib.parse.urlsplit(value.get_secret_value())
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError("the scheme must be postgresql://")
    query = urllib.parse.parse_qs(url.query)
    if not url.hostname and not query.get("host"):
        raise ValueError("the URL needs a host, or a ?host=/socket/dir query for a Unix socket")
    return value


DatabaseUrl = Annotated[SecretStr, AfterValidator(_check_database_url)]


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# A list in one environment variable: "a, b,c". NoDecode stops pydantic-settings from
# reading it as JSON first.
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_separated)]
CommaFloats = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_comma_separated)]


class _CommonEnv(EnvSettingsSource):
    """Unprefixed environment variables, for the fields every service shares."""

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__call__().items() if k in _COMMON_FIELDS}


class CommonSettings(BaseSettings):
    """What every service and tool needs: AWS access, the topology, logging."""

    service: ClassVar[str] = ""
    retired: ClassVar[Mapping[str, str]] = {}
    """Fields no longer read -> the field that replaced them. A variable still set for one
    stops the start: ignoring it would quietly change what the operator asked for."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False)

    aws_endpoint_url: HttpUrl | None = Field(
        default=None,
        description="an http(s) URL of an AWS-compatible endpoint; unset means real AWS",
    )
    aws_region: str = Field(
        default="us-east-1",
        pattern=r"^[a-z]{2}(-[a-z]+)+-\d$",
        description="an AWS region name such as us-east-1",
    )
    aws_access_key_id: str | None = Field(
        default=None,
        description="an access key id (with its secret); unset means the default AWS chain",
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="the secret of the access key id"
    )
    conveyor_prefix: str = Field(
        default="conveyor",
        description="the resource name prefix of this stack: 2-24 of a-z, 0-9 and '-'",
    )
    conveyor_models: CommaList = Field(
        default=(DEFAULT_MODEL,),
        description="a comma-separated list of the model names this stack serves",
    )
    conveyor_max_receive_count: int = Field(
        default=5, ge=1, le=1000, description="deliveries before a message moves to its DLQ"
    )
    conveyor_notify_max_receive_count: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="deliveries of a notification before its DLQ (covers the retry schedule)",
    )
    sqs_wait_s: int = Field(
        default=5,
        ge=0,
        le=20,
        description="SQS long-poll seconds (0-20); shutdown waits for at most one poll",
    )
    shutdown_grace_s: float = Field(
        default=20.0, gt=0, description="seconds in-flight work may take to finish on SIGTERM"
    )
    claim_check_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=1024 * 1024 - 16 * 1024,
        description="payloads larger than this many bytes travel through the payloads bucket",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics on this port (unset: off)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="the address metrics bind")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="one of debug, info, warning, error"
    )
    log_format: Literal["console", "json"] = Field(
        default="console", description="console (people) or json (log collectors)"
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="the event loop: uvloop where installed (auto), or the standard asyncio one",
    )
    log_summary_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="seconds between activity summary lines (logged only when work was done)",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired(cls, data: Any) -> Any:
        set_names = {name.upper() for name in os.environ}
        for old, new in cls.retired.items():
            if (name := cls.env_names(old)) in set_names:
                info = cls.model_fields[new]
                raise ValueError(
                    f"{name} is no longer read: unset it and use {cls.env_names(new)} "
                    f"({info.description})"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> CommonSettings:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be given together")
        try:
            self.topology()
        except TopologyError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def topology(self) -> Topology:
        return Topology(
            prefix=self.conveyor_prefix,
            models=self.conveyor_models,
            max_receive_count=self.conveyor_max_receive_count,
            notify_max_receive_count=self.conveyor_notify_max_receive_count,
        )

    def aws(self) -> AwsSettings:
        secret = self.aws_secret_access_key
        return AwsSettings(
            endpoint_url=str(self.aws_endpoint_url).rstrip("/") if self.aws_endpoint_url else None,
            region=self.aws_region,
            access_key_id=self.aws_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        if cls.service:
            sources.append(EnvSettingsSource(settings_cls, env_prefix=f"{cls.service}_"))
        sources.append(_CommonEnv(settings_cls))
        return tuple(sources)

    @classmethod
    def env_variables(cls) -> dict[str, str]:
        """Every environment variable this class reads, with the field each one sets."""
        names: dict[str, str] = {}
        for field, info in cls.model_fields.items():
            if isinstance(info.validation_alias, str):  # read by that one name only
                names[info.validation_alias.upper()] = field
                continue
            if field in _COMMON_FIELDS or not cls.service:
                names[field.upper()] = field
            if cls.service:
                names[f"{cls.service}_{field}".upper()] = field
        return names

    @classmethod
    def env_names(cls, field: str) -> str:
        """How a field is spelled in the environment, for error messages."""
        alias = cls.model_fields[field].validation_alias if field in cls.model_fields else None
        if isinstance(alias, str):
            return alias.upper()
        prefixed = f"{cls.service}_{field}".upper() if cls.service else ""
        if field in _COMMON_FIELDS:
            return f"{prefixed} or {field.upper()}" if prefixed else field.upper()
        return prefixed or field.upper()


class _InputLimits(CommonSettings):
    """The limits on one job's inputs. ingest refuses a bigger submission (422); infer fails
    a bigger job taken from its queue, which producers other than ingest can reach. Declared
    once so the two cannot drift: ``MAX_INPUTS`` sets both services, ``INGEST_MAX_INPUTS`` or
    ``INFER_MAX_INPUTS`` one of them."""

    max_inputs: int = Field(default=256, ge=1, description="the most inputs one job may carry")
    max_input_chars: int = Field(
        default=20_000, ge=1, description="the most characters one input may have"
    )


_COMMON_FIELDS = frozenset(_InputLimits.model_fields) | {"database_url"}


class AwsSettings:
    """The resolved AWS connection values (plain data, handed to the client factory)."""

    __slots__ = ("access_key_id", "endpoint_url", "region", "secret_access_key")

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        region: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key

    @property
    def where(self) -> str:
        """Where calls go, for error messages: the endpoint, or AWS itself."""
        return self.endpoint_url or f"AWS ({self.region})"

    def __repr__(self) -> str:  # never print the secret
        return f"AwsSettings(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


_DB_DESCRIPTION = (
    "a PostgreSQL URL such as postgresql://user:password@host:5432/conveyor "
    "(or postgresql://user@/db?host=/socket/dir)"
)


class IngestSettings(_InputLimits):
    service: ClassVar[str] = "ingest"
    retired: ClassVar[Mapping[str, str]] = {"allow_private_callbacks": "allow_loopback_callbacks"}

    database_url: DatabaseUrl = Field(description=_DB_DESCRIPTION)
    http_host: str = Field(default="127.0.0.1", description="the address the HTTP API binds")
    http_port: int = Field(default=8000, ge=0, le=65535, description="a TCP port, 0-65535")
    public_url: HttpUrl | None = Field(
        default=None,
        description="the API's external base URL, for status links (default: from the request)",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="the largest request body accepted, in bytes"
    )
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="how long an idle client connection is kept open, in seconds: longer than "
        "any client or load balancer in front keeps one (AWS ALB: 60 s; httpx: 5 s)",
    )
    max_wait_s: float = Field(
        default=30.0, ge=0, le=120, description="the longest ?wait= a status read may hold"
    )
    allow_loopback_callbacks: bool = Field(
        default=False,
        description=(
            "accept callback URLs on loopback (127.0.0.0/8, ::1, localhost) and nothing else "
            "non-public (development and tests only)"
        ),
    )
    cors_origins: CommaList = Field(
        default=(), description="comma-separated origins allowed by CORS (default: none)"
    )
    outbox_poll_s: float = Field(
        default=0.2,
        gt=0,
        le=5,
        description="how often the outbox relay looks for unsent jobs, in seconds",
    )
    outbox_retention_s: float = Field(
        default=3600.0, ge=0, description="how long sent outbox rows are kept, in seconds"
    )
    max_backlog: int = Field(
        default=10_000,
        ge=1,
        description="jobs waiting for a model (queue + unsent outbox) above which POST is a 429",
    )
    backlog_cache_s: float = Field(
        default=2.0, ge=0, le=60, description="how long a model's backlog figure is reused, in s"
    )
    idempotency_ttl_s: float = Field(
        default=86_400.0,
        ge=86_400.0,
        description="how long Idempotency-Key answers are kept, in seconds (at least 86400)",
    )

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        origins = tuple(origin.rstrip("/") for origin in origins)
        for origin in origins:
            url = urllib.parse.urlsplit(origin)
            if (
                url.scheme not in ("http", "https")
                or not url.hostname
                or url.path
                or url.query
                or "*" in origin
            ):
                raise ValueError(
                    f"{origin!r} is not an origin: expected scheme://host[:port], no wildcard"
                )
        return origins


class InferSettings(_InputLimits):
    service: ClassVar[str] = "infer"

    model: str | None = Field(
        default=None,
        description="the model this worker serves, one of CONVEYOR_MODELS (default: the first)",
    )

    model_version: str | None = Field(
        default=None, description="the model version to serve (default: the latest pushed)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto (CUDA when present, else CPU), cpu or cuda"
    )
    max_batch_items: int = Field(
        default=32, ge=1, le=4096, description="the most inputs in one model call"
    )
    max_batch_tokens: int = Field(
        default=8192, ge=1, description="the most tokens (padded length x items) in one call"
    )
    max_batch_wait_s: float = Field(
        default=0.02, ge=0, le=5, description="how long the first input of a batch may wait"
    )
    concurrency: int = Field(
        default=64, ge=1, le=1000, description="jobs (SQS messages) held in flight at once"
    )
    started_after_s: float = Field(
        default=0.5,
        ge=0,
        le=3600,
        description="a job still running after this long is announced as running (0: every "
        "job at once, one more message per job); a quicker job goes from queued to final",
    )
    handler_modules: CommaList = Field(
        default=(),
        description="comma-separated Python modules that register extra model handlers",
    )
    cache_dir: str | None = Field(
        default=None, description="where pulled model artifacts are cached (default: a temp dir)"
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="torch's threads on the CPU (default: the CPUs this process may use, "
        "from its affinity and its cgroup CPU quota)",
    )
    shared_job_cost: float = Field(
        default=0,
        ge=0,
        le=1000,
        description="where infer shares its CPUs with the other services and the emulator "
        "(make dev): their CPU per job, in texts of model work; each batch then gives torch "
        "the model's share of its threads, rounded up. 0: infer has its CPUs to itself",
    )
    compile: bool = Field(
        default=False,
        description="compile the model with torch.compile before the first job (slower "
        "start; faster calls where Python overhead shows, such as small batches on a GPU)",
    )

    @model_validator(mode="after")
    def _check_model(self) -> InferSettings:
        if self.model is not None and self.model not in self.conveyor_models:
            raise ValueError(
                f"INFER_MODEL={self.model!r} is not one of the models this stack serves "
                f"(CONVEYOR_MODELS={','.join(self.conveyor_models)})"
            )
        return self

    @property
    def served_model(self) -> str:
        return self.model or self.conveyor_models[0]


class PersistSettings(CommonSettings):
    service: ClassVar[str] = "persist"

    database_url: DatabaseUrl = Field(description=_DB_DESCRIPTION)
    concurrency: int = Field(default=32, ge=1, le=1000, description="messages held in flight")
    max_batch_wait_s: float = Field(
        default=0.01, ge=0, le=5, description="how long a write waits to share a transaction"
    )


class NotifySettings(CommonSettings):
    service: ClassVar[str] = "notify"
    retired: ClassVar[Mapping[str, str]] = {"allow_private_callbacks": "allow_loopback_callbacks"}

    database_url: DatabaseUrl = Field(description=_DB_DESCRIPTION)
    webhook_secret: SecretStr = Field(
        description="the signing secret: whsec_ followed by base64 of 24-64 random bytes"
    )
    retry_schedule_s: CommaFloats = Field(
        default=(5, 300, 1800, 7200, 18000, 36000, 36000),
        description="comma-separated seconds before each retry; after the last, give up",
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="seconds one webhook request may take"
    )
    concurrency: int = Field(default=32, ge=1, le=1000, description="deliveries in flight")
    allow_loopback_callbacks: bool = Field(
        default=False,
        description=(
            "deliver to loopback addresses (127.0.0.0/8, ::1) too, and to no other non-public "
            "address (development and tests only)"
        ),
    )

    @model_validator(mode="after")
    def _schedule_fits_redrive(self) -> NotifySettings:
        attempts = len(self.retry_schedule_s) + 1
        if attempts > self.conveyor_notify_max_receive_count:
            raise ValueError(
                f"NOTIFY_RETRY_SCHEDULE_S makes {attempts} attempts, more than "
                f"CONVEYOR_NOTIFY_MAX_RECEIVE_COUNT={self.conveyor_notify_max_receive_count} "
                "deliveries before the notify queue's DLQ: raise the count or shorten the schedule"
            )
        return self

    @field_validator("webhook_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        import base64
        import binascii

        raw = value.get_secret_value()
        if not raw.startswith("whsec_"):
            raise ValueError("the secret must start with whsec_")
        try:
            key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("after whsec_ the secret must be base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("the secret must encode 24 to 64 random bytes")
        return value


def _login_url(service: str) -> Any:
    return Field(
        default=None,
        validation_alias=f"{service}_database_url",
        description=(
            f"the {service} identity's own database URL; `conveyor provision` and `conveyor "
            f"migrate` make its user a login of the conveyor_{service} role with its password"
        ),
    )


class ObserverSettings(CommonSettings):
    """Read-only operators' views (``conveyor top``): ``OBSERVER_`` prefix.

    Its AWS identity may read queue depths only (``Topology.observer_statements``); its
    database login only states, models, timestamps and delivery outcomes (migration 0010).
    """

    service: ClassVar[str] = "observer"

    database_url: DatabaseUrl | None = Field(default=None, description=_DB_DESCRIPTION)


class AdminSettings(CommonSettings):
    """The operator's tools (``conveyor provision``, ``conveyor dlq``): ``ADMIN_`` prefix.

    ``database_url`` is the operator's own (the owner of the schema, who migrates). The
    services' URLs are read under the names the services read them by (``INGEST_DATABASE_URL``
    ...): provisioning makes each one's user a login role of that service's group.
    """

    service: ClassVar[str] = "admin"

    database_url: DatabaseUrl | None = Field(default=None, description=_DB_DESCRIPTION)
    ingest_database_url: DatabaseUrl | None = _login_url("ingest")
    persist_database_url: DatabaseUrl | None = _login_url("persist")
    notify_database_url: DatabaseUrl | None = _login_url("notify")
    observer_database_url: DatabaseUrl | None = _login_url("observer")

    def service_database_urls(self) -> dict[str, SecretStr]:
        """The services' (and the observer's) URLs given to this tool: identity -> URL."""
        given = {
            "ingest": self.ingest_database_url,
            "persist": self.persist_database_url,
            "notify": self.notify_database_url,
            "observer": self.observer_database_url,
        }
        return {service: url for service, url in given.items() if url is not None}


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment, or raise a ConfigError that says what to fix."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc)) from None


def _describe(cls: type[CommonSettings], exc: ValidationError) -> str:
    lines = [f"invalid configuration for {cls.service or 'conveyor'}:"]
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        info = cls.model_fields.get(field)
        if info is None:  # a whole-model check: its message already names the variables
            lines.append(f"  - {error['msg'].removeprefix('Value error, ')}")
            continue
        names = cls.env_names(field)
        expected = info.description or ""
        if error["type"] == "missing":
            lines.append(f"  - {names} is not set: expected {expected}")
            continue
        secret = info.annotation is not None and "SecretStr" in str(info.annotation)
        given = "" if secret else f" (got {error['input']!r})"
        reason = error["msg"].removeprefix("Value error, ")
        lines.append(f"  - {names}: {reason}{given}; expected {expected}")
    return "\n".join(lines)
