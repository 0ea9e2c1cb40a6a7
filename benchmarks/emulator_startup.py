"""Emulator figures: start + provision time, and SQS receive latency against backlog.

    python benchmarks/emulator_startup.py               # moto with the fast clock (default)
    python benchmarks/emulator_startup.py --slow-clock  # moto's own clock, for comparison

Prints figures; asserts nothing. Each process measures one clock, since the patch is global.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

from emulator import Emulator, EmulatorOptions
from shared.aws import AwsClients


async def startup(runs: int, fast_clock: bool) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        async with Emulator(EmulatorOptions(fast_clock=fast_clock)):
            times.append(time.perf_counter() - started)
    return times


async def receive_latency(backlogs: list[int], fast_clock: bool) -> dict[int, float]:
    results: dict[int, float] = {}
    async with Emulator(EmulatorOptions(fast_clock=fast_clock)) as stack:
        url = stack.provisioned.queue_urls[stack.topology.results_queue.name]
        async with AwsClients(stack.admin) as clients:
            sqs = await clients.sqs()
            queued = 0
            for backlog in backlogs:
                while queued < backlog:
                    entries = [
                        {"Id": str(i), "MessageBody": "x" * 200}
                        for i in range(min(10, backlog - queued))
                    ]
                    await sqs.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
                    queued += len(entries)
                samples = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    # VisibilityTimeout=0: the backlog stays the same size between samples.
                    await sqs.receive_message(
                        QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
                    )
                    samples.append(time.perf_counter() - t0)
                results[backlog] = statistics.median(samples)
    return results


async def main(args: argparse.Namespace) -> None:
    fast = not args.slow_clock
    clock = "fast clock" if fast else "moto's clock"
    times = await startup(args.runs, fast)
    print(
        f"emulator start + provision + migrate ({clock}), {args.runs} runs: "
        f"median {statistics.median(times):.2f}s, min {min(times):.2f}s, max {max(times):.2f}s"
    )
    latency = await receive_latency(args.backlogs, fast)
    for backlog, seconds in latency.items():
        print(f"10-message receive at backlog {backlog:>5} ({clock}): {seconds * 1000:7.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backlogs", type=int, nargs="+", default=[10, 200, 1000])
    parser.add_argument("--slow-clock", action="store_true")
    anyio.run(main, parser.parse_args())
