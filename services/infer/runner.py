"""Dynamic batching across SQS messages, with failures isolated to the job that caused them.

Each message is one job (one or more texts). Concurrent handlers submit their jobs here; the
batcher groups jobs until ``max_batch_items`` texts or ``max_batch_tokens`` tokens are
collected, or the first has waited ``max_batch_wait_s``; the model then runs once, in a
worker thread (never on the event loop), one call at a time per device. If a model call
raises, its jobs are run again one by one, so only the job that caused the failure fails and
the others of the batch succeed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from prometheus_client import Counter, Histogram

from services.infer.handlers import ModelHandler
from shared.batching import Batcher

__all__ = ["Job", "ModelFailure", "ModelRunner", "RunnerStats"]

MODEL_CALLS = Counter("conveyor_infer_model_calls_total", "Model calls (batches) made")
BATCH_ITEMS = Histogram(
    "conveyor_infer_batch_items",
    "Inputs per model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
ISOLATED = Counter(
    "conveyor_infer_isolated_failures",
    "Model calls that failed and were re-run job by job to find the failing job",
)
BATCH_JOBS = Histogram(
    "conveyor_infer_batch_jobs",
    "Jobs (SQS messages) sharing one batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class ModelFailure(Exception):
    """The model refused this job; the job ends ``failed`` with this text."""


@dataclass(frozen=True)
class Job:
    job_id: uuid.UUID
    inputs: list[str]
    cost: int


@dataclass
class RunnerStats:
    model_calls: int = 0
    items: int = 0
    largest_call: int = 0
    isolations: int = 0
    call_sizes: list[int] = field(default_factory=list)

    @property
    def mean_call_size(self) -> float:
        return self.items / self.model_calls if self.model_calls else 0.0

    def summary(self) -> str:
        return (
            f"model_calls={self.model_calls} inputs={self.items} "
            f"mean_batch={self.mean_call_size:.1f} largest_batch={self.largest_call} "
            f"isolated_failures={self.isolations}"
        )


class ModelRunner:
    def __init__(
        self,
        handler: ModelHandler,
        *,
        max_batch_items: int,
        max_batch_tokens: int,
        max_batch_wait_s: float,
    ) -> None:
        self.handler = handler
        self.max_batch_items = max_batch_items
        self.stats = RunnerStats()
        # One model call at a time: a device runs one batch well, not two badly.
        self._device = anyio.CapacityLimiter(1)
        self._batcher: Batcher[Job, list[list[float]]] = Batcher(
            self._run_batch,
            max_items=max_batch_items,
            max_cost=max_batch_tokens,
            cost=lambda job: job.cost,
            max_wait_s=max_batch_wait_s,
            concurrency=1,
        )

    def start(self, tg: TaskGroup) -> None:
        self._batcher.start(tg)

    def job(self, job_id: uuid.UUID, inputs: list[str]) -> Job:
        return Job(job_id, inputs, sum(self.handler.cost(text) for text in inputs))

    async def run(self, job: Job) -> list[list[float]]:
        """The job's outputs, one per input; raises ModelFailure if the model refused it."""
        return await self._batcher.submit(job)

    async def _run_batch(self, jobs: list[Job]) -> list[list[list[float]] | BaseException]:
        texts = [text for job in jobs for text in job.inputs]
        try:
            outputs = await self._predict(texts)
        except Exception as exc:
            if len(jobs) == 1:
                return [ModelFailure(f"{type(exc).__name__}: {exc}")]
            # Which job broke the batch? Run each alone; the others still succeed.
            self.stats.isolations += 1
            ISOLATED.inc()
            results: list[list[list[float]] | BaseException] = []
            for job in jobs:
                results.extend(await self._run_batch([job]))
            return results
        results = []
        start = 0
        for job in jobs:
            results.append(outputs[start : start + len(job.inputs)])
            start += len(job.inputs)
        BATCH_JOBS.observe(len(jobs))
        return results

    async def _predict(self, texts: list[str]) -> list[list[float]]:
        outputs: list[list[float]] = []
        for start in range(0, len(texts), self.max_batch_items):
            chunk = texts[start : start + self.max_batch_items]
            self._record(len(chunk))
            result = await anyio.to_thread.run_sync(
                self.handler.predict, chunk, limiter=self._device
            )
            if len(result) != len(chunk):
                raise RuntimeError(f"the model returned {len(result)} outputs for {len(chunk)}")
            outputs.extend(result)
        return outputs

    def _record(self, size: int) -> None:
        stats = self.stats
        stats.model_calls += 1
        stats.items += size
        stats.largest_call = max(stats.largest_call, size)
        if len(stats.call_sizes) < 100_000:
            stats.call_sizes.append(size)
        MODEL_CALLS.inc()
        BATCH_ITEMS.observe(size)
