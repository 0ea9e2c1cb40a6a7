"""CPU per AWS call on the emulator: moto on werkzeug (its ThreadedMotoServer) and on cheroot.

    python benchmarks/moto_server.py [--calls 2400] [--callers 4]

Each server runs alone in a child process (moto's speed patches installed, IAM not enforced),
so its CPU is its own; this process drives it with aiobotocore, as the services do: `--callers`
concurrent loops of SendMessageBatch (10 messages), ReceiveMessage and DeleteMessageBatch on one
client. Prints wall time and the CPU of client and server per call; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from aiobotocore.session import get_session

SERVERS = ("werkzeug", "cheroot")
READY = "listening on port "


def serve(kind: str) -> None:
    """The child: one server on 127.0.0.1, until its stdin closes."""
    from emulator import moto_clock, moto_speed
    from emulator.moto_server import MotoServer

    moto_speed.install()
    moto_clock.install()
    if kind == "werkzeug":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
        werkzeug = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        werkzeug.start()
        port = werkzeug.get_host_and_port()[1]
    else:
        server = MotoServer()
        server.start()
        port = server.address[1]
    print(f"{READY}{port}", flush=True)
    sys.stdin.read()


async def drive(port: int, calls: int, callers: int, server: psutil.Process) -> dict[str, float]:
    session = get_session()
    async with session.create_client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106
    ) as sqs:
        url = (await sqs.create_queue(QueueName="bench"))["QueueUrl"]
        entries: Any = [{"Id": str(i), "MessageBody": "x" * 200} for i in range(10)]

        async def loop(rounds: int) -> None:
            for _ in range(rounds):
                await sqs.send_message_batch(QueueUrl=url, Entries=entries)
                received = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)).get(
                    "Messages", []
                )
                if received:
                    handles: Any = [
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(received)
                    ]
                    await sqs.delete_message_batch(QueueUrl=url, Entries=handles)

        await loop(20)  # warm-up: imports, first connections
        rounds = calls // 3 // callers
        server_cpu = sum(server.cpu_times()[:2])
        client_cpu, began = time.process_time(), time.perf_counter()
        await asyncio.gather(*(loop(rounds) for _ in range(callers)))
        done = rounds * callers * 3
        return {
            "wall": (time.perf_counter() - began) / done,
            "client": (time.process_time() - client_cpu) / done,
            "server": (sum(server.cpu_times()[:2]) - server_cpu) / done,
        }


def measure(kind: str, calls: int, callers: int) -> dict[str, float]:
    child = subprocess.Popen(  # noqa: S603 - this file, this interpreter
        [sys.executable, __file__, "--serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        timer = threading.Timer(60, child.kill)  # a child that never says it listens
        timer.start()
        line = child.stdout.readline()
        timer.cancel()
        if not line.startswith(READY):
            raise SystemExit(f"the {kind} server did not start")
        return asyncio.run(
            drive(int(line[len(READY) :]), calls, callers, psutil.Process(child.pid))
        )
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2400)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(f"{args.calls} SQS calls from {args.callers} concurrent callers, ms per call")
    print(f"{'server':<10} {'wall':>8} {'client CPU':>11} {'server CPU':>11} {'both':>8}")
    for kind in SERVERS:
        f = measure(kind, args.calls, args.callers)
        both = f["client"] + f["server"]
        print(
            f"{kind:<10} {1000 * f['wall']:8.2f} {1000 * f['client']:11.2f} "
            f"{1000 * f['server']:11.2f} {1000 * both:8.2f}"
        )


if __name__ == "__main__":
    main()
