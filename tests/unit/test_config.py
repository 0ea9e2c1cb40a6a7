import pytest

from shared.config import (
    AdminSettings,
    CommonSettings,
    InferSettings,
    IngestSettings,
    NotifySettings,
    PersistSettings,
    load_settings,
)
from shared.errors import ConfigError

DB = "postgresql://conveyor:hunter2-secret@db.internal:5432/conveyor"
WHSEC = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


def test_minimal_environment_gives_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    settings = load_settings(IngestSettings)
    assert settings.aws_region == "us-east-1"
    assert settings.http_port == 8000
    assert settings.topology().prefix == "conveyor"
    assert settings.aws().endpoint_url is None


def test_service_prefix_overrides_common_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIACOMMON")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "common-secret")
    clean_env.setenv("PERSIST_AWS_ACCESS_KEY_ID", "AKIAPERSIST")
    clean_env.setenv("PERSIST_AWS_SECRET_ACCESS_KEY", "persist-secret")
    clean_env.setenv("NOTIFY_WEBHOOK_SECRET", WHSEC)
    assert load_settings(PersistSettings).aws().access_key_id == "AKIAPERSIST"
    assert load_settings(NotifySettings).aws().access_key_id == "AKIACOMMON"


def test_service_only_variables_need_their_prefix(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MODEL", "other")  # a stray unprefixed name must not configure infer
    clean_env.setenv("CONVEYOR_MODELS", "first, second")
    assert load_settings(InferSettings).served_model == "first"
    clean_env.setenv("INFER_MODEL", "second")
    assert load_settings(InferSettings).served_model == "second"


def test_missing_variable_names_it(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(IngestSettings)
    message = str(info.value)
    assert "INGEST_DATABASE_URL or DATABASE_URL is not set" in message
    assert "postgresql://" in message


def test_malformed_urls_name_the_variable_and_hide_secrets(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("DATABASE_URL", "mysql://root:hunter2-secret@db/x")
    clean_env.setenv("AWS_ENDPOINT_URL", "not a url")
    with pytest.raises(ConfigError) as info:
        load_settings(NotifySettings)
    message = str(info.value)
    assert "NOTIFY_DATABASE_URL or DATABASE_URL: the scheme must be postgresql://" in message
    assert "NOTIFY_AWS_ENDPOINT_URL or AWS_ENDPOINT_URL" in message
    assert "'not a url'" in message  # not secret: shown to help
    assert "hunter2" not in message  # secret: never shown


def test_unknown_model_name_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INFER_MODEL", "gpt-17")
    with pytest.raises(ConfigError, match=r"INFER_MODEL='gpt-17' is not one of the models"):
        load_settings(InferSettings)
    clean_env.setenv("CONVEYOR_MODELS", "Not_Valid")
    with pytest.raises(ConfigError, match="model name 'Not_Valid' is invalid"):
        load_settings(AdminSettings)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("INGEST_HTTP_PORT", "99999", "INGEST_HTTP_PORT"),
        ("AWS_REGION", "mars", "AWS_REGION"),
        ("CONVEYOR_PREFIX", "UPPER", "prefix 'UPPER' is invalid"),
        ("CONVEYOR_MAX_RECEIVE_COUNT", "0", "CONVEYOR_MAX_RECEIVE_COUNT"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
    ],
)
def test_bad_values_say_which_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=expected):
        load_settings(IngestSettings)


def test_credentials_come_in_pairs(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAONLY")
    with pytest.raises(ConfigError, match="must be given together"):
        load_settings(AdminSettings)


def test_unix_socket_database_url_is_accepted(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "postgresql://postgres:@/conveyor?host=/tmp/pg")
    assert load_settings(PersistSettings).database_url.get_secret_value().endswith("/tmp/pg")


def test_secrets_are_not_in_repr(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAX")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    settings = load_settings(IngestSettings)
    assert "hunter2" not in repr(settings)
    assert "very-secret-value" not in repr(settings)
    assert "very-secret-value" not in repr(settings.aws())


def test_common_settings_has_no_service_prefix() -> None:
    assert CommonSettings.env_names("aws_region") == "AWS_REGION"
    assert IngestSettings.env_names("http_port") == "INGEST_HTTP_PORT"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("plain-secret", "must start with whsec_"),
        ("whsec_%%%", "must be base64"),
        ("whsec_c2hvcnQ=", "24 to 64 random bytes"),
    ],
)
def test_webhook_secret_is_checked_and_never_echoed(
    clean_env: pytest.MonkeyPatch, secret: str, reason: str
) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("NOTIFY_WEBHOOK_SECRET", secret)
    with pytest.raises(ConfigError, match=reason) as info:
        load_settings(NotifySettings)
    assert secret not in str(info.value)


def test_retry_schedule_is_a_comma_separated_list(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("NOTIFY_WEBHOOK_SECRET", WHSEC)
    clean_env.setenv("NOTIFY_RETRY_SCHEDULE_S", "0.5, 1,2")
    assert load_settings(NotifySettings).retry_schedule_s == (0.5, 1.0, 2.0)


@pytest.mark.parametrize(
    "origin", ["*", "https://*.example.com", "example.com", "https://a.b/path"]
)
def test_cors_origins_must_be_exact_origins(clean_env: pytest.MonkeyPatch, origin: str) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("INGEST_CORS_ORIGINS", f"https://ok.example, {origin}")
    with pytest.raises(ConfigError, match=r"INGEST_CORS_ORIGINS: .* is not an origin"):
        load_settings(IngestSettings)


def test_cors_origins_list(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("INGEST_CORS_ORIGINS", "https://a.example/, http://127.0.0.1:3000")
    assert load_settings(IngestSettings).cors_origins == (
        "https://a.example",
        "http://127.0.0.1:3000",
    )


@pytest.mark.parametrize(
    ("cls", "old", "new"),
    [
        (IngestSettings, "INGEST_ALLOW_PRIVATE_CALLBACKS", "INGEST_ALLOW_LOOPBACK_CALLBACKS"),
        (NotifySettings, "NOTIFY_ALLOW_PRIVATE_CALLBACKS", "NOTIFY_ALLOW_LOOPBACK_CALLBACKS"),
    ],
)
@pytest.mark.parametrize("value", ["true", "false"])
def test_the_retired_allow_private_variable_stops_the_start(
    clean_env: pytest.MonkeyPatch,
    cls: type[IngestSettings] | type[NotifySettings],
    old: str,
    new: str,
    value: str,
) -> None:
    """It allowed every address; its replacement allows loopback only. Ignoring it would
    quietly change what the operator asked for, so the start fails naming the new one."""
    clean_env.setenv("DATABASE_URL", DB)
    clean_env.setenv("NOTIFY_WEBHOOK_SECRET", WHSEC)
    clean_env.setenv(old, value)
    with pytest.raises(ConfigError) as info:
        load_settings(cls)
    assert f"{old} is no longer read" in str(info.value)
    assert f"use {new}" in str(info.value)
    clean_env.delenv(old)
    clean_env.setenv(new, "true")
    assert load_settings(cls).allow_loopback_callbacks is True


def test_input_limits_are_one_setting_for_ingest_and_infer(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("DATABASE_URL", DB)
    defaults = load_settings(IngestSettings), load_settings(InferSettings)
    assert [(s.max_inputs, s.max_input_chars) for s in defaults] == [(256, 20_000)] * 2
    clean_env.setenv("MAX_INPUTS", "8")
    clean_env.setenv("MAX_INPUT_CHARS", "100")
    both = load_settings(IngestSettings), load_settings(InferSettings)
    assert [(s.max_inputs, s.max_input_chars) for s in both] == [(8, 100)] * 2
    clean_env.setenv("INGEST_MAX_INPUTS", "4")  # the documented per-service names still win
    clean_env.setenv("INFER_MAX_INPUT_CHARS", "50")
    assert load_settings(IngestSettings).max_inputs == 4
    assert load_settings(InferSettings).max_inputs == 8
    assert load_settings(InferSettings).max_input_chars == 50
    assert load_settings(IngestSettings).max_input_chars == 100
    clean_env.setenv("INFER_MAX_INPUTS", "0")
    with pytest.raises(ConfigError, match="INFER_MAX_INPUTS or MAX_INPUTS"):
        load_settings(InferSettings)
