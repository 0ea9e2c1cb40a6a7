"""The running dev stack's environment file, and how the ``conveyor`` command finds it.

``make dev`` writes everything a command needs to talk to its stack (endpoint, region, the
admin and per-service keys, database URLs, the webhook secret, the API URL and key) to
``stack.env`` (mode 0600) inside the stack's temporary directory, and records where it is in a
small pointer file of the user's own (``$XDG_RUNTIME_DIR/conveyor/dev-stack.json``, else
``~/.cache/conveyor/``) together with its process id. Both go when the stack stops.

A command finds the stack through ``CONVEYOR_STACK_ENV``: unset, the pointer (if that process
still runs); a path, that file; ``none``, no stack at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from shared.errors import ConfigError

__all__ = [
    "ENV_FILE_NAME",
    "STACK_ENV_VAR",
    "find_stack_env",
    "pointer_path",
    "publish",
    "read_env_file",
    "unpublish",
    "write_env_file",
]

ENV_FILE_NAME = "stack.env"
STACK_ENV_VAR = "CONVEYOR_STACK_ENV"


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """``export NAME=value`` lines a shell can source; readable by its owner only (keys)."""
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a file :func:`write_env_file` wrote (``export`` optional)."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        if not words:
            continue
        name, sep, value = words[0].partition("=")
        if not sep or len(words) != 1 or not name.isidentifier():
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        env[name] = value
    return env


def pointer_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    runtime = environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(environ.get("HOME") or Path.home()) / ".cache"
    return base / "conveyor" / "dev-stack.json"


def publish(env_file: Path, *, api_url: str, environ: Mapping[str, str] | None = None) -> Path:
    """Record ``env_file`` as the running dev stack's (the last one started wins)."""
    pointer = pointer_path(environ)
    pointer.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {"env_file": str(env_file), "pid": os.getpid(), "api_url": api_url}
    temporary = pointer.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    temporary.replace(pointer)  # atomic: a reader sees the old record or the new one
    return pointer


def unpublish(env_file: Path, environ: Mapping[str, str] | None = None) -> None:
    """Remove the pointer if it still names ``env_file`` (a later stack may have replaced it)."""
    pointer = pointer_path(environ)
    record = _read_pointer(pointer)
    if record is not None and record.get("env_file") == str(env_file):
        with contextlib.suppress(FileNotFoundError):
            pointer.unlink()


def find_stack_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """The environment file of the stack commands should use, or None."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(STACK_ENV_VAR, "").strip()
    if chosen.lower() == "none":
        return None
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"{STACK_ENV_VAR}={chosen}: no such file")
        return path
    record = _read_pointer(pointer_path(environ))
    if record is None:
        return None
    path = Path(str(record.get("env_file", "")))
    pid = record.get("pid")
    if not isinstance(pid, int) or not _alive(pid) or not path.is_file():
        return None  # a stack that was killed before it could clean up
    if path.stat().st_uid != os.getuid():
        return None  # never take keys from a file another user could have written
    return path


def _read_pointer(pointer: Path) -> dict[str, object] | None:
    try:
        record = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
