"""The blocking client, :class:`Client`; :mod:`conveyor.client._async` mirrors it."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, Self, overload

import httpx

from conveyor.client import _base
from conveyor.client._errors import ConveyorError, WaitTimeout
from conveyor.client._models import Accepted, Job, JobInput, Vector, parse_job
from conveyor.client._retry import Attempts, RetryPolicy

__all__ = ["Client"]

OnSubmitted = Callable[[int, Accepted], None]
OnFinished = Callable[[int, "Job | ConveyorError"], None]


class _Stopped(Exception):
    """A map's consumer went away: its worker threads stop at their next step."""


class Client:
    """Conveyor's API, blocking. ``with Client() as client:`` or :meth:`close` it.

    ``base_url`` and ``api_key`` default to ``CONVEYOR_API_URL`` and ``CONVEYOR_API_KEY`` (then
    ``http://127.0.0.1:8000``, where ``make dev`` serves); ``timeout`` bounds one request, on
    top of the time the API is asked to hold it; ``retry`` says how transient failures and 429s
    are retried; ``use_numpy`` (default: when importable) makes outputs float32 arrays;
    ``wait_chunk_s`` is the longest wait asked of the API in one read (keep it under the API's
    INGEST_MAX_WAIT_S); ``transport`` replaces httpx's (tests).
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        options = _base.client_options(base_url, api_key, timeout, headers)
        self._http = httpx.Client(**options, transport=transport)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._use_numpy = use_numpy
        self._wait_chunk_s = wait_chunk_s
        self._not_before = 0.0  # after a 429, no submission before this (monotonic)

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def submit(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Submit a job. It always carries an Idempotency-Key (a fresh one unless given), so
        retries after a lost answer never record a second job."""
        return self._submit(model, inputs, callback_url, idempotency_key, None)

    def get(self, job_id: str | uuid.UUID, *, wait: float = 0) -> Job:
        """The job; with ``wait``, once it is final or ``wait`` seconds have passed (several
        server-side waits when it is long), whatever its state."""
        return self._poll(job_id, wait, None)

    def wait(self, job_id: str | uuid.UUID, *, timeout: float | None = None) -> Job:
        """The job once it succeeded. JobFailed if it failed or was cancelled; WaitTimeout if
        it is not final within ``timeout`` seconds (None: no limit)."""
        job = self._poll(job_id, timeout, None)
        if not job.final:
            raise WaitTimeout(job, timeout or 0)
        return job.raise_for_status()

    def cancel(self, job_id: str | uuid.UUID) -> Job:
        """Cancel a queued or running job; ApiError (409) if it already ended."""
        response = self._send("DELETE", _base.job_path(job_id))
        return parse_job(_base.check(response), use_numpy=self._use_numpy)

    def map(
        self,
        model: str,
        texts: Iterable[str],
        *,
        concurrency: int = 8,
        texts_per_job: int = 1,
        timeout: float | None = None,
        callback_url: str | None = None,
    ) -> Iterator[Vector]:
        """One output per text, in the order of ``texts``: jobs of ``texts_per_job`` texts,
        at most ``concurrency`` of them in flight or waiting to be read (the bound is the
        backpressure: ``texts`` is read only as results are taken). JobFailed for a job that
        failed, once the outputs before it are yielded; WaitTimeout for one not final within
        ``timeout`` seconds."""
        groups = _base.text_groups(texts, texts_per_job)
        jobs = self.map_jobs(
            model, groups, concurrency=concurrency, timeout=timeout, callback_url=callback_url
        )
        for job in jobs:
            yield from job.raise_for_status().outputs or ()

    @overload
    def map_jobs(
        self,
        model: str,
        jobs: Iterable[JobInput | Sequence[str]],
        *,
        concurrency: int = ...,
        timeout: float | None = ...,
        callback_url: str | None = ...,
        return_exceptions: Literal[False] = ...,
        on_submitted: OnSubmitted | None = ...,
        on_finished: OnFinished | None = ...,
    ) -> Iterator[Job]: ...

    @overload
    def map_jobs(
        self,
        model: str,
        jobs: Iterable[JobInput | Sequence[str]],
        *,
        concurrency: int = ...,
        timeout: float | None = ...,
        callback_url: str | None = ...,
        return_exceptions: Literal[True],
        on_submitted: OnSubmitted | None = ...,
        on_finished: OnFinished | None = ...,
    ) -> Iterator[Job | ConveyorError]: ...

    def map_jobs(
        self,
        model: str,
        jobs: Iterable[JobInput | Sequence[str]],
        *,
        concurrency: int = 8,
        timeout: float | None = None,
        callback_url: str | None = None,
        return_exceptions: bool = False,
        on_submitted: OnSubmitted | None = None,
        on_finished: OnFinished | None = None,
    ) -> Iterator[Job] | Iterator[Job | ConveyorError]:
        """Each job final (succeeded or not), in the order of ``jobs``, at most
        ``concurrency`` in flight. A job without an Idempotency-Key gets one derived for this
        call. An error of one job (the API refused it, it timed out) is raised in its place,
        or yielded with ``return_exceptions``. ``on_submitted(index, accepted)`` and
        ``on_finished(index, job_or_error)`` are called as that happens, from worker
        threads. Each submission asks the API to hold its answer until the job is final (up
        to ``wait_chunk_s``), so a job that finishes meanwhile costs one request: its
        ``on_submitted`` then comes just before its ``on_finished``."""
        _base.check_concurrency(concurrency)
        stop = threading.Event()
        window: deque[Future[Job]] = deque()

        def run(index: int, job: JobInput) -> Job:
            try:
                final = self._run(model, job, timeout, callback_url, stop, index, on_submitted)
            except ConveyorError as exc:
                if on_finished is not None:
                    on_finished(index, exc)
                raise
            if on_finished is not None:
                on_finished(index, final)
            return final

        def result(future: Future[Job]) -> Job | ConveyorError:
            try:
                return future.result()
            except ConveyorError as exc:
                if return_exceptions:
                    return exc
                raise

        try:
            job_input = _base.JobInputs()
            for index, item in enumerate(jobs):
                if len(window) >= concurrency:
                    yield result(window.popleft())
                window.append(_in_thread(run, index, job_input(index, item)))
            while window:
                yield result(window.popleft())
        finally:
            stop.set()  # threads still running stop at their next request
            for future in window:
                future.cancel()

    def close(self) -> None:
        """Close the connections (safe to call twice)."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(
        self,
        model: str,
        job: JobInput,
        timeout: float | None,
        callback_url: str | None,
        stop: threading.Event,
        index: int,
        on_submitted: OnSubmitted | None,
    ) -> Job:
        began = time.monotonic()
        accepted, final = self._submit_waiting(model, job, callback_url, timeout, stop)
        if on_submitted is not None:
            on_submitted(index, accepted)
        if final is None or not final.final:
            final = self._poll(accepted.id, _base.time_left(timeout, began), stop)
        if not final.final:
            raise WaitTimeout(final, timeout or 0)
        return final

    def _submit_waiting(
        self,
        model: str,
        job: JobInput,
        callback_url: str | None,
        timeout: float | None,
        stop: threading.Event,
    ) -> tuple[Accepted, Job | None]:
        """Submit the job and hold the answer until it is final, up to one wait chunk: a job
        that finishes within it costs one request, not two."""
        key = job.idempotency_key or _base.new_key()
        wait = _base.first_wait(timeout, self._wait_chunk_s)
        response = self._send(
            "POST",
            "/v1/jobs",
            json=_base.submission(model, job.inputs, callback_url),
            key=key,
            params=_base.read_params(wait) if wait > 0 else None,
            timeout=self._timeout + wait,
            stop=stop,
        )
        return _base.settled(response, key, use_numpy=self._use_numpy)

    def _submit(
        self,
        model: str,
        inputs: Sequence[str],
        callback_url: str | None,
        key: str | None,
        stop: threading.Event | None,
    ) -> Accepted:
        key = key or _base.new_key()
        body = _base.submission(model, inputs, callback_url)
        response = self._send("POST", "/v1/jobs", json=body, key=key, stop=stop)
        return _base.accepted(response, key)

    def _poll(
        self, job_id: str | uuid.UUID, wait: float | None, stop: threading.Event | None
    ) -> Job:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            left = self._wait_chunk_s if deadline is None else deadline - time.monotonic()
            chunk = min(left, self._wait_chunk_s)
            response = self._send(
                "GET",
                _base.job_path(job_id),
                params=_base.read_params(chunk),
                timeout=self._timeout + max(chunk, 0),
                stop=stop,
            )
            job = parse_job(_base.check(response), use_numpy=self._use_numpy)
            if job.final or (deadline is not None and time.monotonic() >= deadline):
                return job

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        key: str | None = None,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> httpx.Response:
        """One call, retried as the policy allows; the last answer, whatever its status."""
        attempts = Attempts(self._retry, method)
        headers = {_base.KEY_HEADER: key} if key else None
        while True:
            if method == "POST":
                _sleep(self._not_before - time.monotonic(), stop)
            elif stop is not None and stop.is_set():
                raise _Stopped
            try:
                response = self._http.request(
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
            _sleep(delay, stop)


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if stop is None:
        if seconds > 0:
            time.sleep(seconds)
    elif stop.wait(max(seconds, 0)):
        raise _Stopped


def _in_thread(fn: Callable[..., Job], *args: Any) -> Future[Job]:
    """``fn(*args)`` in a daemon thread of its own: a map abandoned at exit (Ctrl-C) does not
    hold the interpreter while its long polls end."""
    future: Future[Job] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name="conveyor-map", daemon=True).start()
    return future
