"""What ``make dev`` gives each service from the user's environment, and the stack file the
``conveyor`` command finds."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from emulator.passthrough import pass_through
from emulator.stackfile import (
    STACK_ENV_VAR,
    find_stack_env,
    publish,
    read_env_file,
    unpublish,
    write_env_file,
)
from shared.errors import ConfigError

USER = {
    "INFER_MAX_BATCH_WAIT_S": "0.05",
    "LOG_FORMAT": "json",
    "SQS_WAIT_S": "2",
    "OMP_NUM_THREADS": "1",
    "INGEST_MAX_INPUTS": "10",
    "NOTIFY_RETRY_SCHEDULE_S": "1,2",
    "AWS_ACCESS_KEY_ID": "AKIAREALUSERKEY",
    "AWS_SECRET_ACCESS_KEY": "real-secret",
    "DATABASE_URL": "postgresql://prod.example/conveyor",
    "INGEST_HTTP_PORT": "9999",
    "CONVEYOR_MODELS": "all-minilm-l6-v2",
    "HOME": "/home/someone",
    "GITHUB_TOKEN": "ghp_unrelated",
}
IMPOSED = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
    "AWS_REGION": "us-east-1",
    "DATABASE_URL": "postgresql://svc@/conveyor?host=/tmp/x",
    "CONVEYOR_MODELS": "all-minilm-l6-v2",
    "INGEST_AWS_ACCESS_KEY_ID": "AKIASTACK",
    "INGEST_AWS_SECRET_ACCESS_KEY": "stack-secret",
    "INGEST_HTTP_PORT": "8000",
}


def test_each_service_gets_its_own_settings_and_the_common_ones() -> None:
    infer = pass_through("infer", USER, {})
    assert infer.env == {
        "INFER_MAX_BATCH_WAIT_S": "0.05",
        "LOG_FORMAT": "json",
        "SQS_WAIT_S": "2",
        "OMP_NUM_THREADS": "1",
        "AWS_ACCESS_KEY_ID": "AKIAREALUSERKEY",
        "AWS_SECRET_ACCESS_KEY": "real-secret",
        "CONVEYOR_MODELS": "all-minilm-l6-v2",
    }
    notify = pass_through("notify", USER, {})
    assert "NOTIFY_RETRY_SCHEDULE_S" in notify.env
    assert "INGEST_MAX_INPUTS" not in notify.env  # another service's
    assert "INFER_MAX_BATCH_WAIT_S" not in notify.env
    assert "GITHUB_TOKEN" not in notify.env  # not a setting of any service
    assert "HOME" not in notify.env


def test_the_stacks_own_values_are_imposed_and_overrides_reported() -> None:
    ingest = pass_through("ingest", USER, IMPOSED)
    assert ingest.env == {
        "INGEST_MAX_INPUTS": "10",
        "LOG_FORMAT": "json",
        "SQS_WAIT_S": "2",
        "OMP_NUM_THREADS": "1",
    }
    # The user's AWS key, database and port would change what the stack sets: named, left out.
    # The same CONVEYOR_MODELS as the stack's is no conflict.
    assert ingest.ignored == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "DATABASE_URL",
        "INGEST_HTTP_PORT",
    }


def test_a_renamed_setting_reaches_the_service_so_it_can_say_what_replaced_it() -> None:
    old = {"INGEST_ALLOW_PRIVATE_CALLBACKS": "true"}
    assert pass_through("ingest", old, IMPOSED).env == old


def test_env_file_round_trip_is_private_and_quoted(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    values = {"A": "plain", "B": "with space and 'quote'", "C": "postgresql://u@/db?host=/t"}
    write_env_file(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path) == values
    # And a shell reads it the same way.
    shell = subprocess.run(
        ["sh", "-c", f'. "{path}"; printf "%s|%s|%s" "$A" "$B" "$C"'],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert shell.stdout == "|".join(values.values())


def test_the_running_stack_is_found_and_forgotten(tmp_path: Path) -> None:
    environ = {"XDG_RUNTIME_DIR": str(tmp_path / "run")}
    env_file = tmp_path / "stack.env"
    write_env_file(env_file, {"CONVEYOR_API_URL": "http://127.0.0.1:8123"})
    assert find_stack_env(environ) is None
    pointer = publish(env_file, api_url="http://127.0.0.1:8123", environ=environ)
    assert stat.S_IMODE(pointer.stat().st_mode) == 0o600
    assert find_stack_env(environ) == env_file
    assert find_stack_env({**environ, STACK_ENV_VAR: "none"}) is None
    unpublish(env_file, environ)
    assert not pointer.exists()
    assert find_stack_env(environ) is None


def test_a_stack_that_died_without_cleaning_up_is_not_used(tmp_path: Path) -> None:
    environ = {"XDG_RUNTIME_DIR": str(tmp_path)}
    env_file = tmp_path / "stack.env"
    write_env_file(env_file, {"X": "1"})
    pointer = publish(env_file, api_url="http://127.0.0.1:1", environ=environ)
    assert find_stack_env(environ) == env_file
    gone = subprocess.Popen(["true"])  # a pid that no longer runs
    gone.wait(timeout=10)
    pointer.write_text(f'{{"env_file": "{env_file}", "pid": {gone.pid}}}')
    assert find_stack_env(environ) is None


def test_an_explicit_stack_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        find_stack_env({STACK_ENV_VAR: str(tmp_path / "missing.env")})
    path = tmp_path / "mine.env"
    write_env_file(path, {})
    assert find_stack_env({STACK_ENV_VAR: str(path), "XDG_RUNTIME_DIR": os.devnull}) == path
