"""The asyncio client, :class:`AsyncClient`: :class:`~conveyor.client.Client`, awaited.

It runs on asyncio (a map's jobs are asyncio tasks). When a loop over a map may stop early,
take the results through ``contextlib.aclosing`` so that the map's jobs stop with it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Literal, Self, overload

import httpx

from conveyor.client import _base
from conveyor.client._errors import ConveyorError, WaitTimeout
from conveyor.client._models import Accepted, Job, JobInput, Vector, parse_job
from conveyor.client._retry import Attempts, RetryPolicy

__all__ = ["AsyncClient"]

OnSubmitted = Callable[[int, Accepted], None]
OnFinished = Callable[[int, "Job | ConveyorError"], None]
Jobs = Iterable[JobInput | Sequence[str]] | AsyncIterable[JobInput | Sequence[str]]


class AsyncClient:
    """Conveyor's API for asyncio: ``async with AsyncClient() as client:`` or :meth:`aclose`.

    The arguments are :class:`~conveyor.client.Client`'s; ``transport`` is an
    ``httpx.AsyncBaseTransport``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        use_numpy: bool | None = None,
        wait_chunk_s: float = _base.WAIT_CHUNK_S,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        options = _base.client_options(base_url, api_key, timeout, headers)
        self._http = httpx.AsyncClient(**options, transport=transport)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._use_numpy = use_numpy
        self._wait_chunk_s = wait_chunk_s
        self._not_before = 0.0  # after a 429, no submission before this (monotonic)

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    async def submit(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Submit a job (see :meth:`Client.submit`)."""
        key = idempotency_key or _base.new_key()
        body = _base.submission(model, inputs, callback_url)
        response = await self._send("POST", "/v1/jobs", json=body, key=key)
        return _base.accepted(response, key)

    async def get(self, job_id: str | uuid.UUID, *, wait: float = 0) -> Job:
        """The job; with ``wait``, once final or after ``wait`` seconds (see
        :meth:`Client.get`)."""
        return await self._poll(job_id, wait)

    async def wait(
        self,
        job_id: str | uuid.UUID,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the job's deadline, as in Client)
    ) -> Job:
        """The job once it succeeded; JobFailed, or WaitTimeout (see :meth:`Client.wait`)."""
        job = await self._poll(job_id, timeout)
        if not job.final:
            raise WaitTimeout(job, timeout or 0)
        return job.raise_for_status()

    async def cancel(self, job_id: str | uuid.UUID) -> Job:
        """Cancel a queued or running job; ApiError (409) if it already ended."""
        response = await self._send("DELETE", _base.job_path(job_id))
        return parse_job(_base.check(response), use_numpy=self._use_numpy)

    async def map(
        self,
        model: str,
        texts: Iterable[str],
        *,
        concurrency: int = 8,
        texts_per_job: int = 1,
        timeout: float | None = None,  # noqa: ASYNC109 (each job's deadline, as in Client)
        callback_url: str | None = None,
    ) -> AsyncGenerator[Vector, None]:
        """One output per text, in order, with bounded concurrency (see :meth:`Client.map`)."""
        groups = _base.text_groups(texts, texts_per_job)
        jobs = self.map_jobs(
            model, groups, concurrency=concurrency, timeout=timeout, callback_url=callback_url
        )
        try:
            async for job in jobs:
                for output in job.raise_for_status().outputs or ():
                    yield output
        finally:
            await jobs.aclose()

    @overload
    def map_jobs(
        self,
        model: str,
        jobs: Jobs,
        *,
        concurrency: int = ...,
        timeout: float | None = ...,
        callback_url: str | None = ...,
        return_exceptions: Literal[False] = ...,
        on_submitted: OnSubmitted | None = ...,
        on_finished: OnFinished | None = ...,
    ) -> AsyncGenerator[Job, None]: ...

    @overload
    def map_jobs(
        self,
        model: str,
        jobs: Jobs,
        *,
        concurrency: int = ...,
        timeout: float | None = ...,
        callback_url: str | None = ...,
        return_exceptions: Literal[True],
        on_submitted: OnSubmitted | None = ...,
        on_finished: OnFinished | None = ...,
    ) -> AsyncGenerator[Job | ConveyorError, None]: ...

    def map_jobs(
        self,
        model: str,
        jobs: Jobs,
        *,
        concurrency: int = 8,
        timeout: float | None = None,
        callback_url: str | None = None,
        return_exceptions: bool = False,
        on_submitted: OnSubmitted | None = None,
        on_finished: OnFinished | None = None,
    ) -> AsyncGenerator[Job, None] | AsyncGenerator[Job | ConveyorError, None]:
        """Each job final, in order, at most ``concurrency`` in flight (see
        :meth:`Client.map_jobs`); the callbacks run on the event loop."""
        _base.check_concurrency(concurrency)
        return self._map_jobs(
            model,
            jobs,
            concurrency,
            timeout,
            callback_url,
            return_exceptions,
            on_submitted,
            on_finished,
        )

    async def _map_jobs(
        self,
        model: str,
        jobs: Jobs,
        concurrency: int,
        timeout: float | None,  # noqa: ASYNC109 (each job's deadline)
        callback_url: str | None,
        return_exceptions: bool,
        on_submitted: OnSubmitted | None,
        on_finished: OnFinished | None,
    ) -> AsyncGenerator[Job | ConveyorError, None]:
        window: deque[asyncio.Task[Job]] = deque()

        async def run(index: int, job: JobInput) -> Job:
            try:
                began = time.monotonic()
                accepted, final = await self._submit_waiting(model, job, callback_url, timeout)
                if on_submitted is not None:
                    on_submitted(index, accepted)
                if final is None or not final.final:
                    final = await self._poll(accepted.id, _base.time_left(timeout, began))
                if not final.final:
                    raise WaitTimeout(final, timeout or 0)
            except ConveyorError as exc:
                if on_finished is not None:
                    on_finished(index, exc)
                raise
            if on_finished is not None:
                on_finished(index, final)
            return final

        async def result() -> Job | ConveyorError:
            try:
                return await window[0]
            except ConveyorError as exc:
                if return_exceptions:
                    return exc
                raise
            finally:
                if window[0].done():
                    window.popleft()

        try:
            job_input = _base.JobInputs()
            async for index, item in _enumerate(jobs):
                if len(window) >= concurrency:
                    yield await result()
                window.append(asyncio.create_task(run(index, job_input(index, item))))
            while window:
                yield await result()
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)

    async def aclose(self) -> None:
        """Close the connections (safe to call twice)."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _submit_waiting(
        self,
        model: str,
        job: JobInput,
        callback_url: str | None,
        timeout: float | None,  # noqa: ASYNC109 (the job's deadline)
    ) -> tuple[Accepted, Job | None]:
        """Submit the job and hold the answer until it is final, up to one wait chunk: a job
        that finishes within it costs one request, not two."""
        key = job.idempotency_key or _base.new_key()
        body = _base.submission(model, job.inputs, callback_url)
        wait = _base.first_wait(timeout, self._wait_chunk_s)
        response = await self._send(
            "POST",
            "/v1/jobs",
            json=body,
            key=key,
            params=_base.read_params(wait) if wait > 0 else None,
            timeout=self._timeout + wait,
        )
        return _base.settled(response, key, use_numpy=self._use_numpy)

    async def _poll(self, job_id: str | uuid.UUID, wait: float | None) -> Job:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            left = self._wait_chunk_s if deadline is None else deadline - time.monotonic()
            chunk = min(left, self._wait_chunk_s)
            response = await self._send(
                "GET",
                _base.job_path(job_id),
                params=_base.read_params(chunk),
                timeout=self._timeout + max(chunk, 0),
            )
            job = parse_job(_base.check(response), use_numpy=self._use_numpy)
            if job.final or (deadline is not None and time.monotonic() >= deadline):
                return job

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpx's, for one request)
    ) -> httpx.Response:
        """One call, retried as the policy allows; the last answer, whatever its status."""
        attempts = Attempts(self._retry, method)
        headers = {_base.KEY_HEADER: key} if key else None
        while True:
            if method == "POST":
                await _sleep(self._not_before - time.monotonic())
            try:
                response = await self._http.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=timeout or self._timeout,
                )
            except httpx.HTTPError as exc:
                delay = attempts.after_error(exc)
            else:
                retry_in = attempts.after_response(response)
                if retry_in is None:
                    return response
                delay = retry_in
                if response.status_code == 429:  # every submission holds back, not just this
                    self._not_before = max(self._not_before, time.monotonic() + delay)
            await _sleep(delay)


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _enumerate(jobs: Jobs) -> AsyncIterator[tuple[int, JobInput | Sequence[str]]]:
    """The items with their index, read one at a time (the map's backpressure)."""
    index = 0
    if isinstance(jobs, AsyncIterable):
        async for item in jobs:
            yield index, item
            index += 1
    else:
        for item in jobs:
            yield index, item
            index += 1
