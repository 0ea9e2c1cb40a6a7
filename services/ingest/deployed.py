"""Which models have a deployed version: a job for one that has none is refused (409).

A model is deployed once ``conveyor models push`` has written its ``<name>/LATEST`` pointer
into the models bucket; until then no infer worker can serve it, and a job accepted for it would
wait silently. The answer comes from an injected :data:`ModelDeployed` (the service asks S3),
at most once per ``cache_s`` per model, by one request while the others wait for it, so a push
is noticed within seconds without an S3 call per request.

A lookup that fails (S3 unreachable, a timeout) counts as the last known answer, or as deployed
before the first one: the outbox accepts jobs through an outage, and a refusal must mean that
the model really has no version. Each change is logged once: a model found without a version
at warning (with the command that fixes it), and the push that follows at info.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from shared.errors import ConveyorError
from shared.telemetry import get_logger

__all__ = ["CACHE_S", "DeployedModels", "ModelDeployed", "push_hint"]

ModelDeployed = Callable[[str], Awaitable[bool]]
"""Whether a model has a deployed version: ``await deployed(model)``."""

CACHE_S: Final = 2.0
LOOKUP_TIMEOUT_S: Final = 2.0

log = get_logger("ingest")


def push_hint(model: str) -> str:
    return f"`conveyor models push <dir> --name {model} --version 1`"


class DeployedModels:
    def __init__(self, lookup: ModelDeployed | None, *, cache_s: float = CACHE_S) -> None:
        """``lookup`` None: every model counts as deployed (an API without a models bucket)."""
        self._lookup = lookup
        self.cache_s = cache_s
        self._cached: dict[str, tuple[float, bool]] = {}
        self._known: dict[str, bool] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def deployed(self, model: str) -> bool:
        """Whether ``model`` has a deployed version, at most ``cache_s`` old."""
        if self._lookup is None:
            return True
        lock = self._locks.setdefault(model, anyio.Lock())
        async with lock:
            cached = self._cached.get(model)
            if cached is not None and anyio.current_time() - cached[0] < self.cache_s:
                return cached[1]
            answer = await self._ask(self._lookup, model)
            self._cached[model] = (anyio.current_time(), answer)
            return answer

    async def _ask(self, lookup: ModelDeployed, model: str) -> bool:
        before = self._known.get(model)
        try:
            with anyio.fail_after(LOOKUP_TIMEOUT_S):
                answer = await lookup(model)
        except (ConveyorError, TimeoutError) as exc:
            log.warning(
                "model deployment unknown", model=model, error=str(exc) or type(exc).__name__
            )
            return True if before is None else before
        if answer != before:
            if not answer:
                log.warning(
                    "model has no deployed version; its jobs are refused until one is pushed",
                    model=model,
                    fix=push_hint(model),
                )
            elif before is not None:
                log.info("model deployed; its jobs are accepted", model=model)
        self._known[model] = answer
        return answer
