"""Which models have a deployed version: a job for one that has none is refused (409).

A model is deployed once ``conveyor models push`` has written its ``<name>/LATEST`` pointer
into the models bucket; until then no infer worker can serve it, and a job accepted for it would
wait silently. The answer comes from an injected :data:`ModelDeployed` (the service asks S3),
at most once per ``cache_s`` per model, by one request while the others wait for it, so a push
is noticed within seconds without an S3 call per request.

A lookup that fails (S3 unreachable, a timeout) counts as the last known answer, or as deployed
before the first one: the outbox accepts jobs through an outage, and a refusal must mean that
the model really has no version. That answer is kept for :data:`RETRY_AFTER_FAILURE_S`, not
``cache_s``: a lookup that timed out held its request (and those queued behind it) for
``LOOKUP_TIMEOUT_S``, and retrying it as often as a good answer expires made every
submission of an outage wait. Each change is logged once: a model found without a version at
warning (with the command that fixes it), and the push that follows at info.
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
RETRY_AFTER_FAILURE_S: Final = 15.0
"""How long the answer that stands in for a failed lookup is kept before the next lookup."""

log = get_logger("ingest")


def push_hint(model: str) -> str:
    return f"`conveyor models push <dir> --name {model} --version 1`"


class DeployedModels:
    def __init__(self, lookup: ModelDeployed | None, *, cache_s: float = CACHE_S) -> None:
        """``lookup`` None: every model counts as deployed (an API without a models bucket)."""
        self._lookup = lookup
        self.cache_s = cache_s
        self._cached: dict[str, tuple[float, bool]] = {}
        """Per model: until when (``anyio.current_time()``) the answer holds, and the answer."""
        self._known: dict[str, bool] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def deployed(self, model: str) -> bool:
        """Whether ``model`` has a deployed version, at most ``cache_s`` old."""
        if self._lookup is None:
            return True
        lock = self._locks.setdefault(model, anyio.Lock())
        async with lock:
            cached = self._cached.get(model)
            if cached is not None and anyio.current_time() < cached[0]:
                return cached[1]
            answer, held_s = await self._ask(self._lookup, model)
            self._cached[model] = (anyio.current_time() + held_s, answer)
            return answer

    async def _ask(self, lookup: ModelDeployed, model: str) -> tuple[bool, float]:
        """The answer, and how long it holds."""
        before = self._known.get(model)
        try:
            with anyio.fail_after(LOOKUP_TIMEOUT_S):
                answer = await lookup(model)
        except (ConveyorError, TimeoutError) as exc:
            log.warning(
                "model deployment unknown",
                model=model,
                error=str(exc) or type(exc).__name__,
                retry_in_s=RETRY_AFTER_FAILURE_S,
            )
            return True if before is None else before, max(self.cache_s, RETRY_AFTER_FAILURE_S)
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
        return answer, self.cache_s
