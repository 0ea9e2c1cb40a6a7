"""Which of the user's environment variables reach a service under ``make dev``.

A service gets the variables its settings class reads (``LOG_FORMAT``, ``SQS_WAIT_S``,
``INFER_MAX_BATCH_WAIT_S``...: whatever the README documents), plus the runtime knobs that are
not settings (``OMP_NUM_THREADS``, ``PYTHONPATH`` for a handler module of one's own...), and
nothing else: no service sees another's variables. The stack's own values (endpoint, keys,
database URLs, ports) are imposed: a user variable that would change one of them is left out
and named in :attr:`PassThrough.ignored`, so the user is told rather than surprised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config import (
    CommonSettings,
    InferSettings,
    IngestSettings,
    NotifySettings,
    PersistSettings,
)

__all__ = ["RUNTIME_PREFIXES", "SETTINGS", "PassThrough", "pass_through"]

SETTINGS: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "infer": InferSettings,
    "persist": PersistSettings,
    "notify": NotifySettings,
}

RUNTIME_PREFIXES = ("OMP_", "MKL_", "TORCH_", "CUDA_", "OTEL_", "PYTHON")
"""Variables read by torch, OpenTelemetry or Python rather than by the settings classes."""


@dataclass
class PassThrough:
    env: dict[str, str] = field(default_factory=dict)
    """What the service gets from the user's environment."""
    ignored: set[str] = field(default_factory=set)
    """User variables left out because the stack sets that value itself (names only)."""


def pass_through(
    service: str, user_env: Mapping[str, str], imposed: Mapping[str, str]
) -> PassThrough:
    """The user's variables for ``service``, given the stack's own ``imposed`` environment."""
    settings = SETTINGS[service]
    variables = settings.env_variables()
    # A renamed setting's old name goes through too: the service then says what replaced it.
    retired = {settings.env_names(old).split(" or ")[0]: old for old in settings.retired}
    imposed_fields = {variables[name] for name in imposed if name in variables}
    result = PassThrough()
    for name, value in user_env.items():
        upper = name.upper()
        if upper in variables:
            setting = variables[upper]
            if setting in imposed_fields:
                if imposed.get(upper, value) != value or upper not in imposed:
                    result.ignored.add(upper)
                continue
            result.env[upper] = value
        elif upper in retired or (upper.startswith(RUNTIME_PREFIXES) and upper not in imposed):
            result.env[upper] = value
    return result
