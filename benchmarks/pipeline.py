"""End-to-end figures for the whole pipeline, offline, with the real all-MiniLM-L6-v2.

    python benchmarks/pipeline.py [--jobs 100] [--concurrency 16] [--texts-per-job 1]

Starts the stack as `make dev` does (the same DevStack: emulator, PostgreSQL, the services),
submits the jobs over HTTP, waits for every one to finish, and prints: jobs/s end to end, the
time to submit, the latency from acceptance to the start of inference and to the final state
(median, p95), and the mean batch infer formed (from its Prometheus counters). Asserts
nothing, but exits non-zero, naming them, if jobs are not final 120 s after they were
submitted: work lost on the way.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import socket
import statistics
import sys
import time

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from emulator import Emulator, EmulatorOptions
from emulator.devstack import DevOptions, DevStack
from emulator.signals import run_until_signalled

JOB_TIMEOUT_S = 120.0
"""How long the benchmark waits for one job to be final, once all are submitted."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def texts(n: int) -> list[str]:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "queues",
        "batch",
        "many",
        "jobs",
    ]
    return [" ".join(words[(i + k) % len(words)] for k in range(5 + i % 20)) for i in range(n)]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    metrics_port = free_port()
    infer_env = dict(item.split("=", 1) for item in args.infer_env)
    extra = {"infer": {**infer_env, "INFER_METRICS_PORT": str(metrics_port)}}
    options = DevOptions(http_port=0, extra=extra, tenant="benchmark")
    async with Emulator(EmulatorOptions()) as stack, DevStack(stack, options) as dev:
        api_key, port = dev.api_key, dev.http_port
        inputs = texts(args.jobs * args.texts_per_job)
        limiter = anyio.CapacityLimiter(args.concurrency)
        ids: list[str] = []
        auth = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, headers=auth
        ) as api:

            async def submit(i: int) -> None:
                chunk = inputs[i * args.texts_per_job : (i + 1) * args.texts_per_job]
                async with limiter:
                    response = await api.post(
                        "/v1/jobs", json={"model": stack.topology.models[0], "inputs": chunk}
                    )
                response.raise_for_status()
                ids.append(response.json()["id"])

            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(args.jobs):
                    tg.start_soon(submit, i)
            submitted = time.perf_counter() - began
            jobs: list[dict[str, object]] = []

            lost: list[str] = []

            async def wait(job_id: str) -> None:
                async with limiter:
                    with anyio.move_on_after(JOB_TIMEOUT_S):
                        while True:
                            read = {"wait": 10, "encoding_format": "base64"}  # as the client
                            job = (await api.get(f"/v1/jobs/{job_id}", params=read)).json()
                            if job["status"] in ("succeeded", "failed"):
                                jobs.append(job)
                                return
                    lost.append(job_id)

            async with anyio.create_task_group() as tg:
                for job_id in ids:
                    tg.start_soon(wait, job_id)
            elapsed = time.perf_counter() - began
            metrics = (await api.get(f"http://127.0.0.1:{metrics_port}/metrics")).text

    if lost:
        # A job never final is a bug of the pipeline (or the emulator), not a slow run.
        waited = f"{JOB_TIMEOUT_S:.0f} s"
        sys.exit(f"{len(lost)} of {args.jobs} jobs not final after {waited}: {lost[:5]}")
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    calls = samples["conveyor_infer_batch_items_count"]
    items = samples["conveyor_infer_batch_items_sum"]

    def seconds(job: dict[str, object], start: str, end: str) -> float:
        parse = datetime.datetime.fromisoformat
        return (parse(str(job[end])) - parse(str(job[start]))).total_seconds()

    to_start = [seconds(j, "created_at", "started_at") for j in jobs]
    to_end = [seconds(j, "created_at", "finished_at") for j in jobs]
    failed = sum(1 for j in jobs if j["status"] != "succeeded")
    print(
        f"{args.jobs} jobs x {args.texts_per_job} texts, {args.concurrency} clients: "
        f"{args.jobs / elapsed:.1f} jobs/s end to end ({elapsed:.1f}s; submitting took "
        f"{submitted:.1f}s); failed: {failed}"
    )
    print(
        f"accepted -> inference starts: median {statistics.median(to_start):.2f}s, "
        f"p95 {quantile(to_start, 0.95):.2f}s; accepted -> final: median "
        f"{statistics.median(to_end):.2f}s, p95 {quantile(to_end, 0.95):.2f}s"
    )
    print(f"infer: {calls:.0f} model calls, mean batch {items / calls:.1f} inputs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--texts-per-job", type=int, default=1)
    parser.add_argument(
        "--infer-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for infer, e.g. INFER_TORCH_THREADS=1 (repeatable)",
    )
    stopped = anyio.run(
        run_until_signalled,
        functools.partial(main, parser.parse_args()),
        lambda sig: print(f"{sig.name}: stopping"),
    )
    if stopped is not None:
        sys.exit(128 + stopped)
