"""Dynamic batching across SQS messages, with failures isolated to the job that caused them.

Each message is one job (one or more texts). Concurrent handlers submit their jobs here; the
batcher groups jobs until ``max_batch_items`` texts or ``max_batch_tokens`` tokens are
collected, or the first has waited ``max_batch_wait_s``; the model then runs once, in a
worker thread (never on the event loop), one call at a time per device. If a model call
raises, its jobs are run again one by one, so only the job that caused the failure fails and
the others of the batch succeed.

Traces: a batch serves many jobs, each with its own trace. The batch is a span of its own
(``model batch``) linked to the span of every job in it; each job gets a ``model call`` child
span with the call's times, linked back to the batch. Metrics: :mod:`services.infer.metrics`.

Outputs stay one float32 array per batch (``(texts, dim)``); each job gets its rows, and infer
packs them into the result message as they are (:mod:`shared.vectors`): no number becomes a
Python float or JSON text on the way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import numpy as np
import numpy.typing as npt
from anyio.abc import TaskGroup
from opentelemetry import trace

from services.infer.handlers import ModelHandler
from services.infer.metrics import (
    BATCH_ITEMS,
    BATCH_JOBS,
    BATCH_TOKENS,
    ISOLATED,
    MODEL_CALL_DURATION,
    MODEL_CALLS,
)
from services.infer.threads import ThreadShare, use_torch_threads
from shared.batching import Batcher
from shared.messages import Vectors
from shared.tracing import exporting, leaf_tracer, tracer

__all__ = ["Job", "Matrix", "ModelFailure", "ModelRunner", "RunnerStats", "as_matrix", "packed"]

Matrix = npt.NDArray[np.float32]
"""One output vector per row."""


class ModelFailure(Exception):
    """The model refused this job; the job ends ``failed`` with this text."""


@dataclass(frozen=True)
class Job:
    job_id: uuid.UUID
    inputs: list[str]
    cost: int
    span: trace.SpanContext | None = None
    """The job's span that waits for the batch: the batch links to it."""
    on_start: Callable[[], object] | None = None
    """Called when a batch with this job reaches the model (again, if it is re-run alone)."""


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
        model: str = "",
        thread_share: ThreadShare | None = None,
    ) -> None:
        self.handler = handler
        self.model = model
        """The model's name, for the metrics' ``model`` label and the spans."""
        self.thread_share = thread_share
        """Where set, torch's threads for each batch; else whatever torch was given."""
        self.max_batch_items = max_batch_items
        self.stats = RunnerStats()
        # One model call at a time: a device runs one batch well, not two badly.
        self._device = anyio.CapacityLimiter(1)
        self._batcher: Batcher[Job, Matrix] = Batcher(
            self._run_batch,
            max_items=max_batch_items,
            max_cost=max_batch_tokens,
            cost=lambda job: job.cost,
            max_wait_s=max_batch_wait_s,
            concurrency=1,
        )

    def start(self, tg: TaskGroup) -> None:
        self._batcher.start(tg)

    def job(
        self,
        job_id: uuid.UUID,
        inputs: list[str],
        on_start: Callable[[], object] | None = None,
    ) -> Job:
        """A job for :meth:`run`, tied to the current span (the job's)."""
        context = trace.get_current_span().get_span_context()
        return Job(
            job_id,
            inputs,
            sum(self.handler.cost(text) for text in inputs),
            context if context.is_valid else None,
            on_start,
        )

    async def run(self, job: Job) -> Matrix:
        """The job's outputs, one row per input; raises ModelFailure if the model refused it."""
        return await self._batcher.submit(job)

    async def _run_batch(self, jobs: list[Job]) -> list[Matrix | BaseException]:
        texts = [text for job in jobs for text in job.inputs]
        tokens = sum(job.cost for job in jobs)
        attributes: dict[str, str | int] = {
            "conveyor.model": self.model,
            "conveyor.batch_jobs": len(jobs),
            "conveyor.batch_items": len(texts),
            "conveyor.batch_tokens": tokens,
        }
        threads = None
        if self.thread_share is not None:
            threads = self.thread_share.threads(len(texts), len(jobs))
            attributes["conveyor.torch_threads"] = threads
        links = [trace.Link(job.span) for job in jobs if job.span is not None]
        # Its own trace (the batcher's task has no current span); a re-run after a failure
        # is a child of the failed batch.
        with leaf_tracer().start_as_current_span(
            "model batch", links=links, attributes=attributes, record_exception=False
        ) as batch:
            began = time.time_ns()
            for job in jobs:
                if job.on_start is not None:
                    job.on_start()
            try:
                outputs = await self._predict(texts, threads)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                batch.set_status(trace.Status(trace.StatusCode.ERROR, error))
                if len(jobs) == 1:
                    self._trace_jobs(jobs, batch, began, attributes, error)
                    return [ModelFailure(error)]
                # Which job broke the batch? Run each alone; the others still succeed.
                self.stats.isolations += 1
                ISOLATED.labels(self.model).inc()
                batch.set_attribute("conveyor.isolated", True)
                results: list[Matrix | BaseException] = []
                for job in jobs:
                    results.extend(await self._run_batch([job]))
                return results
            self._trace_jobs(jobs, batch, began, attributes)
        results = []
        start = 0
        for job in jobs:
            results.append(outputs[start : start + len(job.inputs)])
            start += len(job.inputs)
        BATCH_JOBS.labels(self.model).observe(len(jobs))
        BATCH_TOKENS.labels(self.model).observe(tokens)
        return results

    def _trace_jobs(
        self,
        jobs: list[Job],
        batch: trace.Span,
        began_ns: int,
        attributes: dict[str, str | int],
        error: str | None = None,
    ) -> None:
        """A ``model call`` span in each job's trace, with the batch's times, linked to it."""
        if not exporting():  # leaves no one would read (see shared.tracing.leaf_tracer)
            return
        ended_ns = time.time_ns()
        link = [trace.Link(batch.get_span_context())]
        for job in jobs:
            if job.span is None:
                continue
            parent = trace.set_span_in_context(trace.NonRecordingSpan(job.span))
            span = tracer().start_span(
                "model call",
                context=parent,
                links=link,
                attributes=attributes,
                start_time=began_ns,
            )
            if error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error))
            span.end(end_time=ended_ns)

    async def _predict(self, texts: list[str], threads: int | None) -> Matrix:
        outputs: list[Matrix] = []
        for start in range(0, len(texts), self.max_batch_items):
            chunk = texts[start : start + self.max_batch_items]
            self._record(len(chunk))
            began = time.perf_counter()
            result = await anyio.to_thread.run_sync(
                self._call, chunk, threads, limiter=self._device
            )
            MODEL_CALL_DURATION.labels(self.model).observe(time.perf_counter() - began)
            outputs.append(as_matrix(result, len(chunk)))
        if len(outputs) == 1:
            return outputs[0]
        if len({matrix.shape[1] for matrix in outputs}) != 1:
            raise RuntimeError("the model returned vectors of different lengths")
        return np.concatenate(outputs)

    def _call(self, texts: list[str], threads: int | None) -> object:
        """One model call, on a worker thread."""
        if threads is not None:
            use_torch_threads(threads)
        return self.handler.predict(texts)

    def _record(self, size: int) -> None:
        stats = self.stats
        stats.model_calls += 1
        stats.items += size
        stats.largest_call = max(stats.largest_call, size)
        if len(stats.call_sizes) < 100_000:
            stats.call_sizes.append(size)
        MODEL_CALLS.labels(self.model).inc()
        BATCH_ITEMS.labels(self.model).observe(size)


def as_matrix(result: object, count: int) -> Matrix:
    """A handler's outputs for ``count`` inputs as a C-ordered ``(count, dim)`` float32 array:
    it may return an array, a CPU tensor or lists of numbers."""
    try:
        matrix = np.ascontiguousarray(result, dtype=np.float32)
    except (TypeError, ValueError) as exc:  # ragged lists, or not numbers at all
        raise RuntimeError(f"the model's outputs are not one vector per input: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise RuntimeError(
            f"the model returned outputs of shape {matrix.shape} for {count} inputs; "
            "expected one non-empty vector per input"
        )
    return matrix


def packed(matrix: Matrix) -> Vectors:
    """A job's rows as the result message carries them (:mod:`shared.vectors`)."""
    return Vectors(dim=matrix.shape[1], data=matrix.astype("<f4", copy=False).tobytes())
